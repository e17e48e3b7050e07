"""Seed 001 through Google's own client: google-api-python-client with the androidmanagement
v1 discovery document it ships, pointed at the dispatcher, used exactly as against Google.

The client is synchronous (httplib2); each call runs in a thread while the service runs
on the test's event loop.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import google_auth_httplib2
import httplib2
import pytest
from google.oauth2.credentials import Credentials
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError

from dispatcher.auth import PERMISSIONS, mint
from dispatcher.config import Settings
from dispatcher.runtime import Runtime
from tests.support.events import ENTERPRISE, ORG, hex24

COMMAND_TYPE = "type.googleapis.com/google.android.devicemanagement.v1.Command"


@contextmanager
def google(service: Runtime, settings: Settings,
           perms: tuple[str, ...] = PERMISSIONS) -> Iterator[Any]:
    """The androidmanagement v1 client of Google's library, against the dispatcher."""
    credentials = Credentials(token=mint(settings.jwt_secret, [ORG], perms, ttl_s=3600))
    http = google_auth_httplib2.AuthorizedHttp(credentials, http=httplib2.Http(timeout=10))
    with build("androidmanagement", "v1", http=http, static_discovery=True,
               client_options={"api_endpoint": service.http_url + "/"}) as client:
        yield client


async def run(request: Any) -> Any:
    """Execute a request of the (blocking) client off the event loop."""
    return await asyncio.to_thread(request.execute)


def google_error(err: HttpError) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(err.content)["error"]
    return body


async def test_issue_get_list_and_cancel_through_googles_client(
        service: Runtime, settings: Settings, register: Callable[..., Any]) -> None:
    user = hex24()
    device = await register(mdm_user=user, push_token=None)
    name = f"enterprises/{ENTERPRISE}/devices/{device}"
    with google(service, settings) as client:
        await _issue_get_list_cancel(client, name, user)


async def _issue_get_list_cancel(client: Any, name: str, user: str) -> None:
    devices = client.enterprises().devices()
    operations = devices.operations()

    op = await run(devices.issueCommand(name=name, body={"type": "LOCK", "duration": "3.5s"}))
    assert op["name"].startswith(name + "/operations/")
    meta = op["metadata"]
    assert (meta["@type"], meta["type"], meta["duration"]) == (COMMAND_TYPE, "LOCK", "3.5s")
    assert meta["userName"] == f"enterprises/{ENTERPRISE}/users/{user}"
    assert op["done"] is False
    assert await run(operations.get(name=op["name"])) == op

    secret = "Pa55-" + hex24()
    reset = await run(devices.issueCommand(name=name, body={
        "type": "RESET_PASSWORD", "newPassword": secret, "resetPasswordFlags": ["LOCK_NOW"]}))
    assert reset["metadata"]["resetPasswordFlags"] == ["LOCK_NOW"]
    clear = await run(devices.issueCommand(name=name, body={
        "clearAppsDataParams": {"packageNames": ["com.example.app"]}}))
    assert clear["metadata"]["type"] == "CLEAR_APP_DATA"

    listed: list[str] = []
    request = operations.list(name=name + "/operations", pageSize=1)
    while request is not None:
        page = await run(request)
        assert len(page["operations"]) == 1
        listed += [o["name"] for o in page["operations"]]
        request = operations.list_next(request, page)
    assert listed == [clear["name"], reset["name"], op["name"]]
    assert secret not in json.dumps(await run(operations.list(name=name + "/operations")))

    assert await run(operations.cancel(name=op["name"])) == {}
    cancelled = await run(operations.get(name=op["name"]))
    assert (cancelled["done"], cancelled["error"]["code"]) == (True, 1)
    with pytest.raises(HttpError) as again:
        await run(operations.cancel(name=op["name"]))
    assert again.value.resp.status == 400
    assert google_error(again.value)["status"] == "FAILED_PRECONDITION"


async def test_googles_client_sees_google_errors(
        service: Runtime, settings: Settings, register: Callable[..., Any]) -> None:
    device = await register()
    name = f"enterprises/{ENTERPRISE}/devices/{device}"
    with google(service, settings) as client, google(
            service, settings, perms=("mdm.aosp.command.read",)) as reader:
        await _errors(client.enterprises().devices(), reader.enterprises().devices(), name)


async def _errors(devices: Any, reader: Any, name: str) -> None:
    with pytest.raises(HttpError) as bad:
        await run(devices.issueCommand(name=name, body={"type": "COMMAND_TYPE_UNSPECIFIED"}))
    assert (bad.value.resp.status, google_error(bad.value)["status"]) == (400, "INVALID_ARGUMENT")
    with pytest.raises(HttpError) as missing:
        await run(devices.operations().get(name=f"{name}/operations/{hex24()}"))
    assert (missing.value.resp.status, google_error(missing.value)["status"]) == (
        404, "NOT_FOUND")
    with pytest.raises(HttpError) as denied:
        await run(reader.issueCommand(name=name, body={"type": "LOCK"}))
    assert google_error(denied.value)["status"] == "PERMISSION_DENIED"
