"""Shared fixtures: every behaviour runs on each storage backend.

PostgreSQL tests need ``SAGADSL_TEST_POSTGRES_URL`` (e.g.
``postgresql+psycopg://root@127.0.0.1/test``). Without it they are skipped
locally, and fail in CI (``CI=true``), where they must run.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import create_engine, text

from sagadsl import SagaEngine
from sagadsl.storage import InMemoryStorage, SqlStorage, Storage
from sagadsl.testing import FakeClock

POSTGRES_URL = os.environ.get("SAGADSL_TEST_POSTGRES_URL")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
NO_POSTGRES = ("PostgreSQL tests need SAGADSL_TEST_POSTGRES_URL, e.g. "
               "SAGADSL_TEST_POSTGRES_URL=postgresql+psycopg://root@127.0.0.1/test pytest")


def pytest_report_header(config: pytest.Config) -> str:
    if POSTGRES_URL:
        return f"sagadsl: PostgreSQL tests run against {POSTGRES_URL}"
    return f"sagadsl: *** PostgreSQL tests are SKIPPED *** {NO_POSTGRES}"


def require_postgres() -> str:
    """The test PostgreSQL URL; skip (locally) or fail (in CI) without one."""
    if POSTGRES_URL:
        return POSTGRES_URL
    if IN_CI:
        pytest.fail(NO_POSTGRES)
    pytest.skip(NO_POSTGRES)


@pytest.fixture
def pg_schema() -> Iterator[tuple[str, str]]:
    """A fresh PostgreSQL schema for one test: ``(url, schema)``; dropped afterwards."""
    url = require_postgres()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield url, schema
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite database file for one test."""
    return f"sqlite:///{tmp_path / 'sagas.db'}"


def make_storage(kind: str, request: pytest.FixtureRequest) -> Storage:
    if kind == "memory":
        return InMemoryStorage()
    if kind == "sqlite":
        return SqlStorage(request.getfixturevalue("sqlite_url"))
    url, schema = request.getfixturevalue("pg_schema")
    return SqlStorage(url, schema=schema, auto_migrate=True)


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    """The storage backend under test."""
    return str(request.param)


@pytest.fixture
def storage(backend: str, request: pytest.FixtureRequest) -> Iterator[Storage]:
    """A fresh, empty storage of each kind."""
    store = make_storage(backend, request)
    yield store
    store.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def engine(storage: Storage, clock: FakeClock) -> Iterator[SagaEngine]:
    """An engine on each backend, with a fake clock."""
    eng = SagaEngine(storage, clock=clock)
    yield eng
    eng.close()


@pytest.fixture(params=["sqlite", "postgres"])
def durable_backend(request: pytest.FixtureRequest) -> str:
    """Backends that survive a process crash."""
    return str(request.param)


@pytest.fixture
def durable_url(durable_backend: str, request: pytest.FixtureRequest) -> Iterator[tuple[str, str | None]]:
    """``(url, schema)`` of a fresh durable database with sagadsl's tables installed."""
    if durable_backend == "sqlite":
        url = request.getfixturevalue("sqlite_url")
        SqlStorage(url).close()
        yield url, None
    else:
        url, schema = request.getfixturevalue("pg_schema")
        SqlStorage(url, schema=schema, auto_migrate=True).close()
        yield url, schema
