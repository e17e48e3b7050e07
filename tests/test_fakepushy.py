"""FakePushy over real HTTP: answers, recordings and fault injection."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from dispatcher_dev.fakepushy import DATA_LIMIT_BYTES, FakePushy, PushRecord

KEY = "s3cr3t-test-key"
TOKEN = "a6345d0278adc55d3474f5"


class FakeClock:
    """A hand-driven monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def started(clock: FakeClock) -> AsyncIterator[tuple[FakePushy, str]]:
    server = FakePushy(KEY, clock=clock)
    base_url = await server.start()
    yield server, base_url
    await server.stop()


@pytest.fixture
def fake(started: tuple[FakePushy, str]) -> FakePushy:
    return started[0]


@pytest.fixture
def base(started: tuple[FakePushy, str]) -> str:
    return started[1]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def push(
    http: aiohttp.ClientSession,
    base_url: str,
    body: Any = None,
    *,
    key: str | None = KEY,
    raw: bytes | None = None,
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """POST /push and return (status, JSON body, headers)."""
    if body is None and raw is None:
        body = {"to": TOKEN, "data": {"command": "sync"}, "time_to_live": 300}
    params = {} if key is None else {"api_key": key}
    payload = raw if raw is not None else json.dumps(body).encode()
    async with http.post(
        f"{base_url}/push",
        params=params,
        data=payload,
        headers={"Content-Type": "application/json"},
    ) as resp:
        return resp.status, await resp.json(), dict(resp.headers)


async def test_accepted_push_returns_pushy_id_and_is_recorded(
    fake: FakePushy, base: str, http: aiohttp.ClientSession
) -> None:
    status, body, _ = await push(http, base)

    assert status == 200
    assert body["success"] is True
    assert re.fullmatch(r"[0-9a-f]{24}", body["id"])
    assert body["info"] == {"devices": 1}
    [record] = fake.accepted
    assert record.push_id == body["id"]
    assert record.to == TOKEN
    assert record.data == {"command": "sync"}
    assert record.time_to_live == 300
    assert record.status == 200
    assert fake.requests == [record]
    assert fake.accepted_for(TOKEN) == [record]
    assert fake.accepted_for("someone-else") == []


async def test_token_list_is_accepted(
    fake: FakePushy, base: str, http: aiohttp.ClientSession
) -> None:
    status, body, _ = await push(http, base, {"to": ["t1", "t2"], "data": {}})

    assert (status, body["info"]) == (200, {"devices": 2})
    assert len(fake.accepted_for("t2")) == 1


@pytest.mark.parametrize("key", ["wrong-key", "", None])
async def test_bad_api_key_is_401_invalid_api_key(
    fake: FakePushy, base: str, http: aiohttp.ClientSession, key: str | None
) -> None:
    status, body, _ = await push(http, base, key=key)

    assert status == 401
    assert body["code"] == "INVALID_API_KEY"
    assert isinstance(body["error"], str)
    assert fake.accepted == []
    assert [r.status for r in fake.requests] == [401]


async def test_invalid_token_is_400_no_recipients(
    fake: FakePushy, base: str, http: aiohttp.ClientSession
) -> None:
    fake.invalid_tokens.add(TOKEN)

    status, body, _ = await push(http, base)

    assert (status, body["code"]) == (400, "NO_RECIPIENTS")
    assert fake.accepted == []
    assert fake.requests[0].to == TOKEN


async def test_partly_invalid_tokens_are_reported_in_info_failed(
    fake: FakePushy, base: str, http: aiohttp.ClientSession
) -> None:
    fake.invalid_tokens.add("gone")

    status, body, _ = await push(http, base, {"to": ["gone", "ok"], "data": {}})

    assert status == 200
    assert body["info"] == {"devices": 1, "failed": ["gone"]}


async def test_fail_next_is_consumed_one_per_request(
    fake: FakePushy, base: str, http: aiohttp.ClientSession
) -> None:
    fake.fail_next = [429, 500, 503]

    answers = [await push(http, base) for _ in range(4)]

    assert [(s, b.get("code")) for s, b, _ in answers] == [
        (429, "RATE_LIMIT_EXCEEDED"),
        (500, "INTERNAL_SERVER_ERROR"),
        (503, "INTERNAL_SERVER_ERROR"),
        (200, None),
    ]
    assert fake.fail_next == []
    assert [r.status for r in fake.requests] == [429, 500, 503, 200]
    assert len(fake.accepted) == 1


async def test_injected_429_carries_retry_after(
    fake: FakePushy, base: str, http: aiohttp.ClientSession
) -> None:
    fake.retry_after_s = 2.5
    fake.fail_next = [429]

    status, _, headers = await push(http, base)

    assert status == 429
    assert headers["Retry-After"] == "3"


async def test_rate_limit_kicks_in_past_n_per_minute_and_recovers(
    fake: FakePushy, base: str, http: aiohttp.ClientSession, clock: FakeClock
) -> None:
    fake.rate_limit_per_min = 3

    first = [await push(http, base) for _ in range(3)]
    clock.now += 20
    over = [await push(http, base) for _ in range(2)]

    assert [s for s, _, _ in first] == [200, 200, 200]
    assert [(s, b["code"]) for s, b, _ in over] == [(429, "RATE_LIMIT_EXCEEDED")] * 2
    assert all(h["Retry-After"] == "40" for _, _, h in over)

    clock.now += 40
    status, _, _ = await push(http, base)
    assert status == 200


async def test_oversize_data_is_refused(
    fake: FakePushy, base: str, http: aiohttp.ClientSession
) -> None:
    padding = DATA_LIMIT_BYTES - len('{"x":""}')
    at_limit = {"to": TOKEN, "data": {"x": "a" * padding}}
    over_limit = {"to": TOKEN, "data": {"x": "a" * (padding + 1)}}

    ok_status, _, _ = await push(http, base, at_limit)
    status, body, _ = await push(http, base, over_limit)

    assert ok_status == 200
    assert (status, body["code"]) == (413, "PAYLOAD_LIMIT_EXCEEDED")
    assert fake.requests[1].to == TOKEN
    assert len(fake.accepted) == 1


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"{not json", "INVALID_PARAM"),
        (b"[1, 2]", "INVALID_PARAM"),
        (b'{"data": {}}', "MISSING_PARAM"),
        (b'{"to": "t"}', "MISSING_PARAM"),
        (b'{"to": [], "data": {}}', "INVALID_PARAM"),
        (b'{"to": 5, "data": {}}', "INVALID_PARAM"),
        (b'{"to": "t", "data": "text"}', "INVALID_PARAM"),
        (b'{"to": "t", "data": {}, "time_to_live": -1}', "INVALID_PARAM"),
        (b'{"to": "t", "data": {}, "time_to_live": 31536001}', "INVALID_PARAM"),
        (b'{"to": "t", "data": {}, "time_to_live": "60"}', "INVALID_PARAM"),
        (b'{"to": "t", "data": {}, "notification": "hi"}', "INVALID_PARAM"),
    ],
)
async def test_malformed_bodies_are_400(
    fake: FakePushy, base: str, http: aiohttp.ClientSession, raw: bytes, code: str
) -> None:
    status, body, _ = await push(http, base, raw=raw)

    assert (status, body["code"]) == (400, code)
    assert fake.accepted == []


async def test_outage_answers_503(fake: FakePushy, base: str, http: aiohttp.ClientSession) -> None:
    fake.outage = True
    status, body, _ = await push(http, base)
    fake.outage = False
    after, _, _ = await push(http, base)

    assert (status, body["code"], after) == (503, "INTERNAL_SERVER_ERROR", 200)


async def test_max_inflight_counts_concurrent_requests(
    fake: FakePushy, base: str, http: aiohttp.ClientSession
) -> None:
    fake.latency_s = 0.3

    answers = await asyncio.gather(*(push(http, base) for _ in range(10)))

    assert [s for s, _, _ in answers] == [200] * 10
    assert fake.max_inflight == 10
    assert fake.inflight == 0


async def test_requests_show_status_zero_while_in_flight(
    fake: FakePushy, base: str, http: aiohttp.ClientSession
) -> None:
    fake.latency_s = 0.3
    pending = asyncio.ensure_future(push(http, base))
    for _ in range(100):
        if fake.inflight:
            break
        await asyncio.sleep(0.01)

    assert [r.status for r in fake.requests] == [0]
    assert fake.inflight == 1
    await pending
    assert [r.status for r in fake.requests] == [200]


async def test_on_push_async_callback_is_called(http: aiohttp.ClientSession) -> None:
    seen: list[PushRecord] = []
    called = asyncio.Event()

    async def on_push(record: PushRecord) -> None:
        seen.append(record)
        called.set()

    server = FakePushy(KEY, on_push=on_push)
    base = await server.start()
    try:
        _, body, _ = await push(http, base)
        await asyncio.wait_for(called.wait(), 2)
    finally:
        await server.stop()

    assert [r.push_id for r in seen] == [body["id"]]


async def test_on_push_sync_callback_and_refusals_not_reported(
    http: aiohttp.ClientSession,
) -> None:
    seen: list[str | None] = []
    server = FakePushy(KEY, on_push=lambda r: seen.append(r.push_id))
    base = await server.start()
    try:
        await push(http, base, key="nope")
        _, body, _ = await push(http, base)
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.01)
    finally:
        await server.stop()

    assert seen == [body["id"]]


async def test_stop_cancels_slow_callbacks_without_blocking_answer(
    http: aiohttp.ClientSession,
) -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def slow(_: PushRecord) -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    server = FakePushy(KEY, on_push=slow)
    base = await server.start()
    status, _, _ = await asyncio.wait_for(push(http, base), 2)
    await asyncio.wait_for(started.wait(), 2)
    await asyncio.wait_for(server.stop(), 5)

    assert status == 200
    assert cancelled.is_set()


async def test_failing_callback_is_logged_not_raised(
    http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    def boom(_: PushRecord) -> None:
        raise RuntimeError("callback broke")

    server = FakePushy(KEY, on_push=boom)
    base = await server.start()
    try:
        with caplog.at_level(logging.ERROR, logger="dispatcher_dev.fakepushy"):
            status, _, _ = await push(http, base)
            for _ in range(100):
                if caplog.records:
                    break
                await asyncio.sleep(0.01)
    finally:
        await server.stop()

    assert status == 200
    assert "on_push callback failed" in caplog.text


async def test_api_key_never_logged_or_shown(
    http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    server = FakePushy(KEY, on_push=lambda _: None)
    with caplog.at_level(logging.DEBUG):
        base = await server.start()
        try:
            await push(http, base)
            await push(http, base, key="wrong")
        finally:
            await server.stop()

    assert KEY not in caplog.text
    assert KEY not in repr(server)
    assert all(KEY not in repr(r) for r in server.requests)


async def test_start_twice_errors_stop_is_idempotent_and_restart_works() -> None:
    server = FakePushy()
    base = await server.start()
    try:
        assert base.startswith("http://127.0.0.1:")
        with pytest.raises(RuntimeError):
            await server.start()
    finally:
        await server.stop()
    await server.stop()

    again = await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            status, _, _ = await push(http, again, key="test-key")
    finally:
        await server.stop()
    assert status == 200
