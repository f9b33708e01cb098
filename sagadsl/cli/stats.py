"""``saga-admin stats``: how many sagas are in each status, once or refreshed in place, or per saga name."""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timezone
from typing import Any

import click
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ..status import WorkflowStatus
from . import render
from .app import Settings, cli, database_errors, settings_of
from .options import output_option

__all__ = ["stats_command"]


def _stats(settings: Settings) -> dict[str, Any]:
    engine = settings.engine()
    now = datetime.now(timezone.utc)
    with database_errors(settings):
        by_status = engine.count_by_status()
        oldest = None
        if by_status.get(WorkflowStatus.PENDING, 0):
            first = engine.query(WorkflowStatus.PENDING, order="oldest", limit=1).workflows
            oldest = first[0] if first else None
        stuck = engine.query(stuck=True, limit=0).total
    return {
        "at": render.iso(now),
        "total": sum(by_status.values()),
        "by_status": {status.value: by_status.get(status, 0) for status in WorkflowStatus},
        "oldest_pending": None if oldest is None else {
            "id": oldest.id, "saga": oldest.saga_name, "created_at": render.iso(oldest.created_at),
            "age_seconds": round((now - oldest.created_at).total_seconds(), 3)},
        "stuck": stuck,
        "dead_letter": by_status.get(WorkflowStatus.DEAD_LETTER, 0),
    }


def _stats_view(stats: dict[str, Any]) -> Group:
    grid = render.table("STATUS", "SAGAS")
    for name, n in stats["by_status"].items():
        grid.add_row(name, str(n))
    grid.add_row("total", str(stats["total"]), style="bold")
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    oldest = stats["oldest_pending"]
    facts.add_row("oldest pending", render.plain(None if oldest is None else
                  f"{oldest['id']} ({oldest['saga']}), created {render.span(oldest['age_seconds'])} ago"))
    facts.add_row("stuck", str(stats["stuck"]))
    facts.add_row("dead letter", str(stats["dead_letter"]))
    stamp = stats["at"].replace("T", " ").split(".")[0].rstrip("Z")
    return Group(Text(f"Sagas at {stamp} UTC", style="bold"), grid, facts)


def _by_name(settings: Settings) -> dict[str, dict[str, int]]:
    engine = settings.engine()
    with database_errors(settings):
        counts = engine.count_by_name()
    return {name: {status.value: counts[name].get(status, 0) for status in WorkflowStatus}
            for name in sorted(counts)}


def _by_name_view(by_name: dict[str, dict[str, int]]) -> Table:
    grid = render.table("SAGA", *(s.value.upper() for s in WorkflowStatus), "TOTAL")
    for name, counts in by_name.items():
        grid.add_row(render.plain(name), *(str(n) for n in counts.values()), str(sum(counts.values())))
    return grid


@cli.command("stats", short_help="Count sagas per status; stuck and dead-letter counts.")
@click.option("--by-name", is_flag=True, help="Count per saga name and status instead (scans the sagas).")
@click.option("-w", "--watch", is_flag=True, help="Refresh until Ctrl-C.")
@click.option("--interval", type=click.FloatRange(min=0.01), default=2.0, show_default=True,
              metavar="SECONDS", help="Seconds between refreshes with --watch.")
@click.option("--count", "refreshes", type=click.IntRange(min=1), default=None, metavar="N",
              help="With --watch, stop after N refreshes (default: until Ctrl-C).")
@output_option
@click.pass_context
def stats_command(ctx: click.Context, by_name: bool, watch: bool, interval: float,
                  refreshes: int | None) -> None:
    """Count sagas per status, with the oldest pending, stuck and dead-letter counts.

    With --watch the numbers refresh in place on a terminal; when stdout is
    not a terminal each refresh is printed after the previous one (JSON: one
    document per line). With --by-name, one row per saga name and a column
    per status.
    """
    settings = settings_of(ctx)
    if by_name:
        if watch:
            raise click.UsageError("--by-name cannot be combined with --watch", ctx)
        counts = _by_name(settings)
        if settings.json:
            render.print_json({"by_name": counts})
        else:
            render.emit(_by_name_view(counts))
        return
    if not watch:
        if refreshes is not None:
            raise click.UsageError("--count only applies with --watch", ctx)
        stats = _stats(settings)
        if settings.json:
            render.print_json(stats)
        else:
            render.emit(_stats_view(stats))
        return
    out = render.console()
    done = 0
    try:
        if out.is_terminal and not settings.json:
            with Live(_stats_view(_stats(settings)), console=out, auto_refresh=False) as live:
                done = 1
                while refreshes is None or done < refreshes:
                    time.sleep(interval)
                    live.update(_stats_view(_stats(settings)), refresh=True)
                    done += 1
            return
        while refreshes is None or done < refreshes:
            if done:
                time.sleep(interval)
            stats = _stats(settings)
            if settings.json:
                sys.stdout.write(json.dumps(stats) + "\n")
                sys.stdout.flush()
            else:
                render.emit(_stats_view(stats), "")
            done += 1
    except KeyboardInterrupt:
        pass
