"""Creating SQLAlchemy engines for sagadsl, and turning database failures into ``StorageError``.

- ``postgres://`` and ``postgresql://`` (no driver) mean psycopg 3
  (``postgresql+psycopg``), as does an explicit psycopg2 driver name.
- Every PostgreSQL connection gets TCP keepalives on both ends (see
  :data:`KEEPALIVES_IDLE`), so that the claim of an executor whose machine
  vanished is released in seconds, not after the kernel's two hours.
  Values the user put in the URL, in ``connect_args`` or in ``PGOPTIONS``
  are never overridden.
- SQLite connections use WAL, full sync and ``BEGIN IMMEDIATE``.
- An :class:`~sqlalchemy.engine.Engine` passed in by the user is never touched.

Errors: raw driver and SQLAlchemy errors never leave the library. They become
:class:`~sagadsl.errors.StorageError`, chained from the driver error, whose
message names the masked URL and the driver's primary message only: no SQL
text, no parameters (PostgreSQL's DETAIL lines can quote row values), no
password.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

from sqlalchemy import create_engine as _sa_create_engine
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError, StatementError

from ..errors import StorageError
from ..urls import mask_url, secrets_in

__all__ = [
    "CONNECT_TIMEOUT",
    "KEEPALIVES_COUNT",
    "KEEPALIVES_IDLE",
    "KEEPALIVES_INTERVAL",
    "TCP_USER_TIMEOUT_MS",
    "configure_sqlite",
    "connect",
    "create_engine",
    "normalize_url",
    "postgres_connect_args",
    "read",
    "storage_error",
    "translated",
]

T = TypeVar("T")

# -- TCP keepalives ---------------------------------------------------------
#
# A saga's claim on PostgreSQL is a session advisory lock held by the
# server-side backend of the executor's connection: it is released when that
# backend exits. If the executor's machine vanishes (power cut, network
# partition, a VM frozen for good: no FIN, no RST), the backend sits idle on
# a socket whose peer is gone, and with the kernel's defaults (keepalives off,
# or 2 hours idle + 9 x 75 s probes) the claim would stay held for hours and
# no worker could take the saga over. DESIGN §2.11 promises release within 60 s.
#
# So the SERVER must notice the dead client: every connection asks its backend,
# through the startup ``options``, for keepalives after KEEPALIVES_IDLE seconds
# of silence, every KEEPALIVES_INTERVAL seconds, given up after
# KEEPALIVES_COUNT unanswered probes: 10 + 4 x 5 = 30 s. TCP_USER_TIMEOUT_MS
# bounds the other case, data sent and never acknowledged (the backend was
# answering when the client vanished; keepalives do not run while data is in
# flight and retransmissions would otherwise go on for ~15 minutes); on Linux
# it also caps the keepalive probing itself, at the same 30 s. Counted from the
# cut rather than from the client's last answer, the backend is gone within
# about 35 s (a probe is sent at most every 5 s; tests/test_pg_vanished.py
# measured 34 s), which leaves a worker's next scan time to find the saga free.
# The same values are set on the client side (libpq keepalive parameters), so
# an executor whose server vanished stops waiting on a dead socket as well.
# Probes cost one empty packet per idle connection every 10 s.
#
# ``client_connection_check_interval`` (PostgreSQL 14+) is deliberately not
# set: it only matters for a backend busy running a statement, the claim is
# held by an idle session, and an unknown setting in the startup packet would
# refuse every connection to an older server. ``tcp_user_timeout`` needs
# PostgreSQL 12 or newer.

#: Seconds of silence before the first keepalive probe (server and client side).
KEEPALIVES_IDLE = 10
#: Seconds between unanswered keepalive probes.
KEEPALIVES_INTERVAL = 5
#: Unanswered probes after which the connection is dead: 10 + 4 x 5 = 30 s.
KEEPALIVES_COUNT = 4
#: Milliseconds sent data may stay unacknowledged before the connection is dropped.
TCP_USER_TIMEOUT_MS = 30_000
#: Seconds a new connection may take: an unreachable host fails in seconds,
#: not after the operating system's ~2 minutes of SYN retries (which would
#: also outlast a session's reconnect timeout).
CONNECT_TIMEOUT = 10

#: The server-side settings asked for in each connection's startup packet.
SERVER_SETTINGS: tuple[tuple[str, int], ...] = (
    ("tcp_keepalives_idle", KEEPALIVES_IDLE),
    ("tcp_keepalives_interval", KEEPALIVES_INTERVAL),
    ("tcp_keepalives_count", KEEPALIVES_COUNT),
    ("tcp_user_timeout", TCP_USER_TIMEOUT_MS),
)

_PSYCOPG_ALIASES = ("", "psycopg", "psycopg2", "psycopg2cffi")
# A setting in a libpq ``options`` string: ``-c name=value``, ``-cname=value`` or ``--name=value``.
_OPTION_NAME = re.compile(r"(?:^|\s)(?:-c\s*|--)([A-Za-z_][A-Za-z0-9_.]*)\s*=")


def normalize_url(url: str | URL) -> URL:
    """Parse ``url``; ``postgres://``, ``postgresql://`` and psycopg2 URLs become psycopg 3.

    Raises:
        StorageError: ``url`` is not a database URL.
    """
    try:
        parsed = make_url(url)
    except (SQLAlchemyError, ValueError, TypeError) as exc:
        raise StorageError(f"{mask_url(url)!r} is not a database URL (expected e.g. sqlite:///sagas.db "
                           "or postgresql://user@host/db)") from exc
    backend, _, driver = parsed.drivername.partition("+")
    if backend in ("postgres", "postgresql") and driver in _PSYCOPG_ALIASES:
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def _libpq_version() -> int:
    try:
        import psycopg

        return int(psycopg.pq.version())
    except (ImportError, AttributeError, OSError):  # no psycopg or no libpq: connecting will say
        return 0


def _user_options(url: URL, given: Mapping[str, Any]) -> str:
    if "options" in given:
        return str(given["options"] or "")
    value = url.query.get("options")
    if value is not None:
        return str(value if isinstance(value, str) else " ".join(value))
    # libpq reads PGOPTIONS only when no ``options`` is passed: keep it.
    return os.environ.get("PGOPTIONS", "")


def postgres_connect_args(url: URL, connect_args: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``connect_args`` plus sagadsl's keepalive and connect-timeout defaults for psycopg.

    A parameter already in the URL's query, in ``connect_args`` or (for the
    connect timeout and the server options) in libpq's environment variables
    is left as the user set it; a server setting already named in the user's
    ``options`` is not repeated.
    """
    given = dict(connect_args or {})
    present = set(url.query) | set(given)
    defaults: dict[str, Any] = {
        "keepalives": 1,
        "keepalives_idle": KEEPALIVES_IDLE,
        "keepalives_interval": KEEPALIVES_INTERVAL,
        "keepalives_count": KEEPALIVES_COUNT,
    }
    if _libpq_version() >= 120000:  # libpq learnt tcp_user_timeout in 12
        defaults["tcp_user_timeout"] = TCP_USER_TIMEOUT_MS
    if not os.environ.get("PGCONNECT_TIMEOUT"):
        defaults["connect_timeout"] = CONNECT_TIMEOUT
    args = dict(given)
    for name, value in defaults.items():
        if name not in present:
            args[name] = value
    options = _user_options(url, given).strip()
    named = set(_OPTION_NAME.findall(options))
    extra = [f"-c {name}={value}" for name, value in SERVER_SETTINGS if name not in named]
    if extra:
        args["options"] = " ".join([options, *extra]).strip()
    return args


def configure_sqlite(engine: Engine) -> None:
    """WAL, full sync, foreign keys, a 30 s busy timeout and ``BEGIN IMMEDIATE``."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event issue BEGIN IMMEDIATE itself: a
        # deferred transaction that later writes can fail with "database is
        # locked" without waiting; IMMEDIATE waits for the busy timeout.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def create_engine(url: str | URL, pool_size: int = 10, *, connect_args: Mapping[str, Any] | None = None,
                  max_overflow: int | None = None) -> Engine:
    """An engine for ``url`` with sagadsl's connection settings (see the module docstring).

    Raises:
        StorageError: ``url`` is not a usable database URL (no such dialect or
            driver). Nothing is connected yet.
    """
    parsed = normalize_url(url)
    try:
        if parsed.get_backend_name() == "sqlite":
            engine = _sa_create_engine(
                parsed, connect_args={"check_same_thread": False, "timeout": 30, **(connect_args or {})})
            configure_sqlite(engine)
            return engine
        args = dict(connect_args or {})
        if parsed.drivername == "postgresql+psycopg":
            args = postgres_connect_args(parsed, args)
        overflow = pool_size * 2 if max_overflow is None else max_overflow
        return _sa_create_engine(parsed, pool_size=pool_size, max_overflow=overflow, pool_pre_ping=False,
                                 connect_args=args)
    except (SQLAlchemyError, ImportError) as exc:
        raise StorageError(f"cannot open {mask_url(parsed)}: {_reason(exc, parsed)}") from exc


# -- errors ------------------------------------------------------------------

_BACKGROUND = re.compile(r"\s*\(Background on this error at: [^)]*\)")
_SECRET_KEYWORD = re.compile(r"(password\s*=\s*)(?:'(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_MAX_REASON = 500


def _reason(exc: BaseException, url: URL | None = None) -> str:
    """What went wrong, without SQL text, parameters or passwords."""
    if isinstance(exc, DBAPIError):
        orig: BaseException = exc.orig if isinstance(exc.orig, BaseException) else exc
        diag = getattr(orig, "diag", None)
        primary = getattr(diag, "message_primary", None) if diag is not None else None
        # PostgreSQL's primary message carries neither the statement nor row
        # values (those are in LINE/DETAIL, left out); a connection failure
        # has no diagnostics, and its text is libpq's, which names no SQL.
        text = f"{type(orig).__name__}: {primary if primary else orig}"
    elif isinstance(exc, StatementError):
        # Failed while preparing a statement's parameters: the message could
        # quote them. Only the kind of error is said.
        orig = exc.orig if isinstance(exc.orig, BaseException) else exc
        text = f"{type(orig).__name__} while preparing a statement"
    else:
        text = f"{type(exc).__name__}: {_BACKGROUND.sub('', str(exc))}"
    text = re.sub(r"\s+", " ", text).strip()
    if url is not None:
        for secret in sorted(secrets_in(url.render_as_string(hide_password=False)), key=len, reverse=True):
            text = text.replace(secret, "***")
    text = _SECRET_KEYWORD.sub(r"\1***", text)
    text = re.sub(r"(://[^:/@\s]*:)[^@\s]*@", r"\1***@", text)
    return text if len(text) <= _MAX_REASON else text[:_MAX_REASON - 3] + "..."


def storage_error(exc: BaseException, engine: Engine, doing: str, *,
                  saga_id: str | None = None) -> StorageError:
    """The ``StorageError`` for ``exc``, raised while ``doing`` on ``engine``'s database."""
    url = mask_url(engine.url)
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        message = f"lost the connection to {url} while {doing}: {_reason(exc, engine.url)}"
    else:
        message = f"{doing} in {url} failed: {_reason(exc, engine.url)}"
    return StorageError(message, saga_id=saga_id)


def connect(engine: Engine, doing: str, *, saga_id: str | None = None) -> Connection:
    """``engine.connect()``; a failure is a ``StorageError`` saying it could not connect."""
    try:
        return engine.connect()
    except SQLAlchemyError as exc:
        raise StorageError(f"could not connect to {mask_url(engine.url)} ({doing}): "
                           f"{_reason(exc, engine.url)}", saga_id=saga_id) from exc


@contextlib.contextmanager
def translated(engine: Engine, doing: str, *, saga_id: str | None = None) -> Iterator[None]:
    """Turn a SQLAlchemy or driver error raised in the block into a ``StorageError``."""
    try:
        yield
    except SQLAlchemyError as exc:
        raise storage_error(exc, engine, doing, saga_id=saga_id) from exc


def read(engine: Engine, doing: str, fn: Callable[[Connection], T], *, saga_id: str | None = None) -> T:
    """Run the read-only ``fn`` on a pooled connection, as a ``StorageError`` if it fails.

    A pooled connection found dead (the server restarted since it was last
    used; SQLAlchemy then discards the whole pool) is retried once on a new
    connection: a read can be repeated safely.
    """
    for attempt in (1, 2):
        conn = connect(engine, doing, saga_id=saga_id)
        try:
            with conn:
                return fn(conn)
        except DBAPIError as exc:
            if attempt == 1 and exc.connection_invalidated:
                continue
            raise storage_error(exc, engine, doing, saga_id=saga_id) from exc
        except SQLAlchemyError as exc:
            raise storage_error(exc, engine, doing, saga_id=saga_id) from exc
    raise AssertionError("unreachable")
