"""A device-fleet simulator for `dispatcher dev`: Pushy- and FCM-compatible endpoints playing
devices.

Each simulated device is registered on ``mdm.devices`` with a push token and its provider
(every second one ``fcm`` when the simulator has a fake FCM). When the
dispatcher pushes to it, the device answers on ``mdm.device-acks`` the way a device
gateway would: RECEIVED after a moment, then DONE, or ERROR for some, and nothing at
all for the silent ones (those commands end EXPIRED).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from aiokafka import AIOKafkaProducer

from dispatcher_dev.fakefcm import FakeFcm, MessageRecord
from dispatcher_dev.fakepushy import FakePushy, PushRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SimDevice:
    """One simulated device."""

    aos_device: str
    organization: str
    aos_enterprise: str
    push_token: str
    provider: str = "pushy"


def now_iso() -> str:
    """Now as RFC 3339 UTC."""
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def make_fleet(count: int, organization: str, enterprise: str, seed: int = 7,
               providers: tuple[str, ...] = ("pushy",)) -> list[SimDevice]:
    """A deterministic fleet, so device ids stay the same between runs; device ``i`` uses
    ``providers[i % len(providers)]``."""
    rng = random.Random(seed)
    return [
        SimDevice(f"{rng.getrandbits(96):024x}", organization, enterprise,
                  f"sim-{rng.getrandbits(64):016x}", providers[i % len(providers)])
        for i in range(count)
    ]


class FleetSimulator:
    """Answers pushes with acks; ``error_rate`` and ``silent_rate`` shape the outcomes."""

    def __init__(self, bootstrap: str, acks_topic: str, devices_topic: str,
                 fleet: list[SimDevice], error_rate: float = 0.1, silent_rate: float = 0.1,
                 api_key: str = "") -> None:
        self.bootstrap = bootstrap
        self.acks_topic = acks_topic
        self.devices_topic = devices_topic
        self.fleet = fleet
        self.error_rate = error_rate
        self.silent_rate = silent_rate
        self.by_token = {d.push_token: d for d in fleet}
        self.api_key = api_key or secrets.token_hex(8)
        self.pushy = FakePushy(self.api_key, on_push=self._on_push)
        self.fcm = FakeFcm("dispatcher-dev", on_send=self._on_send)
        self._producer: AIOKafkaProducer | None = None
        self._rng = random.Random()

    async def start(self) -> str:
        """Start the endpoint and register the fleet; return the Pushy base URL."""
        self._producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all",
                                          enable_idempotence=False)
        await self._producer.start()
        for d in self.fleet:
            event = {"aosDevice": d.aos_device, "organization": d.organization,
                     "aosEnterprise": d.aos_enterprise, "mdmUser": None,
                     "pushToken": d.push_token, "state": "ACTIVE", "updatedAt": now_iso(),
                     "pushProvider": d.provider}
            await self._producer.send(self.devices_topic, json.dumps(event).encode(),
                                      key=d.aos_device.encode())
        await self._producer.flush()
        await self.fcm.start()
        return await self.pushy.start()

    async def stop(self) -> None:
        """Stop answering and close the producer."""
        await self.pushy.stop()
        await self.fcm.stop()
        if self._producer is not None:
            await self._producer.stop()

    async def _on_push(self, record: PushRecord) -> None:
        token = record.to if isinstance(record.to, str) else record.to[0]
        await self._answer(token, record.data.get("commandId"))

    async def _on_send(self, record: MessageRecord) -> None:
        await self._answer(record.token, record.data.get("commandId"))

    async def _answer(self, token: str, command_id: str | None) -> None:
        device = self.by_token.get(token)
        if device is None or not command_id:
            return
        roll = self._rng.random()
        if roll < self.silent_rate:
            log.info("simulated device stays silent", extra={"command_id": command_id})
            return
        await asyncio.sleep(self._rng.uniform(0.2, 1.0))
        await self._ack(device, command_id, "RECEIVED")
        await asyncio.sleep(self._rng.uniform(0.5, 2.0))
        if roll < self.silent_rate + self.error_rate:
            await self._ack(device, command_id, "ERROR", error=("UNSUPPORTED",
                            "the simulated device does not support this command"))
        else:
            await self._ack(device, command_id, "DONE")

    async def _ack(self, device: SimDevice, command_id: str, status: str,
                   error: tuple[str, str] | None = None) -> None:
        ack: dict[str, object] = {"commandId": command_id, "aosDevice": device.aos_device,
                                  "status": status, "at": now_iso(), "data": {}}
        if error:
            ack["errorType"], ack["errorMessage"] = error
        assert self._producer is not None
        await self._producer.send_and_wait(self.acks_topic, json.dumps(ack).encode(),
                                           key=device.aos_device.encode())
