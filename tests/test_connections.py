"""Connecting to the database (DESIGN §2.11, §3, §4).

- A database that cannot be reached, or that dies under a running engine, is a
  ``StorageError`` naming the masked URL, chained from the driver's error,
  never a raw SQLAlchemy/psycopg error, and never quoting SQL, parameters or
  a password. A missing schema is still ``SchemaOutOfDateError``.
- ``postgres://`` and ``postgresql://`` mean psycopg 3.
- Every PostgreSQL connection that sagadsl opens has TCP keepalives on both
  ends (the server's backend holds the saga's claim, so the server must
  notice a vanished client), without overriding what the user configured.
  An ``Engine`` the user passes in is left alone.
"""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from sagadsl import (
    Saga,
    SagaEngine,
    SagaError,
    SchemaOutOfDateError,
    SqlStorage,
    StorageError,
    WorkflowStatus,
    step,
)
from sagadsl.storage import QueryFilter
from sagadsl.storage import connect as connect_module
from sagadsl.storage.connect import (
    KEEPALIVES_COUNT,
    KEEPALIVES_IDLE,
    KEEPALIVES_INTERVAL,
    TCP_USER_TIMEOUT_MS,
    postgres_connect_args,
)

from .conftest import require_postgres

PASSWORD = "hunter2-secret"


@dataclass
class Ping:
    ping_id: str


class Pinging(Saga[Ping], name="tests.connections.pinging"):
    @step(idempotency_key="p-{ping_id}")
    def p(self) -> str:
        return "pong"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _with_password(url: str, **changes: Any) -> str:
    parsed = make_url(url).set(password=PASSWORD, **changes)
    return parsed.render_as_string(hide_password=False)


def _assert_clean(err: BaseException, *secrets: str) -> None:
    """A StorageError chained from the driver's error, quoting no SQL, parameter or password."""
    assert isinstance(err, StorageError) and isinstance(err, SagaError)
    assert isinstance(err.__cause__, SQLAlchemyError), repr(err.__cause__)
    message = str(err)
    for forbidden in ("SELECT", "UPDATE", "INSERT", "[SQL:", "[parameters:", PASSWORD, *secrets):
        assert forbidden not in message, f"{forbidden!r} in {message!r}"


class Forwarder:
    """A TCP relay from 127.0.0.1:<port> to the PostgreSQL server, that the test can kill."""

    def __init__(self, target: tuple[str, int]) -> None:
        self._target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.port = int(self._listener.getsockname()[1])
        self._open = True
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while self._open:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            try:
                server = socket.create_connection(self._target, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def kill(self) -> None:
        """Stop listening and cut every relayed connection: the server is gone."""
        self._open = False
        self._thread.join(5)
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()


@pytest.fixture
def installed(pg_schema: tuple[str, str]) -> tuple[str, str]:
    url, schema = pg_schema
    SqlStorage(url, schema=schema, auto_migrate=True).close()
    return url, schema


# -- cannot connect ----------------------------------------------------------


@pytest.mark.postgres
def test_a_missing_database_is_a_storage_error_naming_the_masked_url() -> None:
    url = _with_password(require_postgres(), database="no_such_db_xyz")
    with pytest.raises(StorageError) as info:
        SagaEngine(url)
    _assert_clean(info.value)
    message = str(info.value)
    assert "could not connect" in message
    assert "no_such_db_xyz" in message
    assert "***" in message  # the URL is named, with its password masked
    assert isinstance(info.value.__cause__, DBAPIError)
    assert "psycopg" in type(info.value.__cause__.orig).__module__


@pytest.mark.postgres
def test_a_refused_port_is_a_storage_error() -> None:
    port = _free_port()
    url = _with_password(require_postgres(), port=port)
    with pytest.raises(StorageError, match="could not connect") as info:
        SagaEngine(url)
    _assert_clean(info.value)
    assert f":{port}/" in str(info.value)


def test_an_unopenable_sqlite_file_is_a_storage_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="could not connect") as info:
        SagaEngine(f"sqlite:///{tmp_path / 'no' / 'such' / 'dir' / 'sagas.db'}")
    _assert_clean(info.value)


def test_a_url_of_no_known_database_is_a_storage_error_without_its_password() -> None:
    with pytest.raises(StorageError) as info:
        SqlStorage(f"nosuchdb://app:{PASSWORD}@db.example/app")
    assert PASSWORD not in str(info.value)
    assert "nosuchdb://app:***@db.example/app" in str(info.value)


@pytest.mark.postgres
def test_a_missing_schema_is_still_schema_out_of_date(pg_schema: tuple[str, str]) -> None:
    url, schema = pg_schema  # exists, but nothing is installed in it
    with pytest.raises(SchemaOutOfDateError, match="db upgrade"):
        SagaEngine(url, schema=schema)


# -- the server dies under a running engine ---------------------------------


@pytest.fixture
def doomed(installed: tuple[str, str]) -> Iterator[tuple[SqlStorage, Forwarder, str]]:
    """A storage reaching PostgreSQL through a relay that the test then kills."""
    url, schema = installed
    parsed = make_url(url)
    relay = Forwarder((parsed.host or "127.0.0.1", parsed.port or 5432))
    try:
        storage = SqlStorage(_with_password(url, port=relay.port), schema=schema)
        try:
            assert storage.get("dl") is None  # a pooled connection, which the kill leaves stale
            relay.kill()
            yield storage, relay, schema
        finally:
            storage.close()
    finally:
        relay.kill()


@pytest.mark.postgres
@pytest.mark.parametrize("call", ["get", "query", "count", "count_by_status", "retry"])
def test_every_read_and_retry_on_a_dead_server_is_a_storage_error(
        doomed: tuple[SqlStorage, Forwarder, str], call: str) -> None:
    storage, _, _ = doomed
    secret_name = "secret-saga-name-xyz"
    calls = {
        "get": lambda: storage.get("dl"),
        "query": lambda: storage.query(QueryFilter(saga_name=secret_name)),
        "count": lambda: storage.count([WorkflowStatus.DEAD_LETTER]),
        "count_by_status": storage.count_by_status,
        "retry": lambda: storage.retry("dl", datetime.now(timezone.utc), 10),
    }
    with pytest.raises(StorageError) as info:
        calls[call]()
    _assert_clean(info.value, secret_name)
    assert str(make_url(storage.engine.url).port) in str(info.value)
    assert "could not connect" in str(info.value) or "lost the connection" in str(info.value)


@pytest.mark.postgres
def test_engine_reads_on_a_dead_server_are_storage_errors(
        doomed: tuple[SqlStorage, Forwarder, str]) -> None:
    storage, _, _ = doomed
    engine = SagaEngine(storage)
    try:
        for call in (lambda: engine.get("dl"), lambda: engine.count(), lambda: engine.retry("dl")):
            with pytest.raises(StorageError) as info:
                call()
            _assert_clean(info.value)
    finally:
        engine.close()


@pytest.mark.postgres
def test_a_failing_statement_is_a_storage_error_without_its_sql_or_parameters(
        installed: tuple[str, str]) -> None:
    url, schema = installed
    storage = SqlStorage(url, schema=schema)
    try:
        admin = create_engine(url)
        with admin.begin() as conn:
            conn.execute(text(f'DROP TABLE "{schema}".sagadsl_steps'))
            conn.execute(text(f'DROP TABLE "{schema}".sagadsl_workflows CASCADE'))
        admin.dispose()
        secret_name = "secret-saga-name-xyz"
        with pytest.raises(StorageError) as info:
            storage.query(QueryFilter(saga_name=secret_name, limit=5))
        _assert_clean(info.value, secret_name)
        assert "querying sagas" in str(info.value) and "sagadsl_workflows" in str(info.value)
        with pytest.raises(StorageError) as got:
            storage.get("some-saga-id")
        _assert_clean(got.value)
        assert "UndefinedTable" in str(got.value) and "some-saga-id" in str(got.value)
    finally:
        storage.close()


# -- URLs ---------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.parametrize("scheme", ["postgres", "postgresql", "postgresql+psycopg2"])
def test_postgres_and_postgresql_urls_mean_psycopg_3(installed: tuple[str, str], scheme: str) -> None:
    url, schema = installed
    plain = make_url(url).set(drivername=scheme).render_as_string(hide_password=False)
    engine = SagaEngine(plain, schema=schema)
    try:
        assert isinstance(engine.storage, SqlStorage)
        assert engine.storage.engine.url.drivername == "postgresql+psycopg"
        result = engine.run(Pinging, Ping(scheme), saga_id=f"ping-{scheme}", idempotency_key="k")
        assert result.results == {"p": "pong"}
    finally:
        engine.close()


# -- keepalives ------------------------------------------------------------------


def _client_socket_options(dbapi_conn: Any) -> dict[str, int]:
    sock = socket.socket(fileno=dbapi_conn.pgconn.socket)  # the libpq socket itself: do not close it
    try:
        return {
            "keepalive": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            "idle": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
            "interval": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
            "count": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
            "user_timeout": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
        }
    finally:
        sock.detach()


def _server_settings(conn: Any) -> dict[str, str]:
    rows = conn.execute(text(
        "SELECT name, setting FROM pg_settings WHERE name IN ('tcp_keepalives_idle', "
        "'tcp_keepalives_interval', 'tcp_keepalives_count', 'tcp_user_timeout', 'statement_timeout')"))
    return {name: setting for name, setting in rows}


def _probe(engine: Engine) -> tuple[dict[str, int], dict[str, str]]:
    with engine.connect() as conn:
        dbapi = conn.connection.dbapi_connection
        return _client_socket_options(dbapi), _server_settings(conn)


@pytest.mark.postgres
def test_every_postgresql_connection_has_keepalives_on_both_ends(installed: tuple[str, str]) -> None:
    url, schema = installed
    storage = SqlStorage(url, schema=schema)
    try:
        client, server = _probe(storage.engine)
    finally:
        storage.close()
    assert client == {"keepalive": 1, "idle": KEEPALIVES_IDLE, "interval": KEEPALIVES_INTERVAL,
                      "count": KEEPALIVES_COUNT, "user_timeout": TCP_USER_TIMEOUT_MS}
    # The server's backend holds the claim: it must notice a vanished client itself.
    assert server["tcp_keepalives_idle"] == str(KEEPALIVES_IDLE)
    assert server["tcp_keepalives_interval"] == str(KEEPALIVES_INTERVAL)
    assert server["tcp_keepalives_count"] == str(KEEPALIVES_COUNT)
    assert server["tcp_user_timeout"] == str(TCP_USER_TIMEOUT_MS)
    assert KEEPALIVES_IDLE + KEEPALIVES_INTERVAL * KEEPALIVES_COUNT <= 40
    assert TCP_USER_TIMEOUT_MS <= 40_000


@pytest.mark.postgres
def test_keepalive_settings_in_the_url_are_not_overridden(installed: tuple[str, str]) -> None:
    url, schema = installed
    options = "-c tcp_keepalives_idle=7 -c statement_timeout=4321"
    custom = make_url(url).update_query_dict({"keepalives_idle": "42", "options": options})
    storage = SqlStorage(custom.render_as_string(hide_password=False), schema=schema)
    try:
        client, server = _probe(storage.engine)
    finally:
        storage.close()
    assert client["idle"] == 42
    assert client["interval"] == KEEPALIVES_INTERVAL  # the rest are still sagadsl's
    assert server["tcp_keepalives_idle"] == "7"
    assert server["statement_timeout"] == "4321"
    assert server["tcp_keepalives_interval"] == str(KEEPALIVES_INTERVAL)
    assert server["tcp_user_timeout"] == str(TCP_USER_TIMEOUT_MS)


def test_connect_args_and_environment_are_not_overridden(monkeypatch: pytest.MonkeyPatch) -> None:
    url = make_url("postgresql+psycopg://app@db.example/app")
    monkeypatch.delenv("PGOPTIONS", raising=False)
    monkeypatch.delenv("PGCONNECT_TIMEOUT", raising=False)
    args = postgres_connect_args(url, {"keepalives_count": 9, "options": "--tcp_user_timeout=1000",
                                       "connect_timeout": 3})
    assert args["keepalives_count"] == 9 and args["connect_timeout"] == 3
    assert args["keepalives_idle"] == KEEPALIVES_IDLE
    assert args["options"].startswith("--tcp_user_timeout=1000 ")
    assert "-c tcp_user_timeout=" not in args["options"]
    assert f"-c tcp_keepalives_idle={KEEPALIVES_IDLE}" in args["options"]
    # libpq reads PGOPTIONS only when no options are passed: they are kept.
    monkeypatch.setenv("PGOPTIONS", "-c search_path=app")
    monkeypatch.setenv("PGCONNECT_TIMEOUT", "2")
    args = postgres_connect_args(url)
    assert args["options"].startswith("-c search_path=app -c tcp_keepalives_idle=")
    assert "connect_timeout" not in args


@pytest.mark.postgres
def test_an_engine_passed_in_is_left_alone(installed: tuple[str, str]) -> None:
    url, schema = installed
    own = create_engine(url, pool_size=1, max_overflow=0)
    try:
        engine = SagaEngine(own, schema=schema)
        try:
            assert isinstance(engine.storage, SqlStorage)
            assert engine.storage.engine.url is own.url
            result = engine.run(Pinging, Ping("own"), saga_id="ping-own", idempotency_key="k")
            assert result.results == {"p": "pong"}
            client, server = _probe(own)
        finally:
            engine.close()
    finally:
        own.dispose()
    # Neither side got sagadsl's keepalives: the user's engine is the user's.
    assert client["idle"] != KEEPALIVES_IDLE or client["keepalive"] == 0
    assert server["tcp_keepalives_idle"] != str(KEEPALIVES_IDLE)


@pytest.mark.postgres
def test_an_engine_passed_in_is_not_disposed_when_the_schema_is_missing() -> None:
    url = require_postgres()
    own = create_engine(url)
    schema = f"t_{uuid.uuid4().hex[:12]}"  # does not exist
    try:
        with pytest.raises(SchemaOutOfDateError):
            SqlStorage(own, schema=schema)
        with own.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar_one() == 1
    finally:
        own.dispose()


def test_the_keepalive_numbers_release_a_claim_well_within_60_seconds() -> None:
    worst = connect_module.KEEPALIVES_IDLE + connect_module.KEEPALIVES_INTERVAL * connect_module.KEEPALIVES_COUNT
    assert worst <= 30 and connect_module.TCP_USER_TIMEOUT_MS <= 30_000
