"""The timer's status outbox gauges, read from PostgreSQL: backlog (capped) and oldest age."""

from __future__ import annotations

import asyncpg
import pytest

from dispatcher import expiry
from dispatcher.config import Settings
from dispatcher.expiry import Timer
from dispatcher.metrics import Metrics
from dispatcher.store import Store

INSERT = """
INSERT INTO status_outbox (command_id, aos_device, payload, created_at)
SELECT 'c' || g, 'd', '{}'::jsonb, now() - make_interval(secs => $2)
FROM generate_series(1, $1) g
"""


def gauge(metrics: Metrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name)
    assert value is not None, name
    return value


async def test_outbox_gauges_count_the_backlog_and_age_its_oldest_event(
    settings: Settings, db: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await Store.connect(settings.database_url)
    metrics = Metrics()
    timer = Timer(settings, store, metrics, None, lambda fx: None)  # type: ignore[arg-type]
    try:
        await db.execute("DELETE FROM status_outbox")
        await timer.outbox_gauges()
        assert gauge(metrics, "dispatcher_status_outbox_backlog") == 0
        assert gauge(metrics, "dispatcher_status_outbox_oldest_age_seconds") == 0

        await db.execute(INSERT, 3, 42.0)
        await db.execute(INSERT, 2, 1.0)
        await timer.outbox_gauges()
        assert gauge(metrics, "dispatcher_status_outbox_backlog") == 5
        assert 42 <= gauge(metrics, "dispatcher_status_outbox_oldest_age_seconds") < 60

        monkeypatch.setattr(expiry, "OUTBOX_COUNT_CAP", 4)
        await timer.outbox_gauges()
        assert gauge(metrics, "dispatcher_status_outbox_backlog") == 4
    finally:
        await db.execute("DELETE FROM status_outbox")
        await store.close()
