"""Alembic environment for sagadsl's tables.

Used by `alembic upgrade head` with the top-level alembic.ini (database from
$SAGADSL_DATABASE_URL, schema from ``-x schema=NAME`` or $SAGADSL_SCHEMA) and by
`saga-admin db upgrade` / ``sagadsl.migrate()`` (which pass a connection in
``config.attributes["connection"]``). The version table is
``sagadsl_alembic_version`` so a user's own history is never touched. A
project's own Alembic setup does not use this file: it lists ``versions/`` in
its ``version_locations`` (see :mod:`sagadsl.storage.schema`).
"""

from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine, pool
from sqlalchemy.engine import Connection

from sagadsl.storage.models import metadata
from sagadsl.storage.schema import validate_schema_name

VERSION_TABLE = "sagadsl_alembic_version"

config = context.config
if "connection" in config.attributes:  # sagadsl.migrate() / saga-admin: the caller decides
    schema = config.attributes.get("sagadsl_schema") or None
else:  # `alembic -x schema=NAME ...`, $SAGADSL_SCHEMA, or sagadsl_schema in alembic.ini
    if config.config_file_name is not None:
        fileConfig(config.config_file_name, disable_existing_loggers=False)
    schema = (context.get_x_argument(as_dictionary=True).get("schema")
              or os.environ.get("SAGADSL_SCHEMA") or config.get_main_option("sagadsl_schema") or None)
validate_schema_name(schema)


def _include_name(name: str | None, type_: str, parent_names: object) -> bool:
    # Autogenerate (`alembic check`) looks at sagadsl's tables only, never at
    # the version table or a user's own tables sharing the schema.
    return type_ != "table" or name in metadata.tables


def _configure(connection: Connection) -> None:
    if schema:
        connection = connection.execution_options(schema_translate_map={None: schema})
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        version_table_schema=schema,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        include_name=_include_name,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_offline() -> None:
    context.configure(
        url=os.environ.get("SAGADSL_DATABASE_URL") or config.get_main_option("sqlalchemy.url"),
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        version_table_schema=schema,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        return
    url = os.environ.get("SAGADSL_DATABASE_URL") or config.get_main_option("sqlalchemy.url")
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as conn:
        if schema and conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            # So that `alembic check` compares the tables in that schema (this
            # connection is never reused).
            conn.exec_driver_sql(f'SET search_path TO "{schema}"')
        _configure(conn)
        conn.commit()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
