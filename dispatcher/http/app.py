"""The aiohttp application of the dispatcher: its error middleware and every route.

Routes: ``/healthz``, ``/readyz`` and ``/metrics`` (:mod:`.health`), seed 000
(:mod:`.aosp`), campaigns (:mod:`.campaigns`), seed 001 (:mod:`.amapi`) and
``GET /openapi.json`` (:mod:`.openapi`).
A middleware renders every error, including unknown paths, wrong methods and bodies
that are too large, in the envelope of the request's dialect
(:func:`~dispatcher.http.common.error_response`); an unexpected exception is logged and
answers 500 in the envelope (the tests show none happens).

The layers: this module imports the dialects and registers them; the dialects import
:mod:`.common` (and :mod:`.commands`), which import neither dialect.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from dispatcher import auth
from dispatcher.exceptions import StoreUnavailable
from dispatcher.http import amapi, aosp, campaigns, health, openapi
from dispatcher.http.campaigns import CAMPAIGN_BODY_BYTES
from dispatcher.http.common import RUNTIME, ApiError, Code, error_response
from dispatcher.runtime import Runtime

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def build_app(rt: Runtime) -> web.Application:
    """The aiohttp application of the dispatcher, reading the live components of ``rt``."""
    app = web.Application(client_max_size=CAMPAIGN_BODY_BYTES)
    app[RUNTIME] = rt
    app.middlewares.append(error_middleware)
    health.register(app)
    aosp.register(app)
    campaigns.register(app)
    amapi.register(app)
    app.router.add_get("/openapi.json", openapi.serve)
    return app


def _from_http(exc: web.HTTPException) -> ApiError:
    if exc.status == 404:
        return ApiError(404, Code.ROUTE_NOT_FOUND, "Route not found")
    if exc.status == 405:
        return ApiError(405, Code.METHOD_NOT_ALLOWED, "Method not allowed")
    if exc.status == 413:
        return ApiError(413, Code.BODY_TOO_LARGE, "Request body too large")
    return ApiError(exc.status, Code.INVALID_REQUEST, exc.reason or "Invalid request")


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error in the right envelope; nothing escapes as a bare 500."""
    try:
        return await handler(request)
    except ApiError as err:
        return error_response(request, err)
    except auth.AuthError as err:
        return error_response(request, _from_auth(err))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(request, _from_http(exc))
    except StoreUnavailable as exc:
        log.warning("store unavailable during a request", extra={"error": str(exc)[:200]})
        return error_response(request, ApiError(503, Code.UNAVAILABLE, "Service unavailable"))
    except Exception:
        log.exception("unexpected error answering a request",
                      extra={"method": request.method, "path": request.path[:200]})
        return error_response(request, ApiError(500, Code.INTERNAL, "Internal error"))



def _from_auth(err: auth.AuthError) -> ApiError:
    if err.kind == "missing":
        return ApiError(401, Code.NO_AUTH_TOKEN, "No auth token")
    if err.kind == "invalid":
        return ApiError(401, Code.INVALID_TOKEN, "Invalid Token")
    return ApiError(403, Code.PERMISSION_DENIED, err.message)

