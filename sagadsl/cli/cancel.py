"""``saga-admin cancel``: stop sagas that have not passed their pivot, compensating what they did."""

from __future__ import annotations

from typing import Any

import click

from ..errors import InvalidStateError, SagaNotFoundError
from . import render
from .app import cli, database_errors, settings_of
from .options import output_option

__all__ = ["cancel_command"]


@cli.command("cancel", short_help="Cancel sagas: compensate them and end them cancelled.")
@click.argument("saga_ids", metavar="ID...", nargs=-1, required=True)
@click.option("--reason", required=True, metavar="TEXT",
              help="Why the sagas are cancelled; stored with each and shown by `show`.")
@output_option
@click.pass_context
def cancel_command(ctx: click.Context, saga_ids: tuple[str, ...], reason: str) -> None:
    """Cancel sagas; each is compensated and ends cancelled.

    A saga still waiting for a worker ends at once. A running one is
    compensated by its executor after the step in flight (on any machine),
    or by a worker if that executor died; follow it with `saga-admin show`.
    A saga that has ended, is already compensating after a failure, or has
    started its pivot step is refused with the reason. Exits 1 if any was
    refused.

    \b
    Examples:
      saga-admin cancel order-o-1 --reason "customer withdrew the order"
      saga-admin cancel order-o-1 order-o-2 --reason "duplicate submission" -o json
    """
    if not reason.strip():
        raise click.BadParameter("give a reason: it is stored with the saga for whoever reads it later",
                                 param_hint="--reason")
    settings = settings_of(ctx)
    engine = settings.engine()
    done: list[dict[str, Any]] = []
    refused: list[dict[str, Any]] = []
    for saga_id in dict.fromkeys(saga_ids):
        with database_errors(settings):
            try:
                outcome = engine.cancel(saga_id, reason)
            except (SagaNotFoundError, InvalidStateError) as exc:
                refused.append({"id": saga_id, "code": exc.code, "reason": str(exc)})
                continue
        done.append({"id": saga_id, "outcome": outcome})
    if settings.json:
        render.print_json({"cancelled": done, "refused": refused})
    else:
        for entry in done:
            what = ("cancelled: it had not started, nothing to compensate" if entry["outcome"] == "cancelled"
                    else "cancel requested: its executor compensates it, then it ends cancelled")
            render.emit(render.plain(f"{entry['id']}: {what}"))
        for entry in refused:
            click.echo(render.plain(f"refused {entry['id']}: {entry['reason']}").plain, err=True)
    if refused:
        ctx.exit(1)
