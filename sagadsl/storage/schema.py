"""Installing and checking sagadsl's tables with the shipped Alembic migrations.

sagadsl keeps its own Alembic history (branch label ``sagadsl``) and records it
in its own version table, ``sagadsl_alembic_version``. A project with its own
Alembic setup can instead include that history in its own, so that one
``alembic upgrade heads`` installs both; list sagadsl's versions folder next to
the project's in ``alembic.ini``::

    [alembic]
    script_location = %(here)s/migrations
    version_locations = %(here)s/migrations/versions sagadsl:migrations/versions

Alembic then records sagadsl's revision in the project's version table, and
sagadsl reads it from there when that table keeps Alembic's default name
``alembic_version``.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.engine import Connection, Engine

from ..errors import SchemaOutOfDateError
from .connect import connect, create_engine, translated

__all__ = ["migrate", "migrations_dir", "head_revision", "current_revision", "check_schema",
           "validate_schema_name", "recount_statuses", "VERSION_TABLE", "HOST_VERSION_TABLE"]

VERSION_TABLE = "sagadsl_alembic_version"
#: Where a project that includes sagadsl's history in its own keeps its revisions.
HOST_VERSION_TABLE = "alembic_version"

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def validate_schema_name(schema: str | None) -> str | None:
    """Return ``schema`` unchanged if it is a plain SQL identifier (or None).

    Raises:
        ValueError: it is anything else; a schema name is spliced into DDL.
    """
    if schema is not None and not (isinstance(schema, str) and _IDENTIFIER.fullmatch(schema)):
        raise ValueError(f"schema {schema!r} is not a valid SQL identifier (letters, digits and _, "
                         "not starting with a digit, at most 63 characters)")
    return schema


def migrations_dir() -> Path:
    """The migrations folder: inside the installed wheel, else the checkout's top level."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "migrations", package.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise FileNotFoundError(f"sagadsl's migrations folder is missing (looked in {package}/migrations "
                            f"and {package.parent}/migrations); reinstall sagadsl")


def alembic_config(connection: Connection | None = None, schema: str | None = None) -> Config:
    """An Alembic ``Config`` for sagadsl's migrations, bound to ``connection``."""
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    if connection is not None:
        cfg.attributes["connection"] = connection
    if schema:
        cfg.attributes["sagadsl_schema"] = schema
    return cfg


@lru_cache(maxsize=1)
def head_revision() -> str:
    """The newest revision this version of sagadsl ships."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


@lru_cache(maxsize=1)
def _known_revisions() -> frozenset[str]:
    return frozenset(s.revision for s in ScriptDirectory.from_config(alembic_config()).walk_revisions())


def _heads(connection: Connection, schema: str | None, table: str) -> tuple[str, ...]:
    ctx = MigrationContext.configure(connection, opts={"version_table": table, "version_table_schema": schema})
    return ctx.get_current_heads()


def _hosted_revision(connection: Connection, schema: str | None) -> str | None:
    """sagadsl's revision as recorded in a project's own version table, if any."""
    if not inspect(connection).has_table(HOST_VERSION_TABLE, schema=schema):
        return None
    known = _known_revisions()
    return next((r for r in _heads(connection, schema, HOST_VERSION_TABLE) if r in known), None)


def current_revision(connection: Connection, schema: str | None = None) -> str | None:
    """The revision the database is at, or None if sagadsl's tables are not installed.

    Read from ``sagadsl_alembic_version``, else from a project's own
    ``alembic_version`` that includes sagadsl's history.
    """
    validate_schema_name(schema)
    own = _heads(connection, schema, VERSION_TABLE)
    if own:
        return own[0]
    return _hosted_revision(connection, schema)


def _engine(url_or_engine: str | Engine) -> tuple[Engine, bool]:
    if isinstance(url_or_engine, Engine):
        return url_or_engine, False
    return create_engine(url_or_engine, pool_size=1), True


def migrate(url_or_engine: str | Engine, *, revision: str = "head", schema: str | None = None) -> None:
    """Upgrade sagadsl's tables to ``revision`` (default: the newest).

    Args:
        url_or_engine: A database URL or a SQLAlchemy ``Engine``.
        revision: Alembic revision to upgrade to.
        schema: PostgreSQL schema to put the tables in (created if missing).
    """
    validate_schema_name(schema)
    engine, owned = _engine(url_or_engine)
    doing = "migrating sagadsl's schema"
    try:
        with connect(engine, doing) as conn, translated(engine, doing), conn.begin():
            if schema and conn.dialect.name == "postgresql":
                conn.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            if not _heads(conn, schema, VERSION_TABLE):
                hosted = _hosted_revision(conn, schema)
                if hosted is not None:
                    if revision == "head" and hosted == head_revision():
                        return
                    raise SchemaOutOfDateError(
                        f"sagadsl's tables in {_where(conn, schema)} are managed by your own Alembic "
                        f"history ({HOST_VERSION_TABLE} holds sagadsl revision {hosted}); run "
                        "`alembic upgrade heads` in your project instead")
                if inspect(conn).has_table("sagadsl_workflows", schema=schema):
                    raise SchemaOutOfDateError(_unversioned(conn, schema))
            command.upgrade(alembic_config(conn, schema), revision)
    finally:
        if owned:
            engine.dispose()


def downgrade(url_or_engine: str | Engine, revision: str, *, schema: str | None = None) -> None:
    """Downgrade sagadsl's tables to ``revision`` (``"base"`` removes them)."""
    validate_schema_name(schema)
    engine, owned = _engine(url_or_engine)
    doing = "downgrading sagadsl's schema"
    try:
        with connect(engine, doing) as conn, translated(engine, doing), conn.begin():
            command.downgrade(alembic_config(conn, schema), revision)
    finally:
        if owned:
            engine.dispose()


def _where(connection: Connection, schema: str | None) -> str:
    url = connection.engine.url.render_as_string(hide_password=True)
    return f"schema {schema!r} of {url}" if schema else url


def _upgrade_command(schema: str | None) -> str:
    admin = f"saga-admin --schema {schema} db upgrade" if schema else "saga-admin db upgrade"
    code = f"sagadsl.migrate(url, schema={schema!r})" if schema else "sagadsl.migrate(url)"
    return f"run `{admin}` (or `alembic upgrade head` from a sagadsl checkout, or {code} from code)"


def _unversioned(connection: Connection, schema: str | None) -> str:
    return (f"sagadsl's tables exist in {_where(connection, schema)} but {VERSION_TABLE} records no "
            f"revision; if they were created by this sagadsl version, record that with "
            f"`alembic stamp {head_revision()}` from a sagadsl checkout, otherwise drop them and "
            f"{_upgrade_command(schema)}")


def check_schema(connection: Connection, schema: str | None = None) -> None:
    """Raise :class:`SchemaOutOfDateError` unless the schema is at the head revision.

    The message says what is wrong and which command fixes it.
    """
    head = head_revision()
    current = current_revision(connection, schema)
    if current == head:
        return
    where = _where(connection, schema)
    if current is None:
        if inspect(connection).has_table("sagadsl_workflows", schema=schema):
            raise SchemaOutOfDateError(_unversioned(connection, schema))
        raise SchemaOutOfDateError(f"sagadsl's tables are not installed in {where}; "
                                   f"{_upgrade_command(schema)}")
    if current not in _known_revisions():
        raise SchemaOutOfDateError(f"the sagadsl schema in {where} is at revision {current}, which this "
                                   f"version of sagadsl does not know (its newest is {head}); a newer "
                                   "sagadsl migrated it: upgrade the sagadsl package")
    raise SchemaOutOfDateError(f"the sagadsl schema in {where} is at revision {current}, this version of "
                               f"sagadsl needs {head}; {_upgrade_command(schema)}")


def recount_statuses(connection: Connection, schema: str | None = None) -> None:
    """Recompute ``sagadsl_status_counts`` from the workflows table.

    The counts are kept by row triggers. A bulk load of many sagas in one
    transaction updates the same counter rows over and over, which is slow;
    disable the triggers for such a load (``ALTER TABLE sagadsl_workflows
    DISABLE TRIGGER USER``), enable them again, then call this in the same
    transaction.
    """
    validate_schema_name(schema)
    prefix = f'"{schema}".' if schema else ""
    counts, workflows = f"{prefix}sagadsl_status_counts", f"{prefix}sagadsl_workflows"
    connection.exec_driver_sql(f"UPDATE {counts} SET n = 0")
    if connection.dialect.name == "postgresql":
        shard = "(hashtext(w.id) & 63)"
        connection.exec_driver_sql(
            f"UPDATE {counts} AS c SET n = t.n FROM (SELECT status, {shard} AS shard, count(*) AS n "
            f"FROM {workflows} AS w GROUP BY 1, 2) AS t WHERE c.status = t.status AND c.shard = t.shard")
    else:
        connection.exec_driver_sql(
            f"UPDATE {counts} SET n = (SELECT count(*) FROM {workflows} AS w "
            f"WHERE w.status = {counts}.status) WHERE shard = 0")
