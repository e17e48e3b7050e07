"""FCM HTTP v1 and per-device providers on a real broker and PostgreSQL, against the fake
FCM (with its verifying token endpoint) and the fake Pushy.

Each test gets its own database, topics and consumer group.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from dispatcher.config import Settings
from dispatcher.exceptions import PUSH_ERROR_MESSAGES
from dispatcher_dev.fakefcm import FakeFcm, MessageRecord
from dispatcher_dev.fakepushy import FakePushy
from tests.support.db import statuses
from tests.support.events import command_event, device_event, hex24
from tests.support.fixtures import fresh_db, fresh_kafka, serving_fcm
from tests.support.kafka import Kafka
from tests.support.service import PUSHY_KEY, running
from tests.support.wait import wait_for

kafka = pytest.fixture(fresh_kafka)  # per test, like the database: see ``fresh``
db = pytest.fixture(fresh_db)


@pytest.fixture
async def fcm(tmp_path: Path) -> AsyncIterator[FakeFcm]:
    async with serving_fcm("dispatcher-test", tmp_path / "service-account.json") as fake:
        yield fake


@pytest.fixture
async def pushy() -> AsyncIterator[FakePushy]:
    fake = FakePushy(PUSHY_KEY)
    await fake.start()
    yield fake
    await fake.stop()


def serve(settings: Settings, pushy: FakePushy, fcm: FakeFcm, tmp_path: Path,
          providers: str = "fcm", **over: Any) -> Any:
    return running(settings, pushy,
                   push_provider=providers, fcm_api_url=fcm.url,
                   fcm_credentials_file=str(tmp_path / "service-account.json"), **over)


async def devices(kafka: Kafka, n: int, provider: str | None = "fcm") -> list[str]:
    ids = [hex24() for _ in range(n)]
    extra = {} if provider is None else {"pushProvider": provider}
    await kafka.send_many("devices", [device_event(d, **extra) for d in ids])
    return ids


async def commands(kafka: Kafka, ids: list[str], **over: Any) -> list[str]:
    cmds = [command_event(d, **over) for d in ids]
    await kafka.send_many("commands.created", cmds)
    return [c["id"] for c in cmds]


def sent_ids(records: list[MessageRecord]) -> set[str]:
    return {str(r.data.get("commandId")) for r in records}


async def pushed(fcm: FakeFcm, ids: list[str], timeout: float = 30) -> None:
    async def check() -> bool:
        return set(ids) <= sent_ids(fcm.accepted)

    await wait_for(check, timeout=timeout, what=f"{len(ids)} FCM pushes")


async def test_an_fcm_push_has_the_v1_shape_and_its_name_is_the_push_id(
        fresh: Settings, kafka: Kafka, db: asyncpg.Connection, pushy: FakePushy,
        fcm: FakeFcm, tmp_path: Path) -> None:
    async with serve(fresh, pushy, fcm, tmp_path):
        [device] = await devices(kafka, 1, provider=None)  # the default: fcm, the only one
        [cid] = await commands(kafka, [device], command="RESET_PASSWORD", duration=300,
                               params={"newPassword": "s3cret-pw", "lockNow": True})
        await pushed(fcm, [cid])
    record = fcm.accepted[0]
    assert record.token == f"tok-{device}"
    assert all(isinstance(v, str) for v in record.data.values())
    assert record.data["command"] == "RESET_PASSWORD"
    assert json.loads(record.data["params"]) == {"newPassword": "s3cret-pw", "lockNow": True}
    assert re.fullmatch(r"\d+s", record.android["ttl"])
    assert 280 <= int(record.android["ttl"][:-1]) <= 300
    assert record.android["priority"] == "high"
    row = await db.fetchrow("SELECT push_id, sent_at FROM commands WHERE id = $1", cid)
    assert row["push_id"] == record.name
    assert row["push_id"].startswith("projects/dispatcher-test/messages/")
    assert fcm.token_requests == 1


@pytest.mark.parametrize(("fault", "error_type"), [
    ("UNREGISTERED", "INVALID_TOKEN"), ("INVALID_ARGUMENT", "INVALID_TOKEN"),
    ("SENDER_ID_MISMATCH", "SENDER_ID_MISMATCH"),
    ("THIRD_PARTY_AUTH_ERROR", "THIRD_PARTY_AUTH_ERROR")])
async def test_permanent_fcm_errors_end_the_command_in_error(
        fresh: Settings, kafka: Kafka, db: asyncpg.Connection, pushy: FakePushy,
        fcm: FakeFcm, tmp_path: Path, fault: str, error_type: str) -> None:
    fcm.fail_next = [fault]
    async with serve(fresh, pushy, fcm, tmp_path):
        [device] = await devices(kafka, 1)
        [cid] = await commands(kafka, [device])

        async def ended() -> bool:
            return (await statuses(db, [cid])).get(cid) == "ERROR"

        await wait_for(ended, timeout=20, what="the command in ERROR")
    row = await db.fetchrow("SELECT error_type, error_message FROM commands WHERE id = $1", cid)
    assert (row["error_type"], row["error_message"]) == (error_type,
                                                         PUSH_ERROR_MESSAGES[error_type])
    assert len(fcm.requests) == 1  # permanent: never retried (and no token refresh on 401)
    assert fcm.token_requests == 1


async def test_quota_exceeded_honours_retry_after_and_5xx_are_retried(
        fresh: Settings, kafka: Kafka, db: asyncpg.Connection, pushy: FakePushy,
        fcm: FakeFcm, tmp_path: Path) -> None:
    fcm.fail_next = [429, 503, 500]
    fcm.retry_after_s = 2
    async with serve(fresh, pushy, fcm, tmp_path, push_backoff_base_s=0.2):
        [device] = await devices(kafka, 1)
        [cid] = await commands(kafka, [device])
        await pushed(fcm, [cid])
    assert [r.status for r in fcm.requests] == [429, 503, 500, 200]
    assert fcm.requests[1].at - fcm.requests[0].at >= 1.9  # Retry-After: 2
    row = await db.fetchrow("SELECT status, push_attempts, push_id FROM commands WHERE id = $1",
                            cid)
    assert (row["status"], row["push_attempts"]) == ("PENDING", 4)
    assert row["push_id"] == fcm.requests[-1].name


async def test_an_expired_access_token_is_refreshed_once_and_the_push_goes(
        fresh: Settings, kafka: Kafka, db: asyncpg.Connection, pushy: FakePushy,
        fcm: FakeFcm, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with serve(fresh, pushy, fcm, tmp_path):
        [device] = await devices(kafka, 1)
        first = await commands(kafka, [device])
        await pushed(fcm, first)
        fcm.expire_tokens()  # the cached token is now refused with 401
        [other] = await devices(kafka, 1)
        second = await commands(kafka, [other])
        await pushed(fcm, second)
    assert [r.status for r in fcm.requests] == [200, 401, 200]
    assert fcm.token_requests == 2
    assert (await statuses(db, second)) == {second[0]: "PENDING"}
    # neither the access tokens nor the service account's key reach the logs
    private_key = json.loads((tmp_path / "service-account.json").read_text())["private_key"]
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "ya29." not in logged
    assert "PRIVATE KEY" not in logged
    assert private_key.splitlines()[1] not in logged


async def test_one_token_request_for_many_concurrent_pushes_and_one_per_expiry(
        fresh: Settings, kafka: Kafka, pushy: FakePushy, fcm: FakeFcm,
        tmp_path: Path) -> None:
    fcm.latency_s = 0.05
    async with serve(fresh, pushy, fcm, tmp_path, push_concurrency=32):
        first = await commands(kafka, await devices(kafka, 60))
        await pushed(fcm, first)
        assert fcm.max_inflight > 1
        assert fcm.token_requests == 1
        fcm.expire_tokens()
        second = await commands(kafka, await devices(kafka, 60))
        await pushed(fcm, second)
    assert fcm.token_requests == 2  # every 401 of the expired token shared one refresh
    assert sum(r.status == 401 for r in fcm.requests) <= 32


async def test_each_device_is_pushed_through_its_own_provider(
        fresh: Settings, kafka: Kafka, db: asyncpg.Connection, pushy: FakePushy,
        fcm: FakeFcm, tmp_path: Path) -> None:
    async with serve(fresh, pushy, fcm, tmp_path, providers="pushy,fcm"):
        default = await commands(kafka, await devices(kafka, 3, provider=None))
        named_pushy = await commands(kafka, await devices(kafka, 3, provider="pushy"))
        named_fcm = await commands(kafka, await devices(kafka, 3, provider="fcm"))
        await pushed(fcm, named_fcm)

        async def pushy_done() -> bool:
            return set(default + named_pushy) <= {str(r.data.get("commandId"))
                                                  for r in pushy.accepted}

        await wait_for(pushy_done, what="the Pushy devices' pushes")
    assert sent_ids(fcm.requests) == set(named_fcm)
    assert {str(r.data.get("commandId")) for r in pushy.requests} == set(default + named_pushy)


async def test_a_device_naming_a_provider_not_configured_ends_in_error(
        fresh: Settings, kafka: Kafka, db: asyncpg.Connection, pushy: FakePushy,
        fcm: FakeFcm, tmp_path: Path) -> None:
    async with serve(fresh, pushy, fcm, tmp_path, providers="pushy"):
        [lost] = await commands(kafka, await devices(kafka, 1, provider="fcm"))
        [fine] = await commands(kafka, await devices(kafka, 1, provider="pushy"))

        async def settled() -> bool:
            return await statuses(db, [lost, fine]) == {lost: "ERROR", fine: "PENDING"} and bool(
                pushy.accepted)

        await wait_for(settled, timeout=20, what="ERROR for the FCM device")
    row = await db.fetchrow("SELECT error_type, error_message FROM commands WHERE id = $1", lost)
    assert row["error_type"] == "PROVIDER_UNAVAILABLE"
    assert row["error_message"] == PUSH_ERROR_MESSAGES["PROVIDER_UNAVAILABLE"]
    assert not fcm.requests  # never sent through another provider
    assert {str(r.data.get("commandId")) for r in pushy.requests} == {fine}


async def _get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        return response.status, await response.text()


async def test_a_hanging_provider_does_not_slow_the_other_providers_devices(
        fresh: Settings, kafka: Kafka, pushy: FakePushy, fcm: FakeFcm,
        tmp_path: Path) -> None:
    pushy.latency_s = 30  # hangs: every request runs into the push timeout
    async with serve(fresh, pushy, fcm, tmp_path, providers="pushy,fcm", push_concurrency=4,
                     push_timeout_s=20.0, push_lease_s=60.0):
        stuck = await commands(kafka, await devices(kafka, 40, provider="pushy"))

        async def pushy_full() -> bool:
            return pushy.inflight >= 4

        await wait_for(pushy_full, what="Pushy's slots all hanging")
        started = time.monotonic()
        wanted = await commands(kafka, await devices(kafka, 40, provider="fcm"))
        await pushed(fcm, wanted, timeout=20)
        took = time.monotonic() - started
        assert pushy.inflight <= 4  # the hanging provider holds its own slots only
        assert not pushy.accepted
    assert took < 5, f"the FCM devices took {took:.1f}s behind a hanging Pushy"
    assert len(stuck) == 40


async def test_an_outage_is_reported_per_provider_and_spares_the_other(
        fresh: Settings, kafka: Kafka, pushy: FakePushy, fcm: FakeFcm,
        tmp_path: Path) -> None:
    pushy.outage = True
    async with serve(fresh, pushy, fcm, tmp_path, providers="pushy,fcm",
                     push_backoff_base_s=0.1, push_backoff_max_s=0.3) as rt:
        await commands(kafka, await devices(kafka, 8, provider="pushy"))

        async def pushy_failing() -> bool:
            return not rt.pusher.provider_health()["pushy"]

        await wait_for(pushy_failing, what="Pushy counted as failing")
        wanted = await commands(kafka, await devices(kafka, 10, provider="fcm"))
        await pushed(fcm, wanted, timeout=10)
        _, body = await _get(rt.http_url + "/readyz")
        _, metrics = await _get(rt.http_url + "/metrics")
    ready = json.loads(body)
    assert ready["pushProvider"] == "failing"
    assert ready["pushProviders"] == {"pushy": "failing", "fcm": "ok"}
    assert 'dispatcher_dependency_up{dependency="push_provider"} 0.0' in metrics
    assert 'dispatcher_dependency_up{dependency="push_provider_pushy"} 0.0' in metrics
    assert 'dispatcher_dependency_up{dependency="push_provider_fcm"} 1.0' in metrics
    accepted = re.search(r'^dispatcher_push_requests_total\{outcome="accepted",provider="fcm"\} '
                         r'(\S+)$', metrics, re.M)
    assert accepted is not None
    assert float(accepted.group(1)) >= 10
