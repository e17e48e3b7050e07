"""Structured logs: one JSON object a line, the level from settings, secrets never printed.

The lines are read as an operator would read them: from stderr, after ``logs.setup``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from dispatcher import logs

SECRET = "hunter2-Zq9"


@pytest.fixture
def lines(capsys: pytest.CaptureFixture[str]) -> Iterator[Any]:
    """Set up logging as `dispatcher run` does; yield a reader of the JSON lines written."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    noisy = {n: logging.getLogger(n).level for n in ("aiokafka", "kafka", "asyncio")}

    def read(level: str = "DEBUG") -> list[dict[str, Any]]:
        err = capsys.readouterr().err
        assert SECRET not in err
        return [json.loads(line) for line in err.splitlines() if line.strip()]

    yield read
    root.handlers[:], level = saved
    root.setLevel(level)
    for name, lvl in noisy.items():
        logging.getLogger(name).setLevel(lvl)


def test_every_line_is_a_json_object_with_the_fields(lines: Any) -> None:
    logs.setup("INFO", "json")
    log = logging.getLogger("dispatcher.push")
    log.warning("push failed, will retry", extra={
        "command_id": "a" * 24, "device_id": "b" * 24, "organization": "c" * 24,
        "retry_in_s": 0.5, "attempt": 2})

    [line] = lines()
    assert line["level"] == "WARNING"
    assert line["logger"] == "dispatcher.push"
    assert line["message"] == "push failed, will retry"
    assert datetime.fromisoformat(line["time"]).tzinfo == UTC
    assert line["command_id"] == "a" * 24
    assert line["device_id"] == "b" * 24
    assert line["organization"] == "c" * 24
    assert (line["retry_in_s"], line["attempt"]) == (0.5, 2)


def test_the_level_setting_decides_what_is_written(lines: Any) -> None:
    log = logging.getLogger("dispatcher.acks")
    logs.setup("INFO", "json")
    log.debug("ack", extra={"command_id": "x"})
    log.info("visible")
    assert [line["message"] for line in lines()] == ["visible"]

    logs.setup("debug", "json")
    log.debug("ack", extra={"command_id": "x"})
    assert [(line["level"], line["message"]) for line in lines()] == [("DEBUG", "ack")]
    # The Kafka client's DEBUG lines print whole records: never below WARNING.
    assert logging.getLogger("aiokafka").getEffectiveLevel() == logging.WARNING


def test_secret_fields_are_redacted(lines: Any) -> None:
    logs.setup("DEBUG", "json")
    log = logging.getLogger("dispatcher.test")
    log.info("params", extra={"params": {"newPassword": SECRET, "lockNow": True}})
    log.info("nested", extra={"event": {"params": {"newPassword": SECRET}},
                              "items": [{"unlockPin": SECRET}, {"wifiPassword": SECRET}]})
    log.info("named", extra={"api_key": SECRET, "pushToken": SECRET, "jwt_secret": SECRET,
                             "authorization": f"Bearer {SECRET}"})

    written = lines()
    assert [line["message"] for line in written] == ["params", "nested", "named"]
    assert written[0]["params"] == "***"
    assert written[1]["event"] == {"params": "***"}
    assert written[1]["items"] == [{"unlockPin": "***"}, {"wifiPassword": "***"}]
    assert {written[2][k] for k in ("api_key", "pushToken", "jwt_secret", "authorization")} == {
        "***"}


@pytest.mark.parametrize("text", [
    f'raw event {{"id": "x", "params": {{"newPassword": "{SECRET}"}}}}',
    f"python repr {{'newPassword': '{SECRET}'}}",
    f"POST https://api.pushy.me/push?api_key={SECRET}&x=1",
    f"form newPassword={SECRET} and password: {SECRET}",
    f"dsn postgresql://dispatcher:{SECRET}@db:5432/dispatcher",
    f"header Authorization: Bearer {SECRET}",
])
def test_secrets_in_messages_and_exceptions_are_redacted(lines: Any, text: str) -> None:
    logs.setup("DEBUG", "json")
    log = logging.getLogger("dispatcher.test")
    log.info(text)
    log.info("%s", text)
    log.info("field", extra={"detail": text})
    try:
        raise ValueError(text)
    except ValueError:
        log.exception("failed")

    written = lines()
    assert len(written) == 4
    assert "***" in written[0]["message"]
    assert "***" in written[2]["detail"]
    assert "ValueError" in written[3]["exception"]


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no")

    __repr__ = __str__


def test_odd_values_never_break_a_line(lines: Any) -> None:
    logs.setup("DEBUG", "json")
    log = logging.getLogger("dispatcher.test")
    cyclic: dict[str, Any] = {}
    cyclic["self"] = cyclic
    log.info("odd", extra={
        "unprintable": _Unprintable(), "cyclic": cyclic, "nan": float("nan"),
        "tuple_keys": {(1, 2): "v"}, "raw": b"\xff\x00" + f'"password": "{SECRET}"'.encode(),
        "a_set": {3}, "when": datetime(2026, 1, 2, tzinfo=UTC), "obj": object(),
    })
    log.info("wrong %s %s arguments", 1)
    log.info(_Unprintable())

    odd, wrong, unprintable = lines()
    assert odd["message"] == "odd"
    assert odd["unprintable"] == "<unprintable _Unprintable>"
    assert odd["nan"] == "nan"
    assert odd["tuple_keys"] == {"(1, 2)": "v"}
    assert odd["a_set"] == [3]
    assert odd["when"].startswith("2026-01-02T00:00:00")
    assert "nested too deep" in json.dumps(odd["cyclic"])
    assert wrong["message"].startswith("wrong %s %s arguments")
    assert unprintable["level"] == "INFO"
    assert unprintable["message"].startswith("<unprintable _Unprintable>")


def test_text_format_for_dev_is_redacted_too(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logs.setup("INFO", "text")
        logging.getLogger("dispatcher.dev").info(
            f'got {{"newPassword": "{SECRET}"}}', extra={"params": {"pin": SECRET},
                                                       "command_id": "abc"})
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    err = capsys.readouterr().err
    assert SECRET not in err
    assert "command_id=abc" in err


def test_plain_text_skips_the_patterns_but_anything_else_is_still_redacted() -> None:
    from dispatcher.logs import redact_line

    for plain in ("5f1e2d3c4b5a69788796a5b4", "mdm.commands.created", "alice@example.com",
                  "token-service", "dispatcher.audit"):
        assert redact_line(plain) == plain
    for secret in ("token=abc123", "Bearer abc.def.ghi", 'password: "hunter2"',
                   "postgresql://u:pw@h/db", "api_key=XYZ"):
        assert redact_line(secret) != secret, secret
