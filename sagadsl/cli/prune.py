"""``saga-admin prune``: delete finished sagas older than a retention period, in short batches."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..engine import PRUNE_BATCH, PRUNED_BY_DEFAULT
from ..status import ACTIVE_STATUSES, WorkflowStatus
from . import render
from .app import cli, database_errors, settings_of
from .options import Duration, output_option

__all__ = ["prune_command"]

_PRUNABLE = [s.value for s in WorkflowStatus if s not in ACTIVE_STATUSES]


@cli.command("prune", short_help="Delete finished sagas older than a retention period.")
@click.option("--older-than", type=Duration(), required=True,
              help="Delete sagas last updated longer ago than this: 12h, 30d, 2w.")
@click.option("-s", "--status", "statuses", type=click.Choice(_PRUNABLE), multiple=True,
              help="Statuses to delete (repeatable; default: completed, failed and cancelled). Dead-letter sagas "
                   "go only when named.")
@click.option("--batch", type=click.IntRange(min=1), default=PRUNE_BATCH, show_default=True, metavar="N",
              help="Sagas deleted per transaction.")
@click.option("--dry-run", is_flag=True, help="Only count what would be deleted.")
@output_option
@click.pass_context
def prune_command(ctx: click.Context, older_than: timedelta, statuses: tuple[str, ...], batch: int,
                  dry_run: bool) -> None:
    """Delete finished sagas, with their steps, last updated longer ago than --older-than.

    Each batch is its own short transaction, so running sagas are not held
    up; active sagas are never deleted, and the counts stay exact.

    \b
    Examples:
      saga-admin prune --older-than 30d --dry-run
      saga-admin prune --older-than 30d
      saga-admin prune --older-than 90d --status dead_letter
    """
    settings = settings_of(ctx)
    engine = settings.engine()
    chosen = tuple(WorkflowStatus(s) for s in statuses) or PRUNED_BY_DEFAULT
    before = engine.clock.now() - older_than
    with database_errors(settings):
        matching = engine.query(chosen, updated_before=before, limit=0).total
        if dry_run:
            deleted = 0
        elif settings.json or not render.console().is_terminal:
            deleted = engine.prune(older_than, chosen, batch=batch)
        else:
            with Progress(TextColumn("pruning"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                          console=render.console(), transient=True) as progress:
                task = progress.add_task("prune", total=matching)
                deleted = engine.prune(older_than, chosen, batch=batch,
                                       progress=lambda n: progress.advance(task, n))
    result: dict[str, Any] = {
        "dry_run": dry_run, "statuses": [s.value for s in chosen], "updated_before": render.iso(before),
        "matching": matching, "deleted": deleted,
    }
    if settings.json:
        render.print_json(result)
        return
    what = "/".join(result["statuses"])
    if dry_run:
        render.emit(render.plain(f"would delete {matching} {what} saga{'s' if matching != 1 else ''} "
                                 f"last updated before {result['updated_before']} (dry run)"))
    else:
        render.emit(render.plain(f"deleted {deleted} {what} saga{'s' if deleted != 1 else ''} "
                                 f"last updated before {result['updated_before']}"))
