"""JSON from untrusted bytes, with a bound on nesting that nothing downstream can exceed.

Python's ``json.loads`` recurses once per level of nesting: ten kilobytes of ``[[[[...``
raise :class:`RecursionError`, not :class:`ValueError`, and so does every function that
walks the result (validation, redaction, ``json.dumps``). One such record must not stop a
partition, so every untrusted value (Kafka records, HTTP bodies, cursors) is parsed here:
its depth is measured on the bytes before it is parsed, in linear time and without
recursion, and a value nested deeper than :data:`MAX_DEPTH` is refused with
:class:`TooDeep`. Every value this module returns can be walked recursively.

The depth scan costs nothing for ordinary values: a value with no more brackets than
:data:`MAX_DEPTH` cannot be nested deeper, and counting brackets is a C loop. Only a
value with many brackets is scanned token by token (strings skipped, so a bracket inside
a string does not count).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

MAX_DEPTH = 32
"""Deepest nesting of objects and arrays accepted (the seeds' documents need 4)."""

# A JSON string (possessive, and ending at the end of the input when unterminated, so a
# failed match never rescans: linear in the input) or one bracket.
_TOKENS = re.compile(rb'"(?:[^"\\]++|\\[\s\S])*+(?:"|\\?\Z)|[\[\]{}]')
_OPEN = frozenset(b"[{")
# where a lone surrogate could come from: an escape in U+D800..U+DFFF, or its UTF-8 form
# (Python's json decodes bytes with "surrogatepass")
_SURROGATE_HINT = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")


class TooDeep(ValueError):
    """The value nests objects and arrays deeper than the bound."""


class NotJson(ValueError):
    """The value is not strict JSON (RFC 8259): bad syntax, not UTF-8, NaN, Infinity."""


class DuplicateKey(NotJson):
    """An object names the same key twice.

    Refused rather than "last one wins": a gateway that validated the first ``command``
    and a dispatcher that acted on the second would disagree about what was sent.
    """


def check_depth(raw: bytes, max_depth: int = MAX_DEPTH) -> None:
    """Raise :class:`TooDeep` when ``raw`` nests deeper than ``max_depth``."""
    if raw.count(b"[") + raw.count(b"{") <= max_depth:
        return
    level = 0
    for match in _TOKENS.finditer(raw):
        token = match.group()
        if len(token) != 1 or token[0] == 0x22:
            continue
        if token[0] in _OPEN:
            level += 1
            if level > max_depth:
                raise TooDeep(f"nested deeper than {max_depth} levels")
        else:
            level -= 1


def loads(raw: bytes | str, max_depth: int = MAX_DEPTH) -> Any:
    """Strict JSON with bounded nesting; raises :class:`TooDeep` or :class:`NotJson`.

    Strict: NaN and infinities (which Python accepts and JSON, PostgreSQL's ``jsonb`` and
    every other consumer of our topics refuse) and numbers out of a double's range are
    errors, as are integers longer than Python's 4,300 digits, lone UTF-16 surrogates
    (which no UTF-8 consumer, PostgreSQL included, can store) and duplicate keys
    (:class:`DuplicateKey`).
    """
    data = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else raw
    check_depth(data, max_depth)
    try:
        value = json.loads(data, parse_float=_finite, parse_constant=_refuse,
                           object_pairs_hook=_unique)
        if _SURROGATE_HINT.search(data):
            json.dumps(value, ensure_ascii=False).encode()  # a lone one cannot be encoded
        return value
    except RecursionError as exc:  # unreachable after the scan; kept as the last line
        raise TooDeep(f"nested deeper than {max_depth} levels") from exc
    except DuplicateKey:
        raise
    except ValueError as exc:  # JSONDecodeError, Unicode errors, NaN, huge integers
        raise NotJson(str(exc)[:300]) from exc


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


def _refuse(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKey(f"the key {key[:40]!r} appears twice in one object")
            seen.add(key)
    return obj
