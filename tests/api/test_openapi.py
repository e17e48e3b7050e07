"""The OpenAPI document: served == checked in, and a schemathesis run finds no 5xx."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import hypothesis
import hypothesis.errors
import pytest
import schemathesis
from hypothesis import HealthCheck, given
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.generation import GenerationMode

from dispatcher.auth import mint
from dispatcher.config import Settings
from dispatcher.runtime import Runtime
from tests.support.api import Register, Token
from tests.support.events import ENTERPRISE, ORG

CHECKED_IN = Path(__file__).resolve().parents[2] / "schemas" / "openapi.json"
EXAMPLES = 15
# schemathesis' own strategies draw from `random`, which hypothesis flags as deprecated
pytestmark = pytest.mark.filterwarnings(
    "ignore::hypothesis.errors.HypothesisDeprecationWarning")


async def test_served_document_is_the_checked_in_one(
        service: Runtime, http: aiohttp.ClientSession) -> None:
    async with http.get("/openapi.json") as resp:
        assert resp.status == 200
        served = await resp.json()
    assert served == json.loads(CHECKED_IN.read_text()), (
        "schemas/openapi.json is stale: regenerate it with "
        "`python -m dispatcher.http.openapi > schemas/openapi.json`")
    assert served["openapi"].startswith("3.")
    assert "/v1/enterprises/{enterpriseId}/devices/{deviceId}:issueCommand" in served["paths"]


def _fuzz(schema_doc: dict[str, Any], base_url: str, auth: str,
          fixed: dict[str, str]) -> tuple[int, dict[int, int]]:
    """Run every operation, positive and negative, with free and with real path ids."""
    schema = schemathesis.openapi.from_dict(schema_doc)
    headers = {"Authorization": auth}
    calls = 0
    statuses: dict[int, int] = {}
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operation = result.ok()
        names = {p.name for p in operation.path_parameters}
        real = {k: v for k, v in fixed.items() if k in names}
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            variants: list[dict[str, str]] = [{}] + ([real] if real else [])
            for path_parameters in variants:
                strategy = operation.as_strategy(mode, path_parameters=path_parameters or None)

                @hypothesis.settings(max_examples=EXAMPLES, deadline=None, database=None,
                                     derandomize=True,
                                     suppress_health_check=list(HealthCheck),
                                     phases=[hypothesis.Phase.generate])
                @given(case=strategy)
                def run(case: Any) -> None:
                    nonlocal calls
                    case.headers = {**(case.headers or {}), **headers}
                    response = case.call(base_url=base_url, timeout=10)
                    calls += 1
                    statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                    case.validate_response(response, checks=[not_a_server_error])

                try:
                    run()
                except hypothesis.errors.Unsatisfiable:
                    continue  # e.g. no negative input exists for an operation without inputs
    return calls, statuses


async def test_schemathesis_finds_no_server_error(
        service: Runtime, http: aiohttp.ClientSession, token: Token, register: Register,
        settings: Settings) -> None:
    device = await register(mdm_user=None)
    async with http.get("/openapi.json") as resp:
        doc = await resp.json()
    auth = "Bearer " + mint(settings.jwt_secret, [ORG])
    fixed = {"organizationId": ORG, "aosDeviceId": device, "enterpriseId": ENTERPRISE,
             "deviceId": device}
    started = time.monotonic()
    calls, statuses = await asyncio.to_thread(_fuzz, doc, service.http_url, auth, fixed)
    elapsed = time.monotonic() - started
    print(f"schemathesis: {calls} requests in {elapsed:.1f}s, statuses {sorted(statuses.items())}")
    assert calls > 100
    assert not [s for s in statuses if s >= 500]
    assert 200 in statuses
