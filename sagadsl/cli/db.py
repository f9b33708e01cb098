"""``saga-admin db upgrade|current|check``: install sagadsl's tables and check their revision."""

from __future__ import annotations

from typing import Any

import click

from ..storage.schema import check_schema, current_revision, head_revision, migrate
from . import render
from .app import Settings, cli, settings_of
from .options import output_option

__all__ = ["db_check", "db_current", "db_group", "db_upgrade"]


@cli.group("db", short_help="Install, inspect and check sagadsl's tables.")
def db_group() -> None:
    """Install, inspect and check sagadsl's tables (Alembic migrations)."""


def _revision_document(settings: Settings, current: str | None) -> dict[str, Any]:
    head = head_revision()
    return {"database": settings.masked_url, "schema": settings.schema, "current": current,
            "head": head, "up_to_date": current == head}


@db_group.command("upgrade", short_help="Create or upgrade sagadsl's tables.")
@output_option
@click.pass_context
def db_upgrade(ctx: click.Context) -> None:
    """Create or upgrade the tables to this sagadsl version's newest revision.

    Creates a SQLite file that does not exist yet; on PostgreSQL creates the
    --schema if it is missing. Safe to run again.
    """
    settings = settings_of(ctx)
    with settings.connection(create=True) as conn:
        before = current_revision(conn, settings.schema)
        conn.rollback()
        migrate(conn.engine, schema=settings.schema)
        after = current_revision(conn, settings.schema)
    document = {"database": settings.masked_url, "schema": settings.schema, "from": before,
                "to": after}
    if settings.json:
        render.print_json(document)
    elif before == after:
        click.echo(f"{settings.masked_url}: already at {after} (head)")
    else:
        click.echo(f"{settings.masked_url}: upgraded from {before or 'an empty database'} to {after}")


@db_group.command("current", short_help="Show the schema revision and the newest one.")
@output_option
@click.pass_context
def db_current(ctx: click.Context) -> None:
    """Show the revision the database is at and the newest one this sagadsl ships."""
    settings = settings_of(ctx)
    with settings.connection() as conn:
        document = _revision_document(settings, current_revision(conn, settings.schema))
    if settings.json:
        render.print_json(document)
        return
    current = document["current"] or "none (tables not installed)"
    state = "up to date" if document["up_to_date"] else "behind: run `saga-admin db upgrade`"
    click.echo(f"database: {document['database']}" + (f" (schema {settings.schema})"
                                                      if settings.schema else ""))
    click.echo(f"current:  {current}")
    click.echo(f"head:     {document['head']} ({state})")


@db_group.command("check", short_help="Exit 1 unless the tables are up to date.")
@output_option
@click.pass_context
def db_check(ctx: click.Context) -> None:
    """Exit 0 if the tables are at the newest revision, else 1 saying what to run.

    For deploy scripts and readiness probes.
    """
    settings = settings_of(ctx)
    with settings.connection() as conn:
        current = current_revision(conn, settings.schema)
        check_schema(conn, settings.schema)
    document = _revision_document(settings, current)
    if settings.json:
        render.print_json(document)
    else:
        click.echo(f"{settings.masked_url}: schema at {current} (head), up to date")
