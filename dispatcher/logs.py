"""Structured logs: one JSON object a line, fields from ``extra=``, secrets redacted.

Every line carries ``time``, ``level``, ``logger`` and ``message``, then the record's
``extra`` fields (``command_id``, ``device_id``, ``organization`` on the command paths),
then ``exception`` when there is one. ``DISPATCHER_LOG_LEVEL`` sets the level.

Redaction is by construction, before anything is encoded: a field or nested key named
like a secret (``newPassword``, ``api_key``, ``pushToken``, anything with ``password``,
``secret`` or ``token`` in its name; ``params`` whole) is replaced, and every text -- the
message, string values, the exception and its traceback -- loses quoted secret values
(JSON or Python repr), ``key=value`` secrets, ``Bearer`` tokens and DSN passwords.

The formatter never raises: a value it cannot encode is shown by its type name, and a
record it cannot format at all still yields one JSON line saying so.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from dispatcher.secretbox import REDACTED, SECRET_KEYS, redact_text

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_SECRET_EXACT = {k.lower() for k in SECRET_KEYS} | {"authorization", "pin", "unlockpin", "params"}
_SECRET_PART = re.compile(r"password|passwd|passcode|secret|token|api_?key|credential", re.I)
_NAME = r"[\w-]*(?:password|passwd|passcode|secret|token|api_?key|credential)[\w-]*|pin|unlockpin"
_QUOTED = re.compile(
    rf"""(?P<head>(?P<kq>["']?)\b(?:{_NAME})\b(?P=kq)\s*[:=]\s*)"""
    r"""(?P<q>\\?["'])(?:(?!(?P=q)).)*?(?P=q)""",
    re.I,
)
_BARE = re.compile(rf"""(?P<head>\b(?:{_NAME})\b\s*[=:]\s*)(?P<v>[^\s"'&,;)}}\]\\]+)""", re.I)
_BEARER = re.compile(r"\b(Bearer\s+)[\w.~+/-]+=*", re.I)
_DSN = re.compile(r"(\b[a-z][\w+.-]*://[^\s:/@]+:)[^\s@/]+@", re.I)
_PLAIN = re.compile(r"[\w.@/+-]*")
"""Text no redaction pattern can match (no quote, ``=``, ``:`` or space): ids, topic and
logger names. Such values skip the patterns (the audit line is written per command)."""
_MAX_DEPTH = 8
_MAX_TEXT = 8000


@functools.lru_cache(maxsize=4096)
def is_secret_name(name: str) -> bool:
    """Whether a field or key of that name holds a secret."""
    lowered = name.lower()
    return lowered in _SECRET_EXACT or bool(_SECRET_PART.search(lowered))


def redact_line(text: str) -> str:
    """Text with every recognisable secret value replaced."""
    if _PLAIN.fullmatch(text):
        return text
    text = redact_text(text)
    text = _QUOTED.sub(lambda m: f"{m['head']}{m['q']}{REDACTED}{m['q']}", text)
    text = _BARE.sub(lambda m: m["head"] + REDACTED, text)
    text = _BEARER.sub(rf"\1{REDACTED}", text)
    return _DSN.sub(rf"\1{REDACTED}@", text)


def _safe_str(value: Any) -> str:
    try:
        return str(value)
    except Exception:  # a broken __str__ must not lose the line
        return f"<unprintable {type(value).__name__}>"


def clean(value: Any, depth: int = 0) -> Any:
    """A JSON-safe, redacted copy of a field value; never raises."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return redact_line(value[:_MAX_TEXT])
    if depth >= _MAX_DEPTH:
        return f"<{type(value).__name__} nested too deep>"
    if isinstance(value, Mapping):
        return {
            _safe_str(k): REDACTED if is_secret_name(_safe_str(k)) else clean(v, depth + 1)
            for k, v in list(value.items())
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [clean(v, depth + 1) for v in list(value)]
    if isinstance(value, bytes | bytearray | memoryview):
        return redact_line(bytes(value)[:_MAX_TEXT].decode("utf-8", "replace"))
    if isinstance(value, datetime):
        return value.isoformat()
    return redact_line(_safe_str(value)[:_MAX_TEXT])


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in list(vars(record).items()):
        if key in _STANDARD or key.startswith("_"):
            continue
        out[key] = REDACTED if is_secret_name(key) else clean(value)
    return out


def _message(record: logging.LogRecord) -> str:
    try:
        return redact_line(record.getMessage())
    except Exception:  # wrong %-arguments: show what there is
        return redact_line(f"{_safe_str(record.msg)} {clean(record.args)!r}")


def _time(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, the record's fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        try:
            return self._format(record)
        except Exception as exc:  # the last resort: still one valid, secret-free line
            return json.dumps({
                "time": datetime.now(UTC).isoformat(), "level": "ERROR",
                "logger": "dispatcher.logs", "message": "a log record could not be formatted",
                "record_logger": _safe_str(getattr(record, "name", "?")),
                "error": type(exc).__name__,
            })

    def _format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _time(record),
            "level": record.levelname,
            "logger": record.name,
            "message": _message(record),
        }
        for key, value in _fields(record).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exception"] = redact_line(self.formatException(record.exc_info))
        if record.stack_info:
            entry["stack"] = redact_line(self.formatStack(record.stack_info))
        return json.dumps(entry, ensure_ascii=False, default=_safe_str)


class TextFormatter(logging.Formatter):
    """Human-readable lines for `dispatcher dev`, fields appended as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        try:
            fields = " ".join(f"{k}={v}" for k, v in _fields(record).items())
            line = f"{record.levelname:<7} {record.name}: {_message(record)} {fields}".rstrip()
            if record.exc_info:
                line += "\n" + redact_line(self.formatException(record.exc_info))
            return line
        except Exception as exc:
            return f"ERROR   dispatcher.logs: a log record could not be formatted ({exc!r})"


def setup(level: str, fmt: str) -> None:
    """Route every logger to stderr in the chosen format, at ``level`` (DEBUG, INFO, ...)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiokafka", "kafka", "asyncio", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
