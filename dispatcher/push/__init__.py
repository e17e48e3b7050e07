"""Push: claim due pushes from PostgreSQL, send them through the providers, record answers.

Delivery is driven by PostgreSQL, not memory: claims take due pushes with a lease, at
most as many as there are free request slots; each goes through its device's provider
and its answer is written guarded by its claim. A crash repeats at most the requests in
flight. The modules, by role:

- ``providers.py``: the :class:`Provider` protocol, Pushy and the log provider, what
  Pushy's answers mean; ``fcm.py``: FCM HTTP v1 (access tokens, its answers);
  ``factory.py``: the providers ``DISPATCHER_PUSH_PROVIDER`` names.
- ``payload.py``: the data a device gets, its TTL, its secrets (sealed or in clear).
- ``pusher.py``: :class:`Pusher`, the claims and their supervision.
- ``limits.py``: request slots, the rate limit, Retry-After pauses, the claim gate.
- ``lanes.py``: one lane per provider (slots, health, pause), so one's outage spares
  the others.
- ``delivery.py``: one claimed push through its lane, and what the answer means.
- ``answers.py``: the answer recorder (batched, guarded by the claim, supervised).

Every module logs as ``dispatcher.push``.
"""

from dispatcher.push.answers import repeat_bound
from dispatcher.push.factory import make_providers
from dispatcher.push.providers import LogProvider, Provider, PushRequest, PushyProvider
from dispatcher.push.pusher import Pusher

__all__ = ["LogProvider", "Provider", "PushRequest", "Pusher", "PushyProvider",
           "make_providers", "repeat_bound"]
