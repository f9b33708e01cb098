"""Installing and checking sagadsl's tables with the shipped Alembic migrations."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect
from sqlalchemy.engine import Connection, Engine

from ..errors import SchemaOutOfDateError

__all__ = ["migrate", "migrations_dir", "head_revision", "current_revision", "check_schema",
           "VERSION_TABLE"]

VERSION_TABLE = "sagadsl_alembic_version"


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


def current_revision(connection: Connection, schema: str | None = None) -> str | None:
    """The revision the database is at, or None if sagadsl's tables are not installed."""
    ctx = MigrationContext.configure(
        connection, opts={"version_table": VERSION_TABLE, "version_table_schema": schema})
    return ctx.get_current_revision()


def _engine(url_or_engine: str | Engine) -> tuple[Engine, bool]:
    if isinstance(url_or_engine, Engine):
        return url_or_engine, False
    return create_engine(url_or_engine), True


def migrate(url_or_engine: str | Engine, *, revision: str = "head", schema: str | None = None) -> None:
    """Upgrade sagadsl's tables to ``revision`` (default: the newest).

    Args:
        url_or_engine: A database URL or a SQLAlchemy ``Engine``.
        revision: Alembic revision to upgrade to.
        schema: PostgreSQL schema to put the tables in (created if missing).
    """
    engine, owned = _engine(url_or_engine)
    try:
        with engine.begin() as conn:
            if schema and conn.dialect.name == "postgresql":
                conn.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            command.upgrade(alembic_config(conn, schema), revision)
    finally:
        if owned:
            engine.dispose()


def downgrade(url_or_engine: str | Engine, revision: str, *, schema: str | None = None) -> None:
    """Downgrade sagadsl's tables to ``revision`` (``"base"`` removes them)."""
    engine, owned = _engine(url_or_engine)
    try:
        with engine.begin() as conn:
            command.downgrade(alembic_config(conn, schema), revision)
    finally:
        if owned:
            engine.dispose()


def check_schema(connection: Connection, schema: str | None = None) -> None:
    """Raise :class:`SchemaOutOfDateError` unless the schema is at the head revision."""
    head = head_revision()
    current = current_revision(connection, schema)
    if current == head:
        return
    url = connection.engine.url.render_as_string(hide_password=True)
    fix = ("run `saga-admin db upgrade` (or `alembic upgrade head` from a sagadsl checkout, "
           "or sagadsl.migrate(url) from code)")
    if current is None:
        tables = set(inspect(connection).get_table_names(schema=schema))
        detail = ("sagadsl's tables exist but carry no version" if "sagadsl_workflows" in tables
                  else "sagadsl's tables are not installed")
        raise SchemaOutOfDateError(f"{detail} in {url}; {fix}")
    raise SchemaOutOfDateError(f"the sagadsl schema in {url} is at revision {current}, this version of "
                               f"sagadsl needs {head}; {fix}")
