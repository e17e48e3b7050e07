"""`dispatcher run | migrate | dev | token | send | watch | schemas`: the command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import secrets
import sys
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from dispatcher import auth, logs
from dispatcher.config import Settings
from dispatcher.exceptions import DispatcherError

STACK_FILE = "stack.json"
T = TypeVar("T")


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `dispatcher` command."""
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env(os.environ)
        args.func(settings, args)
    except DispatcherError as exc:
        print(f"dispatcher: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dispatcher", description=__doc__)
    sub = parser.add_subparsers(required=True, metavar="COMMAND")
    sub.add_parser("run", help="run the service").set_defaults(func=cmd_run)
    sub.add_parser("migrate", help="apply the migrations").set_defaults(func=cmd_migrate)
    sub.add_parser("dev", help="embedded stack + simulator + service").set_defaults(func=cmd_dev)
    token = sub.add_parser("token", help="print a signed bearer token")
    token.add_argument("--org", action="append", required=True, help="organization id, or *")
    token.add_argument("--perm", action="append", help="permission (default: all three)")
    token.add_argument("--ttl", type=int, default=24 * 3600, help="seconds of validity")
    token.set_defaults(func=cmd_token)
    send = sub.add_parser("send", help="publish a command-created event")
    send.add_argument("--device", required=True, help="aosDevice id (24 hex)")
    send.add_argument("--command", default="LOCK")
    send.add_argument("--duration", type=int, default=0, help="seconds of validity")
    send.add_argument("--params", default="{}", help="JSON object")
    send.add_argument("--org", default=None, help="organization id (dev: the simulated one)")
    send.add_argument("--enterprise", default=None, help="aosEnterprise id")
    send.set_defaults(func=cmd_send)
    watch = sub.add_parser("watch", help="print mdm.commands.status events as they come")
    watch.add_argument("--from-beginning", action="store_true")
    watch.set_defaults(func=cmd_watch)
    schemas = sub.add_parser("schemas", help="print or write the JSON Schemas of every topic")
    schemas.add_argument("--write", action="store_true", help="write them into schemas/")
    schemas.set_defaults(func=cmd_schemas)
    return parser


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on uvloop when it is installed (it is a dependency on Linux)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def cmd_run(settings: Settings, args: argparse.Namespace) -> None:
    """The service."""
    from dispatcher.app import serve

    settings.require_servers()
    settings.require_secret_keys()
    logs.setup(settings.log_level, settings.log_format)
    run_async(serve(settings))


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> None:
    """Apply pending migrations."""
    from dispatcher.store import migrate

    if not settings.database_url:
        raise DispatcherError("DISPATCHER_DATABASE_URL is required")
    applied = asyncio.run(migrate(settings.database_url))
    print(f"applied migrations: {applied}" if applied else "schema is up to date")


def cmd_dev(settings: Settings, args: argparse.Namespace) -> None:
    """What `make run` starts (needs the dev tools: the devstack extra)."""
    try:
        from dispatcher_dev.dev import run_dev
    except ImportError as exc:
        raise DispatcherError(
            "`dispatcher dev` needs the dev tools, which the service package does not carry: "
            "install the devstack extra (in a checkout: pip install -e ./devtools "
            "-e '.[devstack]', or `make run`)") from exc

    logs.setup(settings.log_level, "text")
    run_dev(settings)


def _stack(settings: Settings) -> dict[str, Any]:
    path = Path(settings.dev_dir) / STACK_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def dev_jwt_secret(settings: Settings) -> str:
    """The configured secret, else the one `dispatcher dev` keeps under .dev/."""
    if settings.jwt_secret:
        return settings.jwt_secret
    return _dev_secret(settings, "jwt_secret", lambda: secrets.token_urlsafe(32))


def dev_secret_keys(settings: Settings) -> str:
    """The configured DISPATCHER_SECRET_KEYS, else the one `dispatcher dev` keeps under .dev/."""
    if settings.secret_keys:
        return settings.secret_keys
    from dispatcher.secretbox import generate_keys

    return _dev_secret(settings, "secret_keys", lambda: generate_keys("dev1"))


def _dev_secret(settings: Settings, name: str, make: Callable[[], str]) -> str:
    """The secret kept in .dev/``name``, made (mode 0600) by ``make`` on first use."""
    path = Path(settings.dev_dir) / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(make())
        path.chmod(0o600)
    return path.read_text().strip()


def cmd_token(settings: Settings, args: argparse.Namespace) -> None:
    """Print a signed bearer token."""
    print(auth.mint(dev_jwt_secret(settings), args.org, args.perm or auth.ALL_PERMISSIONS, args.ttl,
                    audience=settings.jwt_audience, issuer=settings.jwt_issuer))


def _bootstrap(settings: Settings) -> str:
    bootstrap = settings.kafka_bootstrap or _stack(settings).get("kafka", "")
    if not bootstrap:
        raise DispatcherError("set DISPATCHER_KAFKA_BOOTSTRAP (or start `make run` first)")
    return str(bootstrap)


async def _start(settings: Settings, client: Any, what: str) -> None:
    """Start an aiokafka client; a refusal (TLS, SASL, no broker) says what failed."""
    from dispatcher.kafka import unavailable

    try:
        await client.start()
    except Exception as exc:  # any failure to start: see kafka.unavailable()
        with contextlib.suppress(Exception):
            await client.stop()
        named = dataclasses.replace(settings, kafka_bootstrap=_bootstrap(settings))
        raise await unavailable(named, what, exc) from exc


def cmd_send(settings: Settings, args: argparse.Namespace) -> None:
    """Publish one command-created event, keyed by the device id."""
    from aiokafka import AIOKafkaProducer

    from dispatcher.kafka import client_security

    stack = _stack(settings)
    event = {
        "id": secrets.token_hex(12), "organization": args.org or stack.get("organization"),
        "aosEnterprise": args.enterprise or stack.get("enterprise"), "aosDevice": args.device,
        "mdmUser": None, "command": args.command, "params": json.loads(args.params),
        "duration": args.duration,
        "createdAt": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
    }

    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=_bootstrap(settings),
                                    **client_security(settings))
        await _start(settings, producer, "cannot start the producer")
        try:
            await producer.send_and_wait(settings.topic("commands.created"),
                                         json.dumps(event).encode(), key=args.device.encode())
        finally:
            await producer.stop()

    asyncio.run(send())
    print(json.dumps({k: v for k, v in event.items() if k != "params"}))


def cmd_watch(settings: Settings, args: argparse.Namespace) -> None:
    """Print status events until Ctrl-C."""
    from aiokafka import AIOKafkaConsumer

    from dispatcher.kafka import client_security

    async def watch() -> None:
        consumer = AIOKafkaConsumer(
            settings.topic("commands.status"), bootstrap_servers=_bootstrap(settings),
            **client_security(settings),
            auto_offset_reset="earliest" if args.from_beginning else "latest",
            enable_auto_commit=False)
        await _start(settings, consumer, "cannot start the consumer")
        try:
            async for record in consumer:
                event = json.loads(record.value)
                print(f"{event['at']}  {event['id']}  {event['command']:<15} "
                      f"{event.get('previousStatus') or '-':>8} -> {event['status']}"
                      + (f"  ({event['errorType']})" if event.get("errorType") else ""),
                      flush=True)
        finally:
            await consumer.stop()

    asyncio.run(watch())


def cmd_schemas(settings: Settings, args: argparse.Namespace) -> None:
    """Print or write the JSON Schema of every topic's payload."""
    from dispatcher.schemas import render_all

    rendered = render_all()
    if not args.write:
        for name, text in rendered.items():
            print(f"== {name}\n{text}")
        return
    out = Path("schemas")
    out.mkdir(exist_ok=True)
    for name, text in rendered.items():
        (out / name).write_text(text)
    print(f"wrote {len(rendered)} schemas into {out}/")


if __name__ == "__main__":
    main()
