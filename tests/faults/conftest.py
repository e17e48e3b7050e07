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
    with EmbeddedKafka(log_path=tmp_path_factory.mktemp("fault-kafka") / "tansu.log") as kafka:
        yield kafka


@pytest.fixture(scope="module")
def own_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL server for this module alone (restarted or proxied)."""
    with EmbeddedPostgres(tmp_path_factory.mktemp("fault-pg") / "data", fast=True) as pg:
        yield pg


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fault-logs")
