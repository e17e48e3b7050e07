"""The fault suite's own fixtures: servers a module owns alone, and where logs go.

The harness (the dispatcher under fault, the device side, the checks) is
tests/support/faults.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dispatcher_dev.devstack import EmbeddedKafka, EmbeddedPostgres


@pytest.fixture(scope="module")
def own_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedKafka]:
    """A broker for this module alone (heavy traffic, or a proxy in front)."""
    kafka = EmbeddedKafka(log_path=tmp_path_factory.mktemp("fault-kafka") / "tansu.log")
    kafka.start()
    try:
        yield kafka
    finally:
        kafka.stop()


@pytest.fixture(scope="module")
def own_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL server for this module alone (restarted or proxied)."""
    pg = EmbeddedPostgres(tmp_path_factory.mktemp("fault-pg") / "data", fast=True)
    pg.start()
    try:
        yield pg
    finally:
        pg.stop()


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fault-logs")
