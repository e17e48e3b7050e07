"""`make bench-h2`: is HTTP/2 (httpx with h2) worth it for FCM against aiohttp's HTTP/1.1?

FCM HTTP v1 accepts HTTP/2: many streams on one connection instead of a pool of
HTTP/1.1 connections. What bounds the dispatcher's push ceiling on this box is CPU per push
(``make bench``, the ``CPU per push`` rows), so the question is the client's CPU per
request. Both clients post the same FCM-shaped message to the same local server
(hypercorn over TLS, ALPN offering h2 and http/1.1, in a process of its own), 256 requests
in flight, and the client's own CPU time per request is measured (``time.process_time``).

    make bench-h2        # installs httpx[http2] and hypercorn, then runs this
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import psutil

N = int(os.environ.get("BENCH_H2_REQUESTS", "20000"))
IN_FLIGHT = int(os.environ.get("BENCH_H2_IN_FLIGHT", "256"))
BODY = json.dumps({"message": {"token": "t" * 160, "data": {
    "commandId": "0" * 24, "command": "LOCK", "params": "{}"},
    "android": {"ttl": "600s", "priority": "high"}}}).encode()
ANSWER = b'{"name": "projects/p/messages/0:1"}'


async def _app(scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
               send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": ANSWER})


def serve(port: int, cert: str, key: str) -> None:
    """The server process: hypercorn over TLS on ``port``."""
    from hypercorn.asyncio import serve as hypercorn_serve
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.certfile, config.keyfile = cert, key
    config.alpn_protocols = ["h2", "http/1.1"]
    config.h2_max_concurrent_streams = IN_FLIGHT
    config.keep_alive_max_requests = 10**9  # hypercorn closes a connection after 1,000
    config.accesslog = config.errorlog = None
    print("ready", flush=True)
    asyncio.run(hypercorn_serve(cast(Any, _app), config))  # its ASGI types are narrower


async def _drive(post: Callable[[], Awaitable[None]]) -> float:
    left = N

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await post()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
    return time.perf_counter() - started


async def with_aiohttp(url: str, ctx: ssl.SSLContext) -> float:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=IN_FLIGHT, ssl=ctx)
    async with aiohttp.ClientSession(connector=connector) as http:
        async def post() -> None:
            async with http.post(url, data=BODY,
                                 headers={"Content-Type": "application/json"}) as r:
                await r.read()
                assert r.status == 200

        await post()  # connect before measuring
        return await _drive(post)


async def with_httpx_h2(url: str, ctx: ssl.SSLContext) -> float:
    import httpx

    async with httpx.AsyncClient(http2=True, verify=ctx,
                                 limits=httpx.Limits(max_connections=4)) as http:
        async def post() -> None:
            r = await http.post(url, content=BODY, headers={"Content-Type": "application/json"})
            assert r.status_code == 200
            assert r.http_version == "HTTP/2"

        await post()
        return await _drive(post)


async def main() -> int:
    from dispatcher_dev.devstack import free_port
    from tests.support.tlsutil import make_pki

    pki = make_pki(Path(tempfile.mkdtemp(prefix="bench-h2-")))
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "bench.h2_compare", "serve", str(port),
                               str(pki.server_cert), str(pki.server_key)],
                              stdout=subprocess.PIPE)
    assert server.stdout is not None
    server.stdout.readline()
    await asyncio.sleep(0.5)
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    url = f"https://localhost:{port}/v1/projects/p/messages:send"
    rows = []
    try:
        for name, run in RUNS:
            cpu, srv = time.process_time(), _cpu(server.pid)
            took = await run(url, ctx)
            client_us = (time.process_time() - cpu) / N * 1e6
            rows.append((name, N / took, client_us, (_cpu(server.pid) - srv) / N * 1e6))
    finally:
        server.terminate()
    print(f"\n{N:,} FCM-shaped POSTs, {IN_FLIGHT} in flight, TLS, one local server")
    print(f"{'client':<20} {'requests/s':>11} {'client CPU/req':>15} {'server CPU/req':>15}")
    for name, rate, client_us, server_us in rows:
        print(f"{name:<20} {rate:>11,.0f} {client_us:>12,.0f} us {server_us:>12,.0f} us")
    print(f"httpx h2 / aiohttp: {rows[1][2] / rows[0][2]:.2f}x the client CPU per request")
    return 0


RUNS = [(name, run) for name, run in (("aiohttp, HTTP/1.1", with_aiohttp),
                                       ("httpx, HTTP/2", with_httpx_h2))
        if os.environ.get("BENCH_H2_ONLY", name) in name]


def _cpu(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve(int(sys.argv[2]), sys.argv[3], sys.argv[4])
    else:
        raise SystemExit(asyncio.run(main()))
