"""The deployment files agree with the service: metrics, settings, images, probes.

Pure file checks (no Docker, no cluster): every metric the Grafana dashboard and the
Prometheus alert rules query is one the service exports; every ``DISPATCHER_*`` variable
in the Dockerfile, the compose file and the Kubernetes manifests is a real setting, and
each dispatcher container gets the settings `dispatcher run` cannot start without.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

import dispatcher
from dispatcher.config import VARIABLES, Settings
from dispatcher.kafka import INPUTS, OUTPUTS
from dispatcher.metrics import Metrics
from dispatcher.store import MIGRATIONS_DIR

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "dispatcher.json"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml"
K8S = DEPLOY / "k8s"

SETTINGS = {name for name, _, _ in VARIABLES}
REQUIRED_BY_RUN = ("DISPATCHER_KAFKA_BOOTSTRAP", "DISPATCHER_DATABASE_URL")
PROMETHEUS_OWN = {"up", "ALERTS"}

# --- PromQL: metric names out of an expression ----------------------------------------

_STRINGS = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.:$])([A-Za-z_:][\w:]*)(\s*\()?")
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool",
             "and", "or", "unless", "offset", "inf", "nan"}
_SERIES_SUFFIX = re.compile(r"_(?:bucket|sum|count)$")


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (histogram series suffixes stripped).

    Strings, label matchers, range/subquery brackets and grouping label lists are removed
    first; what is left are metric names, function/aggregation names (followed by ``(``),
    keywords and numbers.
    """
    text = _STRINGS.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name in _KEYWORDS:
            continue
        names.add(_SERIES_SUFFIX.sub("", name))
    return names


def exported_names() -> set[str]:
    """Every series name a running dispatcher can export, plus Prometheus's own."""
    names = set(PROMETHEUS_OWN)
    for family in Metrics().registry.collect():
        names.add(family.name)
        if family.type == "counter":
            names.add(f"{family.name}_total")
        if family.type == "info":
            names.add(f"{family.name}_info")
        names.update(sample.name for sample in family.samples)
    return names


def dashboard_queries() -> Iterator[tuple[str, str]]:
    """(where, PromQL) of every query in the dashboard: panels, annotations, variables."""
    dash = json.loads(DASHBOARD.read_text())
    for panel in _panels(dash["panels"]):
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r}", target["expr"]
    for note in dash.get("annotations", {}).get("list", []):
        if "expr" in note:
            yield f"annotation {note['name']!r}", note["expr"]
    for var in dash.get("templating", {}).get("list", []):
        query = var.get("query")
        query = query.get("query", "") if isinstance(query, dict) else query or ""
        inner = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", query)
        yield f"variable {var['name']!r}", inner.group(1) if inner else query


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def alert_rules() -> list[dict[str, Any]]:
    """Every rule of alerts.yml."""
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_metric_names_reads_promql_like_prometheus_does() -> None:
    expr = ('histogram_quantile(0.99, sum by (le) (rate(dispatcher_push_duration_seconds_bucket'
            '{job="dispatcher", instance=~"$instance"}[$__rate_interval]))) > 1e3 '
            'and on (instance) max without (state) (up offset 5m) '
            '/ ignoring(x) group_left deriv(sum(dispatcher_consumer_lag)[10m:1m]) '
            'or label_replace(dispatcher_typo_total, "dst", "$1", "src", "(.*)")')
    assert metric_names(expr) == {"dispatcher_push_duration_seconds", "up",
                                  "dispatcher_consumer_lag", "dispatcher_typo_total"}
    assert "dispatcher_typo_total" not in exported_names()


def test_exported_names_include_the_contract_metrics() -> None:
    contract = {"dispatcher_events_consumed_total", "dispatcher_command_status_total",
                "dispatcher_push_requests_total", "dispatcher_push_duration_seconds",
                "dispatcher_push_inflight", "dispatcher_dead_letters_total",
                "dispatcher_command_completion_seconds", "dispatcher_consumer_lag"}
    assert contract <= exported_names()


def test_metrics_hooks_set_what_the_dashboard_reads() -> None:
    metrics = Metrics()
    metrics.pool(size=4, idle=1, maximum=10)
    metrics.outbox(backlog=7, oldest_age_s=12.5)
    metrics.readiness({"postgres": True, "kafka": False, "consumer": True})
    text = metrics.render().decode()
    for line in ('dispatcher_db_pool_connections{state="open"} 4.0',
                 'dispatcher_db_pool_connections{state="idle"} 1.0',
                 "dispatcher_db_pool_max_connections 10.0",
                 "dispatcher_status_outbox_backlog 7.0",
                 "dispatcher_status_outbox_oldest_age_seconds 12.5",
                 'dispatcher_dependency_up{dependency="kafka"} 0.0',
                 'dispatcher_dependency_up{dependency="consumer"} 1.0'):
        assert line in text.splitlines(), line
    assert re.search(r'^dispatcher_build_info\{version="[^"]+"\} 1\.0$', text, re.M)


def test_dashboard_queries_only_exported_metrics() -> None:
    exported = exported_names()
    unknown = {(where, name) for where, expr in dashboard_queries()
               for name in metric_names(expr) - exported}
    assert not unknown, f"dashboard queries metrics the service does not export: {unknown}"


def test_alert_rules_query_only_exported_metrics() -> None:
    exported = exported_names()
    unknown = {(rule["alert"], name) for rule in alert_rules()
               for name in metric_names(rule["expr"]) - exported}
    assert not unknown, f"alert rules query metrics the service does not export: {unknown}"


def test_dashboard_answers_the_operators_questions() -> None:
    used = set().union(*(metric_names(expr) for _, expr in dashboard_queries()))
    wanted = {
        "dispatcher_command_status_total", "dispatcher_command_completion_seconds",
        "dispatcher_commands_open", "dispatcher_oldest_open_command_age_seconds",
        "dispatcher_push_requests_total", "dispatcher_push_duration_seconds",
        "dispatcher_push_inflight", "dispatcher_consumer_lag", "dispatcher_dead_letters_total",
        "dispatcher_dependency_up", "up", "dispatcher_status_outbox_backlog",
        "dispatcher_db_pool_connections", "dispatcher_events_consumed_total",
        "dispatcher_command_first_push_seconds", "ALERTS",
    }
    assert wanted <= used, f"dashboard lacks {wanted - used}"
    quantiles = {q for _, expr in dashboard_queries()
                 if "dispatcher_command_completion_seconds_bucket" in expr
                 for q in re.findall(r"histogram_quantile\((0\.\d+)", expr)}
    assert {"0.50", "0.95", "0.99"} <= quantiles


def test_dashboard_panels_use_the_provisioned_datasource() -> None:
    dash = json.loads(DASHBOARD.read_text())
    uids = {ds["uid"] for ds in yaml.safe_load(DATASOURCES.read_text())["datasources"]}
    panels = [p for p in _panels(dash["panels"]) if p["type"] != "row"]
    assert len({p["id"] for p in _panels(dash["panels"])}) == len(list(_panels(dash["panels"])))
    for panel in panels:
        assert panel["datasource"]["uid"] in uids, panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys()


def test_alert_rules_are_actionable() -> None:
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert len(rule["annotations"]["summary"]) > 20, rule["alert"]
        assert len(rule["annotations"]["description"]) > 80, rule["alert"]
    covered = set().union(*(metric_names(rule["expr"]) for rule in rules))
    assert {
        "dispatcher_oldest_open_command_age_seconds", "dispatcher_push_requests_total",
        "dispatcher_consumer_lag", "dispatcher_dead_letters_total",
        "dispatcher_command_status_total", "dispatcher_dependency_up", "up",
        "dispatcher_status_outbox_backlog",
    } <= covered
    expiry = [r for r in rules if 'status="EXPIRED"' in r["expr"]]
    assert expiry, "no alert on the expiry rate"


def test_prometheus_scrapes_every_replica_and_loads_the_alerts() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    compose = yaml.safe_load(COMPOSE.read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "dispatcher")
    targets = {t for static in job["static_configs"] for t in static["targets"]}
    port = Settings().http_port
    assert targets == {f"{name}:{port}" for name in _compose_dispatchers(compose, "run")}
    prometheus = compose["services"]["prometheus"]
    (config_file,) = [a.split("=", 1)[1] for a in prometheus["command"]
                      if a.startswith("--config.file=")]
    config_dir = PurePosixPath(config_file).parent  # rule_files are relative to it
    rule_files = {str(config_dir / name) for name in config["rule_files"]}
    mounts = {m.split(":")[0]: m.split(":")[1] for m in prometheus["volumes"]}
    assert mounts["./prometheus/prometheus.yml"] == config_file
    assert mounts["./prometheus/alerts.yml"] in rule_files


# --- files parse ---------------------------------------------------------------------------

def _yaml_files() -> list[Path]:
    return sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_files_parse(path: Path) -> None:
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    assert docs
    assert all(isinstance(doc, dict) for doc in docs)


def test_json_files_parse() -> None:
    files = sorted(DEPLOY.rglob("*.json"))
    assert files
    for path in files:
        assert isinstance(json.loads(path.read_text()), dict), path


# --- settings: no drift, nothing required missing -------------------------------------------

def _variables_named(path: Path) -> set[str]:
    return set(re.findall(r"\bDISPATCHER_[A-Z0-9_]+\b", path.read_text()))


@pytest.mark.parametrize("path", [DOCKERFILE, COMPOSE, *sorted(K8S.glob("*.yaml"))],
                         ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_variable_named_is_a_setting(path: Path) -> None:
    named = _variables_named(path)
    assert not named - SETTINGS, f"{path.name} names unknown settings: {named - SETTINGS}"


def _compose_dispatchers(compose: dict[str, Any], command: str) -> dict[str, dict[str, Any]]:
    """Services built from deploy/Dockerfile that run ``command`` (`run` when none is given)."""
    found = {}
    for name, service in compose["services"].items():
        build = service.get("build") or {}
        if not str(build.get("dockerfile", "")).endswith("deploy/Dockerfile"):
            continue
        if (service.get("command") or ["run"])[0] == command:
            found[name] = service
    return found


def _settings_from(env: Mapping[str, Any]) -> Settings:
    return Settings.from_env({k: str(v) for k, v in env.items() if v is not None})


def test_compose_dispatchers_can_start() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    replicas = _compose_dispatchers(compose, "run")
    assert len(replicas) >= 2
    groups = set()
    for name, service in replicas.items():
        env = service["environment"]
        for var in REQUIRED_BY_RUN:
            assert env.get(var), f"{name} lacks {var}"
        settings = _settings_from(env)  # every value converts and validates
        settings.require_servers()
        settings.require_secret_keys()
        assert settings.http_host == "0.0.0.0", name
        assert settings.kafka_enable_idempotence, f"{name}: Apache Kafka supports idempotence"
        groups.add(settings.consumer_group)
        grace = _seconds(service.get("stop_grace_period", "10s"))
        assert grace > settings.shutdown_timeout_s, f"{name}: stop_grace_period too short"
    assert len(groups) == 1, "replicas must share one consumer group"
    migrators = _compose_dispatchers(compose, "migrate")
    assert migrators
    for name, service in migrators.items():
        assert service["environment"].get("DISPATCHER_DATABASE_URL"), name
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name, service in replicas.items():
        assert service["depends_on"][next(iter(migrators))]["condition"] == \
            "service_completed_successfully", name


def test_compose_creates_every_topic_the_service_uses() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    script = compose["services"]["topics"]["command"][0]
    env = next(iter(_compose_dispatchers(compose, "run").values()))["environment"]
    settings = _settings_from(env)
    loop = re.search(r"for name in ([^;]+);", script)
    prefix = re.search(r'--topic "([^"$]*)\$\$name"', script)
    assert loop
    assert prefix
    created = {prefix.group(1) + name for name in loop.group(1).split()}
    created |= {t for t in re.findall(r"--topic (\S+)", script) if "$" not in t}
    assert created == {settings.topic(name) for name in (*INPUTS, *OUTPUTS)}
    assert re.search(rf"--topic {re.escape(settings.topic('devices'))} .*cleanup.policy=compact",
                     script)
    assert set(re.findall(r"--partitions (\d+)", script)) == {str(settings.topic_partitions)}


def test_compose_values_escape_dollar_signs() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    for value in _strings(compose):
        unescaped = re.sub(r"\$\$|\$\{[A-Za-z_][A-Za-z0-9_]*(?:[:?-][^}]*)?\}", "", value)
        assert "$" not in unescaped, f"compose would interpolate: {value!r}"


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for v in node.values():
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", str(duration))
    assert match, duration
    return float(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def _k8s_docs() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d and "kind" in d]
    return docs


def _k8s(kind: str, name: str) -> dict[str, Any]:
    return next(d for d in _k8s_docs() if d["kind"] == kind and d["metadata"]["name"] == name)


SECRET_PLACEHOLDERS = {"DISPATCHER_SECRET_KEYS": "k1:" + "A" * 43 + "=",
                       "DISPATCHER_JWT_SECRET": "j" * 32}
"""Secret values whose format the settings check (a well-formed stand-in)."""


def _container_env(container: dict[str, Any]) -> dict[str, str]:
    """The container's variables: config maps resolved, secrets as placeholders."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(_k8s("ConfigMap", source["configMapRef"]["name"])["data"])
    for var in container.get("env", []):
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        if ref is not None:
            secret = _k8s("Secret", ref["name"])
            assert ref["key"] in secret["stringData"], ref
            env[var["name"]] = SECRET_PLACEHOLDERS.get(var["name"], "secret-placeholder")
        else:
            env[var["name"]] = var["value"]
    return env


def test_k8s_deployment_can_start_and_stop_gracefully() -> None:
    deployment = _k8s("Deployment", "dispatcher")
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert container.get("args", ["run"]) == ["run"]
    env = _container_env(container)
    for var in REQUIRED_BY_RUN:
        assert env.get(var), f"Deployment lacks {var}"
    settings = _settings_from(env)
    settings.require_servers()
    settings.require_secret_keys()
    assert settings.kafka_enable_idempotence
    assert pod["terminationGracePeriodSeconds"] > settings.shutdown_timeout_s
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert {"requests", "limits"} <= container["resources"].keys()
    secrets = {v["name"] for v in container["env"] if "secretKeyRef" in v.get("valueFrom", {})}
    assert {"DISPATCHER_DATABASE_URL", "DISPATCHER_JWT_SECRET", "DISPATCHER_PUSHY_API_KEY",
            "DISPATCHER_SECRET_KEYS"} <= secrets
    config = set(_k8s("ConfigMap", "dispatcher-config")["data"])
    assert not config & secrets, "secrets must not sit in the ConfigMap"


def test_k8s_migration_job_and_scraping() -> None:
    job = _k8s("Job", "dispatcher-migrate")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["migrate"]
    assert _container_env(container).get("DISPATCHER_DATABASE_URL")
    monitor = _k8s("PodMonitor", "dispatcher")
    labels = _k8s("Deployment", "dispatcher")["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert labels[monitor["spec"]["jobLabel"]] == "dispatcher"  # alerts select job="dispatcher"
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource


# --- the image ----------------------------------------------------------------------------

def test_dockerfile_runs_the_service_as_non_root() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim|^ARG PYTHON_IMAGE=python:3\.11-slim", text, re.M)
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2, "multi-stage"
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user, "no USER"
    assert user[-1].split(":")[0] not in ("root", "0")
    assert re.search(r'^ENTRYPOINT \["dispatcher"\]$', text, re.M)
    assert re.search(r'^CMD \["run"\]$', text, re.M)
    assert re.search(r"^EXPOSE 8080$", text, re.M)
    assert re.search(r"^HEALTHCHECK .*/healthz", text, re.M | re.S)
    assert "DISPATCHER_HTTP_HOST=0.0.0.0" in text


def test_dockerfile_installs_the_wheel_and_nothing_else() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^RUN pip wheel --no-deps --wheel-dir /wheels \.$", text, re.M)
    installs = re.findall(r"pip install (.+)$", text, re.M)
    assert installs == ["/wheels/dispatcher-*.whl"], installs
    copied = " ".join(re.findall(r"^COPY (.*)$", text, re.M))
    assert "migrations" not in copied
    assert "devtools" not in copied
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert {"**", "!pyproject.toml", "!dispatcher/"} <= set(ignore)
    assert not [line for line in ignore if line.startswith("!") and "devtools" in line]
    # the migrations the runner reads are inside the package that the wheel carries
    assert MIGRATIONS_DIR.resolve().parent == Path(dispatcher.__file__).resolve().parent


# --- secured deployment: own migration role, no DDL for the service, TLS/SASL -------------

RUNTIME_ROLE_SQL = DEPLOY / "postgres" / "runtime-role.sql"


def _dsn_user(dsn: str) -> str:
    match = re.match(r"postgres(?:ql)?://([^:@/]+)", dsn)
    assert match, dsn
    return match.group(1)


def test_compose_migrates_with_its_own_role_and_runs_without_ddl() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    (migrator,) = _compose_dispatchers(compose, "migrate").values()
    owner = _dsn_user(migrator["environment"]["DISPATCHER_DATABASE_URL"])
    sql = RUNTIME_ROLE_SQL.read_text()
    assert f"FOR ROLE {owner} " in sql, "default privileges for what the migrations create"
    for name, service in _compose_dispatchers(compose, "run").items():
        settings = _settings_from(service["environment"])
        assert settings.auto_migrate is False, name
        runtime = _dsn_user(settings.database_url)
        assert runtime != owner, f"{name} runs as the schema owner"
        assert re.search(rf"^CREATE ROLE {runtime} LOGIN", sql, re.M), runtime
        assert settings.kafka_security_protocol == "PLAINTEXT"  # the local broker
    mounts = compose["services"]["postgres"]["volumes"]
    assert any(m.startswith("./postgres/runtime-role.sql:/docker-entrypoint-initdb.d/")
               for m in mounts)
    assert "CREATE" not in re.findall(r"GRANT ([A-Z, ]+) ON ALL TABLES", sql)[0]


def _mounted(container: dict[str, Any], pod: dict[str, Any], path: str) -> str:
    """The Secret whose volume the container mounts at the directory holding ``path``."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        if str(PurePosixPath(path).parent) == mount["mountPath"]:
            secret = volumes[mount["name"]]["secret"]
            items = {item["path"] for item in secret.get("items", [])}
            assert not items or PurePosixPath(path).name in items, path
            return str(secret["secretName"])
    raise AssertionError(f"nothing is mounted at {path}")


def _sslrootcert(dsn: str) -> str:
    assert "sslmode=verify-full" in dsn, dsn
    found = re.search(r"[?&]sslrootcert=([^&]+)", dsn)
    assert found, dsn
    return found.group(1)


def test_k8s_service_uses_kafka_tls_sasl_and_a_verify_full_dsn() -> None:
    pod = _k8s("Deployment", "dispatcher")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    settings = _settings_from(_container_env(container))
    assert settings.auto_migrate is False
    assert settings.kafka_security_protocol == "SASL_SSL"
    assert settings.kafka_sasl_mechanism in {"SCRAM-SHA-256", "SCRAM-SHA-512"}
    assert _mounted(container, pod, settings.kafka_ssl_cafile)
    secrets = {v["name"]: v["valueFrom"]["secretKeyRef"]["name"] for v in container["env"]
               if "secretKeyRef" in v.get("valueFrom", {})}
    assert "DISPATCHER_KAFKA_SASL_PASSWORD" in secrets
    assert "DISPATCHER_KAFKA_SASL_PASSWORD" not in _k8s("ConfigMap", "dispatcher-config")["data"]
    example = _k8s("Secret", secrets["DISPATCHER_DATABASE_URL"])["stringData"]
    assert _mounted(container, pod, _sslrootcert(example["DISPATCHER_DATABASE_URL"]))


def test_k8s_migration_job_has_its_own_role() -> None:
    deployment = _k8s("Deployment", "dispatcher")["spec"]["template"]["spec"]
    job = _k8s("Job", "dispatcher-migrate")["spec"]["template"]["spec"]
    (service,), (migrate,) = deployment["containers"], job["containers"]

    def db_secret(container: dict[str, Any]) -> str:
        (ref,) = [v["valueFrom"]["secretKeyRef"] for v in container["env"]
                  if v["name"] == "DISPATCHER_DATABASE_URL"]
        return str(ref["name"])

    assert db_secret(migrate) != db_secret(service)
    owner = _k8s("Secret", db_secret(migrate))["stringData"]["DISPATCHER_DATABASE_URL"]
    runtime = _k8s("Secret", db_secret(service))["stringData"]["DISPATCHER_DATABASE_URL"]
    assert _dsn_user(owner) != _dsn_user(runtime)
    assert f"FOR ROLE {_dsn_user(owner)} " in RUNTIME_ROLE_SQL.read_text()
    assert re.search(rf"^CREATE ROLE {_dsn_user(runtime)} ", RUNTIME_ROLE_SQL.read_text(), re.M)
    assert _mounted(migrate, job, _sslrootcert(owner))


def test_every_setting_is_in_the_kubernetes_manifests() -> None:
    """An operator reads the manifests for what can be set: every variable is there,
    with a value or commented out with its use (secrets in the example Secret)."""
    k8s = "".join(p.read_text() for p in (DEPLOY / "k8s").glob("*.yaml"))
    dev_only = {"DISPATCHER_DEV_DIR"}  # `dispatcher dev`'s data directory
    missing = [name for name, _, _ in VARIABLES if name not in k8s and name not in dev_only]
    assert not missing, f"set or describe these in deploy/k8s: {missing}"
