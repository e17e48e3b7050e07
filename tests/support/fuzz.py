"""Malformed inputs for the poison tests: hypothesis strategies and a corpus drawn from them.

``values(base)`` covers arbitrary bytes, arbitrary JSON trees, deep nesting (up to 20,000
levels of arrays or objects), huge and non-finite numbers, invalid UTF-8, lone
surrogates, NUL, and ``base`` (a valid event) damaged: one field replaced by a random
tree, a bad token spliced in, a key given twice, or a deep tree where a value was.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st


def nested(depth: int, kind: str = "[") -> bytes:
    """``depth`` levels of arrays (``[``) or objects (``{``), closed."""
    if kind == "[":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**80), max_value=10**80),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=30))
trees = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=30)
tokens = st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e999", b"9" * 5000,
                          b'"\\ud800"', b'"\xed\xa0\x80"', b"\xff\xfe", b"[" * 3000,
                          b'{"a":' * 2000, b'"\\', b"\x00", b'"nul\\u0000"'])


@st.composite
def damaged(draw: st.DrawFn, base: dict[str, Any]) -> bytes:
    """``base`` with one field replaced, a token spliced in, a key doubled, or made deep."""
    event = dict(base)
    field = draw(st.sampled_from(sorted(event)))
    how = draw(st.sampled_from(["tree", "token", "duplicate", "deep"]))
    if how == "tree":
        event[field] = draw(trees)
        return json.dumps(event).encode()
    if how == "deep":
        event[field] = "PLACEHOLDER"
        depth = draw(st.integers(min_value=30, max_value=5000))
        kind = draw(st.sampled_from("[{"))
        return json.dumps(event).encode().replace(b'"PLACEHOLDER"', nested(depth, kind))
    rest = json.dumps({k: v for k, v in event.items() if k != field})
    token = json.dumps(base[field]).encode() if how == "duplicate" else draw(tokens)
    if how == "duplicate":
        rest = json.dumps(event)
    return rest[:-1].encode() + b', "' + field.encode() + b'": ' + token + b"}"


def values(base: dict[str, Any]) -> st.SearchStrategy[bytes]:
    """Any malformed (or, by chance, valid) value of the topic ``base`` belongs to."""
    return st.one_of(st.binary(max_size=300), trees.map(lambda t: json.dumps(t).encode()),
                     tokens, damaged(base), damaged(base),
                     st.integers(min_value=33, max_value=20000).map(nested),
                     st.integers(min_value=33, max_value=20000).map(lambda d: nested(d, "{")))


def corpus(strategy: st.SearchStrategy[bytes], count: int) -> list[bytes]:
    """``count`` values drawn from ``strategy`` (random each run; failures print them)."""
    drawn: list[bytes] = []

    @settings(max_examples=count, database=None, phases=[Phase.generate], deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def draw(value: bytes) -> None:
        drawn.append(value)

    draw()
    return drawn
