"""The metrics' bounded label sets: complete, and created at 0 before anything happens."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dispatcher
from dispatcher.lifecycle import CommandType, Status
from dispatcher.metrics import DEAD_LETTER_REASONS, PUSH_OUTCOMES, Metrics

SOURCE = Path(dispatcher.__file__).parent


def _code() -> str:
    return "\n".join(p.read_text() for p in sorted(SOURCE.glob("*.py")))


def test_every_dead_letter_reason_in_the_code_is_known() -> None:
    code = _code()
    used = set(re.findall(r'InvalidEvent\(\s*"(\w+)"', code))
    used |= set(re.findall(r'reject\(\s*\w+,\s*"(\w+)"', code))
    used |= set(re.findall(r'deadletter\.build\(\s*\w+,\s*"(\w+)"', code))
    used |= set(re.findall(r'return "(\w+)"', (SOURCE / "events.py").read_text()))
    assert used, "the patterns found no reason at all"
    assert used <= set(DEAD_LETTER_REASONS), used - set(DEAD_LETTER_REASONS)


def test_every_push_outcome_in_the_code_is_known() -> None:
    code = "\n".join(p.read_text() for p in sorted((SOURCE / "push").glob("*.py")))
    used = set(re.findall(r'outcome="(\w+)"', code)) | {"accepted"}
    assert used <= set(PUSH_OUTCOMES), used - set(PUSH_OUTCOMES)


def test_zero_creates_every_counter_series_at_zero() -> None:
    metrics = Metrics()
    metrics.zero(["mdm.commands.created", "mdm.device-acks"], "pushy")
    get = metrics.registry.get_sample_value
    for reason in DEAD_LETTER_REASONS:
        assert get("dispatcher_dead_letters_total",
                   {"topic": "mdm.device-acks", "reason": reason}) == 0
    for outcome in PUSH_OUTCOMES:
        assert get("dispatcher_push_requests_total",
                   {"provider": "pushy", "outcome": outcome}) == 0
    for command in CommandType:
        for status in Status:
            assert get("dispatcher_command_status_total",
                       {"command": command.value, "status": status.value}) == 0


def test_pushed_observes_created_to_first_push_only() -> None:
    metrics = Metrics()
    created = datetime.now(UTC) - timedelta(seconds=2)
    metrics.pushed("pushy", created, first=True)
    metrics.pushed("pushy", created, first=False)  # a re-push
    get = metrics.registry.get_sample_value
    assert get("dispatcher_command_first_push_seconds_count", {"provider": "pushy"}) == 1
    total = get("dispatcher_command_first_push_seconds_sum", {"provider": "pushy"})
    assert total is not None
    assert 2 <= total < 10
