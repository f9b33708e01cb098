"""``saga-admin locks``: who holds each semantic lock key, and who waits for it."""

from __future__ import annotations

import click

from . import render
from .app import cli, database_errors, settings_of
from .options import output_option

__all__ = ["locks_command"]


@cli.command("locks")
@click.argument("keys", nargs=-1)
@output_option
@click.pass_context
def locks_command(ctx: click.Context, keys: tuple[str, ...]) -> None:
    """Show semantic lock keys: the saga holding each one and the sagas queued for it.

    Give KEYS to show only those. A saga in dead letter keeps its keys until
    it is resolved; a submitted saga waits, holding none, until all of its
    keys are free.
    """
    settings = settings_of(ctx)
    engine = settings.engine()
    with database_errors(settings):
        rows = engine.locks(*keys)
    if settings.json:
        render.print_json({"locks": [{"key": r.key, "saga_id": r.saga_id, "held": r.held,
                                      "requested_at": render.iso(r.requested_at)} for r in rows]})
        return
    grid = render.table("KEY", "SAGA", "STATE", "SINCE")
    for r in rows:
        grid.add_row(render.plain(r.key), render.plain(r.saga_id), "holds" if r.held else "waits",
                     render.clock_text(r.requested_at))
    held = sum(1 for r in rows if r.held)
    render.emit(grid, f"{held} held, {len(rows) - held} waiting")
