"""JSON Schemas of every topic's payload, generated from the pydantic models in ``events``."""

from __future__ import annotations

import json

from dispatcher.events import INPUT_MODELS, OUTPUT_MODELS


def render_all() -> dict[str, str]:
    """{file name: schema text} for every topic, e.g. ``mdm.commands.created.schema.json``."""
    out: dict[str, str] = {}
    for topic, model in {**INPUT_MODELS, **OUTPUT_MODELS}.items():
        schema = model.model_json_schema(mode="validation")
        schema["$id"] = f"mdm.{topic}.schema.json"
        schema["description"] = (model.__doc__ or "").strip()
        out[f"mdm.{topic}.schema.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out
