"""The dispatcher's development tools, kept apart from the service.

Embedded Kafka-protocol broker and PostgreSQL (``devstack``), a fake Pushy (``fakepushy``),
a simulated device fleet (``simulator``) and what `dispatcher dev` / `make run` start
(``dev``). Installed by the ``devstack`` extra of ``dispatcher`` (the ``dispatcher-devtools``
distribution built from ``devtools/``); the service package never imports it, and the
production image does not carry it.
"""
