"""A Kafka consumer that breaks beneath the service is replaced, and nothing is lost.

aiokafka's group coordinator ends for good on an error it does not expect; seen during a
broker cut: uvloop's "transport is closed" RuntimeError in the middle of a coordinator
lookup. From then on every ``getmany`` raises. Before the fix that ended the consumer's
task and with it the replica. The fault is injected where it happened (the coordinator
lookup); the broker, the group and PostgreSQL are real.
"""

from __future__ import annotations

import logging

import pytest

from dispatcher.runtime import Runtime
from dispatcher_dev.fakepushy import FakePushy
from tests.support.events import command_event, device_event, hex24
from tests.support.fakes import was_pushed
from tests.support.kafka import Kafka
from tests.support.wait import wait_for


async def test_a_consumer_whose_coordinator_died_is_replaced(
        service: Runtime, kafka: Kafka, pushy: FakePushy, caplog: pytest.LogCaptureFixture,
) -> None:
    device = hex24()
    await kafka.send("devices", device_event(device))
    first = command_event(device, command="REBOOT")
    await kafka.send("commands.created", first)
    await wait_for(lambda: was_pushed(pushy, first["id"]), what="the first push")

    assert service.consumer is not None
    assert service.consumer.consumer is not None
    broken = service.consumer.consumer
    coordinator = broken._coordinator

    async def transport_closed() -> None:
        raise RuntimeError("unable to perform operation on <TCPTransport closed=True "
                           "reading=False>; the handler is closed")

    caplog.set_level(logging.WARNING, logger="dispatcher.consumer")
    coordinator.ensure_coordinator_known = transport_closed
    coordinator.coordinator_dead()  # wakes the coordinator routine: it looks up again

    second = command_event(device, command="LOCK")
    await kafka.send("commands.created", second)
    await wait_for(lambda: was_pushed(pushy, second["id"]), timeout=60,
                   what="a push of a command sent after the client broke")

    assert not service.stop.is_set(), "the replica stopped"
    assert service.consumer.consumer is not broken
    assert any("replacing it" in r.getMessage() for r in caplog.records)
    pushed = [r.data.get("commandId") for r in pushy.accepted]
    assert pushed.count(first["id"]) == 1, "a command committed before the break was pushed again"
