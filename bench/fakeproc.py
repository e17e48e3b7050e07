"""The fake push provider in a process of its own, so the load generator never slows it.

``python -m bench.fakeproc PORT LATENCY_S API_KEY`` serves the fake Pushy;
``python -m bench.fakeproc PORT LATENCY_S CREDENTIALS_PATH fcm`` the fake FCM (HTTP v1 and
its verifying OAuth2 token endpoint), writing its service account to CREDENTIALS_PATH.
``GET /_arrivals`` answers ``{commandId: unix time of its first accepted push}``
(``POST /_arrivals`` with a list of ids: only theirs), ``GET /_stats`` the counts and
``POST /_forget`` drops every push kept so far (a long run's memory stays flat).
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

from aiohttp import web

from dispatcher_dev.fakefcm import FakeFcm, MessageRecord
from dispatcher_dev.fakepushy import FakePushy, PushRecord


async def main(port: int, latency_s: float, key: str, provider: str = "pushy") -> None:
    arrivals: dict[str, float] = {}

    def on_push(record: PushRecord | MessageRecord) -> None:
        cid = str(record.data.get("commandId"))
        arrivals.setdefault(cid, time.time())

    fake: Any = (FakeFcm(on_send=on_push) if provider == "fcm"
                 else FakePushy(key, on_push=on_push))
    fake.latency_s = latency_s

    async def get_arrivals(request: web.Request) -> web.Response:
        return web.json_response(arrivals)

    async def find_arrivals(request: web.Request) -> web.Response:
        ids = await request.json()
        return web.json_response({i: arrivals[i] for i in ids if i in arrivals})

    async def get_stats(request: web.Request) -> web.Response:
        return web.json_response({"accepted": len(fake.accepted), "requests": len(fake.requests),
                                  "max_inflight": fake.max_inflight})

    async def forget(request: web.Request) -> web.Response:
        arrivals.clear()
        fake.accepted.clear()
        fake.requests.clear()
        return web.json_response({})

    fake.app.router.add_get("/_arrivals", get_arrivals)
    fake.app.router.add_post("/_forget", forget)
    fake.app.router.add_post("/_arrivals", find_arrivals)
    fake.app.router.add_get("/_stats", get_stats)
    await fake.start(port=port)
    if provider == "fcm":
        fake.write_credentials(key)
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), float(sys.argv[2]), *sys.argv[3:5]))
