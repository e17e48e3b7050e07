"""The push providers the settings name, built once at start (``app.py``)."""

from __future__ import annotations

from dispatcher.config import Settings
from dispatcher.push.providers import LogProvider, Provider, PushyProvider


def make_providers(settings: Settings) -> list[Provider]:
    """The providers ``DISPATCHER_PUSH_PROVIDER`` names, the default first.

    A request never outlives its lease: past the lease another claim could send the
    same push while the first is still in flight, so the request timeout is capped.
    """
    timeout_s = min(settings.push_timeout_s, settings.push_lease_s * 0.8)
    out: list[Provider] = []
    for name in settings.push_providers:
        if name == "log":
            out.append(LogProvider())
        elif name == "pushy":
            out.append(PushyProvider(settings.pushy_api_url, settings.pushy_api_key,
                                     timeout_s, settings.push_concurrency))
        else:
            out.append(_fcm(settings, timeout_s))
    return out


def _fcm(settings: Settings, timeout_s: float) -> Provider:
    # Imported here: google-auth and requests load only when FCM is configured.
    from dispatcher.push.fcm import AccessTokens, FcmProvider

    tokens = AccessTokens(settings.fcm_credentials_file, timeout_s)
    return FcmProvider(settings.fcm_api_url, tokens, timeout_s, settings.push_concurrency)
