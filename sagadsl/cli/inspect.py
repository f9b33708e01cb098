"""The commands that look without changing anything: ``list``, ``show``, ``dead-letter``, ``graph``."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from ..definition import SagaDefinition
from ..errors import SagaError
from ..limits import MAX_RETRY_COUNT
from ..records import WorkflowRecord
from ..registry import lookup, registered_names
from ..status import WorkflowStatus
from . import render
from .app import CliError, cli, database_errors, settings_of
from .options import SagaPage, import_option, import_saga_modules, output_option, page_options

__all__ = ["dead_letter_command", "graph_command", "list_command", "show_command"]


@cli.command("list")
@page_options()
@output_option
@click.pass_context
def list_command(ctx: click.Context, page: SagaPage) -> None:
    """List sagas, newest first.

    \b
    Examples:
      saga-admin list --status pending --status compensating --since 1h
      saga-admin list --stuck
      saga-admin list --saga orders.place --since 2026-11-28 --until 2026-11-29
    """
    settings = settings_of(ctx)
    engine = settings.engine()
    with database_errors(settings):
        found = page.fetch(engine)
    now = datetime.now(timezone.utc)
    if settings.json:
        render.print_json({"total": found.total, "offset": page.offset, "limit": page.limit,
                           "sagas": [render.summary_json(w, now) for w in found.workflows]})
        return
    parts: list[Any] = []
    if found.workflows:
        grid = render.table("ID", "SAGA", "STATUS", "STEP REACHED", "RETRIES", "AGE", "UPDATED (UTC)")
        for w in found.workflows:
            status = w.status.value + (" (stuck)" if render.is_stuck(w, now) else "")
            if w.past_pivot and w.status.value != "completed":
                status += " (past pivot)"
            reached = render.reached_step(w)
            grid.add_row(render.plain(w.id), render.plain(w.saga_name), status,
                         render.plain(reached.name if reached else None),
                         f"{w.retry_count}/{MAX_RETRY_COUNT}", render.span(now - w.created_at),
                         render.clock_text(w.updated_at))
        parts.append(grid)
    offset, count = page.offset, len(found.workflows)
    first = offset + 1 if count else 0
    shown = f"{first}-{offset + count}" if count > 1 else str(first)
    parts.append(f"showing {count} of {found.total}" + (f" (rows {shown})" if offset and count else ""))
    render.emit(*parts)


@cli.command("show", short_help="Show one saga: input, steps, compensations, error.")
@click.argument("saga_id", metavar="ID")
@output_option
@click.pass_context
def show_command(ctx: click.Context, saga_id: str) -> None:
    """Show one saga: input, steps, compensations, error and retries."""
    settings = settings_of(ctx)
    engine = settings.engine()
    with database_errors(settings):
        record = engine.get(saga_id)
    if record is None:
        raise CliError(f"no saga with id {saga_id!r} in {settings.masked_url}")
    now = datetime.now(timezone.utc)
    if settings.json:
        render.print_json(render.detail_json(record, now))
        return
    _print_detail(record, now)


def _print_detail(record: WorkflowRecord, now: datetime) -> None:
    parts: list[Any] = []
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    status = record.status.value + (" (stuck: no progress within its timeouts)"
                                    if render.is_stuck(record, now) else "")
    rows = [
        ("saga", record.saga_name), ("status", status), ("idempotency key", record.idempotency_key),
        ("retries", f"{record.retry_count} of {MAX_RETRY_COUNT}"),
        ("position", render.position_text(record)),
        *([("past pivot", "yes: it only goes forward; nothing is compensated")] if record.past_pivot else []),
        *([("locks", ", ".join(record.locks))] if record.locks else []),
        *([("cancelled", record.cancel_reason + ("" if record.status.is_terminal else
                                                 " (requested; its executor compensates it)"))]
          if record.cancel_reason is not None else []),
        ("created", f"{render.clock_text(record.created_at)} UTC ({render.ago(record.created_at, now)})"),
        ("updated", f"{render.clock_text(record.updated_at)} UTC ({render.ago(record.updated_at, now)})"),
    ]
    # A finished saga has no budget left to run out: no deadline.
    if not record.status.is_terminal:
        deadline = render.deadline_of(record)
        rows.append(("deadline", "not started yet (its 15 min budget starts when an executor takes it)"
                     if deadline is None else
                     f"{render.clock_text(deadline)} UTC (15 min from the start of this run)"))
    rows.append(("input", render.short(record.input, 200)))
    for label, value in rows:
        facts.add_row(label, render.plain(value))
    parts += [render.plain(f"Saga {record.id}", style="bold"), facts]
    steps = render.table("#", "STEP", "STATUS", "ATTEMPTS", "DURATION", "IDEMPOTENCY KEY",
                         "RESULT", title="Steps")
    for s in record.steps:
        steps.add_row(str(s.position + 1), render.plain(s.name), s.status.value, str(s.attempts),
                      render.span(render.duration_of(s)), render.plain(s.idempotency_key),
                      render.plain(render.short(s.result) if s.error is None
                                   else render.short(s.error, raw=True)))
    parts += ["", steps]
    compensations = render.compensations_of(record)
    if compensations:
        grid = render.table("STEP", "COMPENSATION", "FINISHED (UTC)", "ERROR", title="Compensations")
        for c in compensations:
            finished = render.clock_text(datetime.fromisoformat(c["finished_at"].replace("Z", "+00:00"))
                                         ) if c["finished_at"] else "-"
            grid.add_row(render.plain(c["step"]), c["status"], finished, render.plain(c["error"]))
        parts += [grid]
    error = record.error
    if error is not None:
        block = Table.grid(padding=(0, 2))
        block.add_column(style="bold")
        block.add_column()
        block.add_row("step", render.plain(error.step_name))
        block.add_row("error", render.plain(error.error))
        block.add_row("compensation error", render.plain(error.compensation_error))
        block.add_row("at", f"{render.clock_text(error.timestamp)} UTC")
        parts += [Text("Error", style="bold"), block]
        traceback, compensation_traceback = render.tracebacks_of(record)
        if traceback:
            title = "Traceback of the failing step" + (f" ({error.step_name})" if error.step_name else "")
            parts += ["", render.plain(title, style="bold"), render.block(traceback)]
        if compensation_traceback:
            parts += ["", Text("Traceback of the failing compensation", style="bold"),
                      render.block(compensation_traceback)]
    render.emit(*parts)


@cli.command("dead-letter")
@page_options(status=WorkflowStatus.DEAD_LETTER)
@output_option
@click.pass_context
def dead_letter_command(ctx: click.Context, page: SagaPage) -> None:
    """List the dead-letter queue: the failing step and both errors.

    A saga lands here when a compensation still failed after its retries.
    Fix the cause, then `saga-admin retry ID`.
    """
    settings = settings_of(ctx)
    engine = settings.engine()
    with database_errors(settings):
        found = page.fetch(engine)
    if settings.json:
        render.print_json({"total": found.total, "offset": page.offset, "limit": page.limit,
                           "sagas": [render.dead_letter_json(w) for w in found.workflows]})
        return
    parts: list[Any] = []
    for w in found.workflows:
        row = render.dead_letter_json(w)
        block = Table.grid(padding=(0, 2))
        block.add_column(style="bold")
        block.add_column()
        block.add_row("  failed step", render.plain(row["failed_step"]))
        block.add_row("  error", render.plain(row["error"]))
        block.add_row("  compensation error", render.plain(row["compensation_error"]))
        parts += [render.plain(f"{w.id}  {w.saga_name}  retries {w.retry_count}/{MAX_RETRY_COUNT}  failed "
                               f"at {render.clock_text(w.error.timestamp if w.error else None)} UTC",
                               style="bold"),
                  block, ""]
    parts.append(f"showing {len(found.workflows)} of {found.total} in dead letter")
    render.emit(*parts)


@cli.command("graph", short_help="Draw the step graph of a saga class.")
@click.argument("saga_name", metavar="SAGA")
@import_option
@click.option("-f", "--format", "fmt", type=click.Choice(["text", "mermaid", "dot"]), default="text",
              show_default=True, help="Plain text, a Mermaid flowchart or Graphviz DOT.")
@output_option
@click.pass_context
def graph_command(ctx: click.Context, saga_name: str, modules: tuple[str, ...], fmt: str) -> None:
    """Draw the step graph of the saga registered as SAGA, with its compensations.

    Needs no database. SAGA is the registered name (`name=` in the class
    statement, default `module:QualName`).

    \b
    Example:
      saga-admin graph orders.place --import myapp.sagas --format mermaid
    """
    settings = settings_of(ctx)
    if not modules:
        raise click.UsageError("give --import MODULE, the module that defines the saga", ctx)
    import_saga_modules(modules)
    try:
        definition: SagaDefinition = lookup(saga_name).definition
    except SagaError:
        known = ", ".join(registered_names()) or "none"
        raise CliError(f"no saga is registered as {saga_name!r} after importing "
                       f"{', '.join(modules)}; registered: {known}") from None
    drawing = {"text": definition.to_text, "mermaid": definition.to_mermaid,
               "dot": definition.to_dot}[fmt]()
    if settings.json:
        render.print_json({"saga": definition.name, "class": definition.class_name, "format": fmt,
                           "graph": drawing, "steps": definition.shape()})
        return
    click.echo(drawing)
