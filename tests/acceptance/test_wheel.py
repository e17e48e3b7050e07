"""The wheel an operator installs: built with `pip wheel`, installed into a fresh venv.

Nothing of the checkout is on the path of the installed `dispatcher` (it runs from a
temporary directory, with the venv's own interpreter): `dispatcher migrate` migrates an
empty database from the migrations the wheel carries, and `dispatcher run` starts with
``DISPATCHER_AUTO_MIGRATE=false`` as a role that may not change the schema, and answers
/readyz. The wheel carries no dev tools; without them `dispatcher dev` says what to install.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from dispatcher.secretbox import generate_keys
from dispatcher.store import migration_files
from dispatcher_dev.devstack import free_port
from tests.support.db import PgServer
from tests.support.figures import report
from tests.support.process import service_env, stop_process

pytestmark = [pytest.mark.acceptance, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_ROLE_SQL = ROOT / "deploy" / "postgres" / "runtime-role.sql"
"""What compose runs at database creation, and deploy/README.md tells operators to run."""


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    workdir: Path

    @property
    def dispatcher(self) -> str:
        return str(self.venv / "bin" / "dispatcher")


def _run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    done: subprocess.CompletedProcess[str] = subprocess.run(
        cmd, capture_output=True, text=True, check=False, timeout=400, **kwargs)
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("wheel")
    started = time.monotonic()
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
                  "--wheel-dir", str(base / "dist"), str(ROOT)])
    assert built.returncode == 0, built.stderr
    (wheel,) = (base / "dist").glob("dispatcher-*.whl")
    built_s = time.monotonic() - started
    venv = base / "venv"
    made = _run([sys.executable, "-m", "venv", str(venv)])
    assert made.returncode == 0, made.stderr
    pip = _run([str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check",
                str(wheel)], env=_clean_env())
    assert pip.returncode == 0, pip.stderr
    report(f"wheel: built in {built_s:.1f} s, installed into a fresh venv in "
           f"{time.monotonic() - started - built_s:.1f} s ({wheel.name})")
    workdir = base / "work"
    workdir.mkdir()
    return Installed(wheel, venv, workdir)


def _clean_env(**values: str) -> dict[str, str]:
    env = service_env(**values)
    for name in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"):
        env.pop(name, None)
    return env


def test_the_wheel_carries_the_migrations_and_no_dev_tools(installed: Installed) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    for _, _, path in migration_files():
        assert f"dispatcher/migrations/{path.name}" in names
    assert "dispatcher/store/queries.sql" in names
    assert not [n for n in names if n.startswith("dispatcher_dev/") or
                any(tool in n for tool in ("devstack", "fakepushy", "simulator"))]
    assert not [n for n in names if n.startswith("migrations/")], "a top-level migrations/"
    found = _run([str(installed.venv / "bin" / "python"), "-c",
                  "import importlib.util as u; print(u.find_spec('dispatcher_dev'))"],
                 cwd=installed.workdir, env=_clean_env())
    assert found.stdout.strip() == "None", found.stdout + found.stderr


def test_dispatcher_dev_from_the_wheel_says_what_to_install(installed: Installed) -> None:
    dev = _run([installed.dispatcher, "dev"], cwd=installed.workdir, env=_clean_env())
    assert dev.returncode == 2
    assert "devstack extra" in dev.stderr


async def _deployed_roles(pg_server: PgServer) -> tuple[str, str]:
    """A database owned by a migration role, and the deploy's runtime role: (owner DSN,
    runtime DSN). The roles SQL runs before any migration, as in compose."""
    tag = secrets.token_hex(3)
    owner, app, name = f"wheel_owner_{tag}", f"wheel_app_{tag}", f"wheel_{tag}"
    admin = await asyncpg.connect(pg_server.admin_dsn)
    try:
        await admin.execute(f"CREATE ROLE {owner} LOGIN")
        await admin.execute(f'CREATE DATABASE "{name}" OWNER {owner}')
    finally:
        await admin.close()
    owner_dsn = _as(pg_server.dsn_for(name), owner)
    sql = RUNTIME_ROLE_SQL.read_text()
    sql = re.sub(r"\bdispatcher_app\b", app, sql)
    sql = re.sub(r"\bFOR ROLE dispatcher\b", f"FOR ROLE {owner}", sql)
    conn = await asyncpg.connect(pg_server.dsn_for(name))  # as compose's POSTGRES_USER: a superuser
    try:
        await conn.execute(sql)
    finally:
        await conn.close()
    return owner_dsn, _as(owner_dsn, app)


def _as(dsn: str, role: str) -> str:
    changed = re.sub(r"://[^@/]+@", f"://{role}@", dsn, count=1)
    assert changed != dsn, f"cannot name a role in {dsn}"
    return changed


async def test_migrate_then_run_from_the_wheel_as_a_role_without_ddl(
        installed: Installed, pg_server: PgServer, kafka_bootstrap: str,
        tmp_path: Path) -> None:
    owner_dsn, runtime_dsn = await _deployed_roles(pg_server)
    migrated = _run([installed.dispatcher, "migrate"], cwd=installed.workdir,
                    env=_clean_env(DISPATCHER_DATABASE_URL=owner_dsn))
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout.strip() == \
        f"applied migrations: {[v for v, _, _ in migration_files()]}"
    ddl = _run([installed.dispatcher, "migrate"], cwd=installed.workdir,
               env=_clean_env(DISPATCHER_DATABASE_URL=runtime_dsn))
    assert ddl.returncode != 0, "the runtime role may change the schema"
    port = free_port()
    log_path = tmp_path / "dispatcher.log"
    env = _clean_env(
        DISPATCHER_KAFKA_BOOTSTRAP=kafka_bootstrap, DISPATCHER_DATABASE_URL=runtime_dsn,
        DISPATCHER_AUTO_MIGRATE="false", DISPATCHER_HTTP_PORT=str(port),
        DISPATCHER_TOPIC_PREFIX=f"wheel{secrets.token_hex(3)}.",
        DISPATCHER_PUSH_PROVIDER="log", DISPATCHER_SECRET_KEYS=generate_keys("wheel1"),
        DISPATCHER_KAFKA_SESSION_TIMEOUT_MS="6000", DISPATCHER_KAFKA_REBALANCE_TIMEOUT_MS="6000",
        DISPATCHER_KAFKA_HEARTBEAT_INTERVAL_MS="1000", DISPATCHER_SHUTDOWN_TIMEOUT_S="10")
    started = time.monotonic()
    with log_path.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            installed.dispatcher, "run", cwd=installed.workdir, env=env,
            stdout=out, stderr=subprocess.STDOUT)
    try:
        body = await _until_ready(proc, f"http://127.0.0.1:{port}", log_path)
        report(f"wheel: `dispatcher run` ready {time.monotonic() - started:.1f} s after start "
               f"(auto-migrate off, runtime role without DDL)")
        assert body["checks"] == {"postgres": True, "kafka": True, "consumer": True}
    finally:
        code, _ = await stop_process(proc)
    assert code == 0, _tail(log_path)
    assert "migrations applied" not in _tail(log_path)


async def test_run_from_the_wheel_refuses_an_unmigrated_database(
        installed: Installed, pg_server: PgServer, kafka_bootstrap: str) -> None:
    dsn = await pg_server.create_database(f"wheel_empty_{secrets.token_hex(4)}")
    env = _clean_env(DISPATCHER_KAFKA_BOOTSTRAP=kafka_bootstrap, DISPATCHER_DATABASE_URL=dsn,
                     DISPATCHER_AUTO_MIGRATE="false", DISPATCHER_HTTP_PORT=str(free_port()),
                     DISPATCHER_PUSH_PROVIDER="log", DISPATCHER_SECRET_KEYS=generate_keys())
    refused = await asyncio.to_thread(_run, [installed.dispatcher, "run"],
                                      cwd=installed.workdir, env=env)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "lacks migrations" in refused.stderr
    assert "dispatcher migrate" in refused.stderr


async def _until_ready(proc: asyncio.subprocess.Process, http: str,
                       log_path: Path) -> dict[str, object]:
    deadline = time.monotonic() + 60
    last = ""
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise AssertionError(f"exited {proc.returncode}:\n{_tail(log_path)}")
        try:
            async with aiohttp.ClientSession() as session, \
                    session.get(http + "/readyz") as resp:
                body: dict[str, object] = await resp.json()
                if resp.status == 200:
                    return body
                last = str(body)
        except aiohttp.ClientError as exc:
            last = repr(exc)
        await asyncio.sleep(0.2)
    raise AssertionError(f"/readyz not 200 ({last}):\n{_tail(log_path)}")


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:]


def test_the_checkout_is_not_what_runs(installed: Installed) -> None:
    where = _run([str(installed.venv / "bin" / "python"), "-c",
                  "import dispatcher.store as s; print(s.__file__); print(s.MIGRATIONS_DIR)"],
                 cwd=installed.workdir, env=_clean_env())
    module, migrations = where.stdout.split()
    assert str(installed.venv) in module
    assert str(installed.venv) in migrations
    assert not module.startswith(str(ROOT) + os.sep + "dispatcher")
