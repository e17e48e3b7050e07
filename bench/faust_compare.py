"""`make bench-faust`: the two figures behind "aiokafka, not faust-streaming" (README).

1. Consume rate of the same messages: aiokafka ``getmany`` + manual commit against a faust
   agent batching with ``stream.take_events(1000, 0.05)``.
2. What happens to a batch when the agent body raises (the database is down, say): faust's
   ``take_events`` acknowledges the batch in a ``finally``, so its offsets get committed and
   a restart never sees it again. The figure is the committed offset after the raise.

Runs on the embedded broker (or ``DISPATCHER_KAFKA_BOOTSTRAP``). faust-streaming is not a
dependency of the service: the Makefile target installs it into the venv first.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.harness import consume_rate

N = int(os.environ.get("FAUST_COMPARE_N", "200000"))
PAYLOAD = b'{"id":"%024x","organization":"5f1e2d3c4b5a69788796a5b4","command":"LOCK",' + \
    b'"params":{"message":"compare"},"duration":600,' + b'"pad":"' + b"x" * 150 + b'"}'
TIMEOUTS = {"session_timeout_ms": 6000, "rebalance_timeout_ms": 6000,
            "heartbeat_interval_ms": 1000}


async def create(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


async def produce(bootstrap: str, topic: str, n: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5,
                                max_batch_size=65536, enable_idempotence=False)
    await producer.start()
    try:
        futures = []
        for i in range(n):
            futures.append(await producer.send(topic, PAYLOAD % i, key=b"%d" % (i % 5000)))
            if len(futures) >= 20000:
                await asyncio.gather(*futures)
                futures.clear()
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def aiokafka_rate(bootstrap: str, topic: str, n: int) -> float:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id="cmp-aiokafka",
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                **TIMEOUTS)
    return await consume_rate(consumer, n)


def run_worker(bootstrap: str, topic: str, n: int, mode: str, timeout_s: float) -> str:
    """A faust worker in its own process (faust owns its event loop); return what it wrote."""
    out = Path(tempfile.mkstemp(prefix="faust-compare-")[1])
    proc = subprocess.Popen([sys.executable, "-m", "bench.faust_compare", "_worker", bootstrap,
                             topic, str(n), mode, str(out)],
                            cwd=Path(__file__).resolve().parents[1],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None and not out.read_text():
        time.sleep(0.2)
    if mode == "raise":
        time.sleep(5)  # let the worker's commit loop (0.5 s) run after the raise
    proc.kill()
    proc.wait()
    return out.read_text()


def worker(bootstrap: str, topic: str, n: int, mode: str, out: str) -> None:
    import faust

    app = faust.App(f"cmp-faust-{mode}", broker=f"kafka://{bootstrap}", store="memory://",
                    web_enabled=False, broker_session_timeout=6, broker_rebalance_timeout=6,
                    broker_heartbeat_interval=1, broker_commit_interval=0.5,
                    consumer_auto_offset_reset="earliest", topic_allow_declare=False)
    source = app.topic(topic, value_serializer="raw", key_serializer="raw")
    state = {"seen": 0, "first": 0.0}

    @app.agent(source)
    async def agent(stream):  # type: ignore[no-untyped-def]
        async for batch in stream.take_events(1000, 0.05):
            if mode == "raise":
                Path(out).write_text(f"raised after taking {len(batch)} events\n")  # noqa: ASYNC240
                raise RuntimeError("the database is down; this batch was not stored")
            state["first"] = state["first"] or time.perf_counter()
            state["seen"] += len(batch)
            if state["seen"] >= n:
                rate = n / (time.perf_counter() - state["first"])
                Path(out).write_text(f"{rate}\n")  # noqa: ASYNC240
                os._exit(0)

    sys.argv = [sys.argv[0], "worker", "--loglevel", "WARNING"]
    app.main()


async def committed(bootstrap: str, group: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                                enable_auto_commit=False, **TIMEOUTS)
    await consumer.start()
    try:
        return await consumer.committed(TopicPartition(topic, 0)) or 0
    finally:
        await consumer.stop()


async def main() -> int:
    from dispatcher_dev.devstack import EmbeddedKafka

    with contextlib.ExitStack() as stack:
        bootstrap = os.environ.get("DISPATCHER_KAFKA_BOOTSTRAP", "")
        if not bootstrap:
            bootstrap = stack.enter_context(EmbeddedKafka()).start()
        topic = f"cmp-{secrets.token_hex(3)}"
        await create(bootstrap, topic, 4)
        await produce(bootstrap, topic, N)
        fast = await aiokafka_rate(bootstrap, topic, N)
        slow = float(run_worker(bootstrap, topic, N, "count", 600) or "nan")
        print(f"consume {N:,} messages of {len(PAYLOAD % 0)} B over 4 partitions")
        print(f"  aiokafka getmany + commit:        {fast:>10,.0f} msg/s")
        print(f"  faust take_events(1000, 0.05):    {slow:>10,.0f} msg/s"
              f"   ({fast / slow:,.0f}x slower)")

        crash = f"cmp-raise-{secrets.token_hex(3)}"
        await create(bootstrap, crash, 1)
        await produce(bootstrap, crash, 2000)
        said = run_worker(bootstrap, crash, 2000, "raise", 120).strip()
        offset = await committed(bootstrap, "cmp-faust-raise", crash)
        print("faust agent whose body raises on its first batch (nothing stored):")
        print(f"  {said or 'the worker never got a batch'};"
              f" committed offset afterwards: {offset}")
        print("  -> " + ("the batch is LOST: a restart resumes after it" if offset > 0 else
                         "nothing was committed: a restart redelivers the batch"))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_worker":
        worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], sys.argv[6])
    else:
        raise SystemExit(asyncio.run(main()))
