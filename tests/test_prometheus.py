"""The Prometheus files, checked by Prometheus's own tool (promtool).

`promtool check config` and `check rules` parse ``deploy/prometheus`` as Prometheus will;
`promtool test rules` runs ``alerts_test.yml``: for every alert, series that fire it after
its ``for:`` (and not one evaluation earlier) with the labels and annotations the on-call
engineer reads, and series that must leave it quiet. Skipped, loudly, without promtool.
"""

from __future__ import annotations

import yaml

from tests.support.promserver import DEPLOY, RULES, dashboard, interpolate, promtool, targets

CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
RULE_TESTS = DEPLOY / "prometheus" / "alerts_test.yml"


def _alerts() -> set[str]:
    doc = yaml.safe_load(RULES.read_text())
    return {rule["alert"] for group in doc["groups"] for rule in group["rules"]}


def test_promtool_checks_the_rules() -> None:
    done = promtool("check", "rules", RULES)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(_alerts())} rules found" in done.stdout


def test_promtool_checks_the_config_and_finds_the_rules() -> None:
    done = promtool("check", "config", CONFIG)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 1 rule files found" in done.stdout


def test_promtool_unit_tests_of_every_alert_pass() -> None:
    done = promtool("test", "rules", RULE_TESTS)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    doc = yaml.safe_load(RULE_TESTS.read_text())
    fired: set[str] = set()
    quiet: set[str] = set()
    for group in doc["tests"]:
        for case in group["alert_rule_test"]:
            for alert in case["exp_alerts"]:
                assert alert["exp_annotations"]["summary"], group["name"]
                assert alert["exp_annotations"]["description"], group["name"]
                assert "{{" not in str(alert["exp_annotations"]), group["name"]
                assert alert["exp_labels"]["severity"], group["name"]
            (fired if case["exp_alerts"] else quiet).add(case["alertname"])
    assert fired == _alerts(), f"alerts never fired by a unit test: {_alerts() - fired}"
    assert quiet == _alerts(), f"alerts never checked quiet: {_alerts() - quiet}"


def test_grafana_substitution_of_the_dashboard_variables() -> None:
    expr = ('sum(rate(x{instance=~"$instance"}[$__rate_interval])) '
            'and y[${__interval}] offset $__range and z{a=~"[[instance]]"}')
    two = {"instance": ["10.0.0.1:8080", "host-2:8080"]}
    out = interpolate(expr, two, interval_s=2, scrape_interval_s=15, range_s=3600)
    # max($__interval + scrape interval, 4 x scrape interval); All -> (v1|v2), regex-escaped
    assert out == ('sum(rate(x{instance=~"(10\\\\.0\\\\.0\\\\.1:8080|host-2:8080)"}[60s])) '
                   'and y[2s] offset 3600s and z{a=~"(10\\\\.0\\\\.0\\\\.1:8080|host-2:8080)"}')
    one = interpolate('x{i=~"$instance"}[$__rate_interval]', {"instance": ["a.b"]},
                      interval_s=30, scrape_interval_s=1, range_s=60)
    assert one == 'x{i=~"a\\\\.b"}[31s]'


def test_every_dashboard_query_is_found() -> None:
    found = targets(dashboard())
    assert len(found) == len({t.where for t in found})
    assert any(t.instant for t in found)
    assert any(t.where.startswith("annotation") for t in found)
