"""Alembic environment for sagadsl's tables.

Works three ways: `alembic upgrade head` with the top-level alembic.ini,
`saga-admin db upgrade` / `sagadsl.migrate()` (which pass a connection in
``config.attributes["connection"]``), and inside a user's own Alembic setup
that lists this folder in ``version_locations``. The version table is
``sagadsl_alembic_version`` so a user's own history is never touched.
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine, pool
from sqlalchemy.engine import Connection

from sagadsl.storage.models import metadata

VERSION_TABLE = "sagadsl_alembic_version"

config = context.config
schema = config.attributes.get("sagadsl_schema") or config.get_main_option("sagadsl_schema") or None


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
        _configure(conn)
        conn.commit()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
