"""schemas/ holds the JSON Schema of every topic's payload, generated from the pydantic models."""

from __future__ import annotations

from pathlib import Path

from dispatcher.schemas import render_all

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def test_checked_in_schemas_match_the_models() -> None:
    rendered = render_all()
    for name, text in rendered.items():
        path = SCHEMAS / name
        assert path.exists(), f"{name} is missing: run `make schemas`"
        assert path.read_text() == text, f"{name} drifted from the models: run `make schemas`"


def test_every_topic_has_a_schema() -> None:
    names = set(render_all())
    for topic in ("commands.created", "devices", "device-acks", "commands.cancel",
                  "commands.status", "dead-letter"):
        assert f"mdm.{topic}.schema.json" in names
