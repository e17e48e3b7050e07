"""An asyncio TCP proxy that injects network faults between the dispatcher and a server.

Each accepted connection gets its own pair of pipes to the target. The fault applies to
every connection not ``exempt`` (the test's own clients pass through untouched, so the
test keeps producing and observing while the dispatcher's side is broken):

* ``pass``   — forward bytes as they come;
* ``cut()``  — close every connection now (an action, not a mode);
* ``refuse`` — accept new connections and reset them at once (the client sees a reset);
* ``stall``  — stop forwarding in both directions; bytes wait until the mode changes;
* ``slow``   — sleep ``delay_s`` before forwarding each chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from dispatcher_dev.devstack import EmbeddedKafka, free_port

MODES = ("pass", "refuse", "stall", "slow")
_CHUNK = 64 * 1024


def own_process_peers() -> Callable[[tuple[str, int]], bool]:
    """A check that a peer address is a socket of this very process (the test's clients)."""
    me = psutil.Process()

    def exempt(peer: tuple[str, int]) -> bool:
        return any(c.laddr and c.laddr.port == peer[1] for c in me.net_connections("tcp"))

    return exempt


@dataclass(eq=False)
class _Conn:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    exempt: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def close(self, reset: bool = False) -> None:
        for writer in (self.client, self.upstream):
            if writer is None:
                continue
            if reset:
                _reset_on_close(writer)
            writer.close()
        for task in self.tasks:
            task.cancel()


def _reset_on_close(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class Proxy:
    """Listens on ``listen_port`` (0: any) and forwards to ``target_host:target_port``."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1",
                 listen_port: int = 0, exempt: Callable[[tuple[str, int]], bool] | None = None
                 ) -> None:
        self.target = (target_host, target_port)
        self.listen_port = listen_port
        self.exempt = exempt or (lambda _peer: False)
        self.mode = "pass"
        self.delay_s = 0.0
        self.accepted = 0
        self.refused = 0
        self.cuts = 0
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._conns: set[_Conn] = set()
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> int:
        """Start listening; return the port."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.listen_port)
        return self.port

    async def stop(self) -> None:
        """Stop listening and close every connection."""
        self.set_mode("pass")
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):
            conn.close()
        self._conns.clear()

    def set_mode(self, mode: str, delay_s: float = 0.0) -> None:
        """Switch to ``pass``, ``refuse``, ``stall`` or ``slow`` (with ``delay_s`` per chunk)."""
        if mode not in MODES:
            raise ValueError(f"unknown proxy mode {mode!r}")
        self.mode = mode
        self.delay_s = delay_s
        if mode == "stall":
            self._flowing.clear()
        else:
            self._flowing.set()

    def cut(self) -> int:
        """Close every connection that is not exempt, now; return how many."""
        victims = [c for c in self._conns if not c.exempt]
        for conn in victims:
            conn.close(reset=True)
            self._conns.discard(conn)
        self.cuts += len(victims)
        return len(victims)

    @property
    def connections(self) -> int:
        return sum(1 for c in self._conns if not c.exempt)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        conn = _Conn(writer, exempt=bool(peer) and self.exempt(peer))
        if self.mode == "refuse" and not conn.exempt:
            self.refused += 1
            conn.close(reset=True)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            conn.close(reset=True)
            return
        self.accepted += 1
        conn.upstream = up_writer
        self._conns.add(conn)
        conn.tasks = [asyncio.create_task(self._pipe(conn, reader, up_writer)),
                      asyncio.create_task(self._pipe(conn, up_reader, writer))]
        await asyncio.gather(*conn.tasks, return_exceptions=True)
        conn.close()
        self._conns.discard(conn)

    async def _pipe(self, conn: _Conn, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await reader.read(_CHUNK)
                if not data:
                    break
                if not conn.exempt:
                    await self._flowing.wait()
                    if self.mode == "slow" and self.delay_s > 0:
                        await asyncio.sleep(self.delay_s)
                writer.write(data)
                await writer.drain()
        except (OSError, ConnectionError):
            pass
        finally:
            for task in conn.tasks:
                if task is not asyncio.current_task():
                    task.cancel()


@contextlib.asynccontextmanager
async def proxied_broker(log_path: Path) -> AsyncIterator[tuple[EmbeddedKafka, Proxy]]:
    """A broker of its own behind a proxy it advertises, so every Kafka connection goes
    through the proxy; this process's own clients are exempt from its faults.

    Services bootstrap from ``127.0.0.1:{proxy.port}``; the test's clients may use
    ``broker.bootstrap``. ``proxy.set_mode("refuse"); proxy.cut()`` cuts the broker.
    """
    broker_port = free_port()
    proxy = Proxy(broker_port, exempt=own_process_peers())
    broker = EmbeddedKafka(broker_port, log_path, advertised=f"127.0.0.1:{await proxy.start()}")
    try:
        await asyncio.to_thread(broker.start)  # the proxy answers its readiness probe meanwhile
        yield broker, proxy
    finally:
        await proxy.stop()
        await asyncio.to_thread(broker.stop)
