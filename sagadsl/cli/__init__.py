"""``saga-admin``: find stuck and dead-lettered sagas, understand why, and make them go.

Run ``saga-admin --help`` (or ``python -m sagadsl --help``). The commands are
documented with a real session in ``docs/how-to/saga-admin.md``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

import click
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .. import __version__
from ..definition import SagaDefinition
from ..errors import (
    CompensationFailedError,
    DeadLetterError,
    InvalidStateError,
    RetryCapExceededError,
    SagaError,
    SagaFailedError,
    SagaNotFoundError,
)
from ..limits import MAX_RETRY_COUNT
from ..records import WorkflowRecord
from ..registry import import_modules, lookup, registered_names
from ..status import WorkflowStatus
from ..storage.schema import check_schema, current_revision, head_revision, migrate
from . import render
from .app import (
    DEFAULT_DATABASE_URL,
    AdminGroup,
    CliError,
    RedactingFormatter,
    Settings,
    database_errors,
    settings_of,
)

__all__ = ["cli", "main"]

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_STATUS_NAMES = [s.value for s in WorkflowStatus]
_PAGE = 500


class TimeBound(click.ParamType):  # type: ignore[type-arg]  # generic only in click >= 8.2
    """A point in time: ``30m``, ``1h``, ``2d`` ago, or an ISO 8601 date/time (UTC if no offset)."""

    name = "WHEN"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        text = str(value)
        match = _RELATIVE.match(text)
        if match:
            amount = timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})
            return datetime.now(timezone.utc) - amount
        try:
            when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        except ValueError:
            self.fail(f"{text!r} is neither a duration like 30m, 1h, 2d nor an ISO 8601 time like "
                      "2026-11-29 or 2026-11-29T06:30:00Z", param, ctx)
        return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)


def _import(modules: tuple[str, ...]) -> None:
    """Import the application's saga modules, from the current directory as well."""
    if not modules:
        return
    # Console scripts do not have the working directory on sys.path; an operator
    # running `saga-admin worker --import myapp.sagas` from the project expects it.
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    for module in modules:
        try:
            import_modules([module])
        except ImportError as exc:
            raise CliError(f"cannot import {module!r} (--import): {exc}") from None
        except SagaError as exc:
            raise CliError(f"importing {module!r} (--import) failed: {exc}") from None


def _set_output(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        settings_of(ctx).output = value


_output_option = click.option(
    "-o", "--output", type=click.Choice(["table", "json"]), default=None, expose_value=False,
    callback=_set_output, help="Tables or JSON, like the global option.")

_import_option = click.option(
    "--import", "modules", metavar="MODULE", multiple=True,
    help="Module defining the saga classes (repeatable), e.g. myapp.sagas.")


@click.group(cls=AdminGroup, context_settings={"help_option_names": ["-h", "--help"],
                                               "max_content_width": 100})
@click.option("--database-url", envvar="SAGADSL_DATABASE_URL", default=DEFAULT_DATABASE_URL,
              show_default=True, metavar="URL",
              help="Database holding the sagas [env: SAGADSL_DATABASE_URL]; "
                   "e.g. postgresql+psycopg://app@db/app.")
@click.option("--schema", envvar="SAGADSL_SCHEMA", default=None, metavar="NAME",
              help="PostgreSQL schema of sagadsl's tables [env: SAGADSL_SCHEMA]; "
                   "default: the search path.")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table",
              envvar="SAGADSL_OUTPUT", show_default=True,
              help="Tables for people, JSON for scripts [env: SAGADSL_OUTPUT].")
@click.option("--connect-timeout", type=click.FloatRange(min=0.1), default=5.0, show_default=True,
              metavar="SECONDS", help="Give up connecting to PostgreSQL after this long.")
@click.version_option(__version__, "--version", prog_name="saga-admin")
@click.pass_context
def cli(ctx: click.Context, database_url: str, schema: str | None, output: str,
        connect_timeout: float) -> None:
    """Operate sagadsl sagas: find stuck and dead-lettered ones, see why, retry them.

    Passwords in database URLs are masked in everything printed. Exit codes:
    0 ok, 1 operational error, 2 usage error; errors go to stderr as one line.
    """
    settings = Settings(database_url=database_url, schema=schema or None, output=output,
                        connect_timeout=connect_timeout)
    ctx.obj = settings
    ctx.call_on_close(settings.close)


# -- list ---------------------------------------------------------------------


@cli.command("list")
@click.option("-s", "--status", "statuses", type=click.Choice(_STATUS_NAMES), multiple=True,
              help="Only sagas in this status (repeatable).")
@click.option("--saga", "saga_name", metavar="NAME", help="Only sagas of this registered name.")
@click.option("--since", type=TimeBound(), help="Created at or after: 30m, 1h, 2d or an ISO time.")
@click.option("--until", type=TimeBound(), help="Created before: 30m, 1h, 2d or an ISO time.")
@click.option("--stuck", is_flag=True,
              help="Only active sagas with no progress for longer than their timeouts allow.")
@click.option("--limit", type=click.IntRange(min=0), default=50, show_default=True, metavar="N",
              help="Rows to show.")
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True, metavar="N",
              help="Rows to skip (newest first).")
@_output_option
@click.pass_context
def list_command(ctx: click.Context, statuses: tuple[str, ...], saga_name: str | None,
                 since: datetime | None, until: datetime | None, stuck: bool, limit: int,
                 offset: int) -> None:
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
        page = engine.query(statuses or None, saga_name=saga_name, created_after=since,
                            created_before=until, stuck=stuck, offset=offset, limit=limit)
    now = datetime.now(timezone.utc)
    if settings.json:
        render.print_json({"total": page.total, "offset": offset, "limit": limit,
                           "sagas": [render.summary_json(w, now) for w in page.workflows]})
        return
    parts: list[Any] = []
    if page.workflows:
        grid = render.table("ID", "SAGA", "STATUS", "STEP REACHED", "RETRIES", "AGE", "UPDATED (UTC)")
        for w in page.workflows:
            status = w.status.value + (" (stuck)" if render.is_stuck(w, now) else "")
            reached = render.reached_step(w)
            grid.add_row(render.plain(w.id), render.plain(w.saga_name), status,
                         render.plain(reached.name if reached else None),
                         f"{w.retry_count}/{MAX_RETRY_COUNT}", render.span(now - w.created_at),
                         render.clock_text(w.updated_at))
        parts.append(grid)
    first = offset + 1 if page.workflows else 0
    shown = f"{first}-{offset + len(page.workflows)}" if len(page.workflows) > 1 else str(first)
    parts.append(f"showing {len(page.workflows)} of {page.total}"
                 + (f" (rows {shown})" if offset and page.workflows else ""))
    render.emit(*parts)


# -- show ---------------------------------------------------------------------


@cli.command("show", short_help="Show one saga: input, steps, compensations, error.")
@click.argument("saga_id", metavar="ID")
@_output_option
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


# -- dead-letter --------------------------------------------------------------


@cli.command("dead-letter")
@click.option("--limit", type=click.IntRange(min=0), default=50, show_default=True, metavar="N",
              help="Rows to show.")
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True, metavar="N",
              help="Rows to skip (newest first).")
@_output_option
@click.pass_context
def dead_letter_command(ctx: click.Context, limit: int, offset: int) -> None:
    """List the dead-letter queue: the failing step and both errors.

    A saga lands here when a compensation still failed after its retries.
    Fix the cause, then `saga-admin retry ID`.
    """
    settings = settings_of(ctx)
    engine = settings.engine()
    with database_errors(settings):
        page = engine.query(WorkflowStatus.DEAD_LETTER, offset=offset, limit=limit)
    if settings.json:
        render.print_json({"total": page.total, "offset": offset, "limit": limit,
                           "sagas": [render.dead_letter_json(w) for w in page.workflows]})
        return
    parts: list[Any] = []
    for w in page.workflows:
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
    parts.append(f"showing {len(page.workflows)} of {page.total} in dead letter")
    render.emit(*parts)


# -- retry --------------------------------------------------------------------


@cli.command("retry")
@click.argument("saga_ids", metavar="[ID]...", nargs=-1)
@click.option("--all-dead-letter", is_flag=True, help="Retry every saga in dead letter.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask before --all-dead-letter.")
@click.option("--run", "run_now", is_flag=True,
              help="Drive each retried saga to its end now, in this process (needs --import), "
                   "instead of leaving it to a worker.")
@_import_option
@_output_option
@click.pass_context
def retry_command(ctx: click.Context, saga_ids: tuple[str, ...], all_dead_letter: bool, yes: bool,
                  run_now: bool, modules: tuple[str, ...]) -> None:
    """Move dead-letter sagas back to pending so they continue.

    Each move is atomic and refused, with the reason, when the saga is not in
    dead letter or was already retried 10 times. A retried saga continues
    where it stopped (usually its compensation) with a fresh 15-minute budget.
    Exits 1 if any retry was refused or a --run saga ended in dead letter again.

    \b
    Examples:
      saga-admin retry order-o-1 order-o-2
      saga-admin retry --all-dead-letter --yes
      saga-admin retry order-o-1 --run --import myapp.sagas
    """
    if saga_ids and all_dead_letter:
        raise click.UsageError("give saga IDs or --all-dead-letter, not both", ctx)
    if not saga_ids and not all_dead_letter:
        raise click.UsageError("give the IDs of the sagas to retry, or --all-dead-letter", ctx)
    if run_now and not modules:
        raise click.UsageError("--run needs --import MODULE so the saga classes are known", ctx)
    if modules and not run_now:
        raise click.UsageError("--import is only used with --run", ctx)
    settings = settings_of(ctx)
    engine = settings.engine()
    _import(modules)
    ids = list(saga_ids)
    if all_dead_letter:
        ids = _all_dead_letter_ids(settings)
        if not ids:
            _finish_retry(settings, [], [])
            return
        if not yes and not click.confirm(
                f"Retry {len(ids)} dead-letter saga{'s' if len(ids) != 1 else ''} in "
                f"{settings.masked_url}?", err=True):
            raise click.Abort()
    retried: list[dict[str, Any]] = []
    refused: list[dict[str, Any]] = []
    for saga_id in dict.fromkeys(ids):
        with database_errors(settings):
            try:
                count = engine.retry(saga_id)
            except (SagaNotFoundError, InvalidStateError, RetryCapExceededError) as exc:
                refused.append({"id": saga_id, "code": exc.code, "reason": str(exc)})
                continue
        entry: dict[str, Any] = {"id": saga_id, "retry_count": count, "status": "pending",
                                 "detail": None}
        if run_now:
            entry.update(_drive(settings, saga_id))
        retried.append(entry)
    _finish_retry(settings, retried, refused)
    if refused or any(e["status"] in ("dead_letter", "error") for e in retried):
        ctx.exit(1)


def _all_dead_letter_ids(settings: Settings) -> list[str]:
    engine = settings.engine()
    ids: list[str] = []
    with database_errors(settings):
        while True:
            page = engine.query(WorkflowStatus.DEAD_LETTER, offset=len(ids), limit=_PAGE)
            ids.extend(w.id for w in page.workflows)
            if len(page.workflows) < _PAGE:
                return ids


@contextlib.contextmanager
def _outcomes_reported_here() -> Iterator[None]:
    """Keep the library's log records off the terminal while this command reports the outcome.

    Handlers the user configured still receive them; without any, Python's
    last-resort handler would print each warning a second time, unformatted.
    """
    quiet = logging.NullHandler()
    library_logger = logging.getLogger("sagadsl")
    library_logger.addHandler(quiet)
    try:
        yield
    finally:
        library_logger.removeHandler(quiet)


def _drive(settings: Settings, saga_id: str) -> dict[str, Any]:
    """Resume a retried saga now and say how it ended."""
    engine = settings.engine()
    try:
        with database_errors(settings), _outcomes_reported_here():
            try:
                result = engine.resume(saga_id)
            except SagaFailedError as exc:
                return {"status": "failed", "detail": str(exc)}
            except (CompensationFailedError, DeadLetterError) as exc:
                return {"status": "dead_letter", "detail": str(exc)}
    except CliError as exc:
        return {"status": "error", "detail": exc.format_message()}
    return {"status": result.status.value, "detail": None}


def _finish_retry(settings: Settings, retried: list[dict[str, Any]],
                  refused: list[dict[str, Any]]) -> None:
    if settings.json:
        render.print_json({"retried": retried, "refused": refused})
        return
    for entry in retried:
        line = f"retried {entry['id']} (retry {entry['retry_count']} of {MAX_RETRY_COUNT}): "
        if entry["status"] == "pending":
            line += "pending, a worker will continue it"
        else:
            line += f"now {entry['status']}" + (f": {entry['detail']}" if entry["detail"] else "")
        click.echo(line)
    for entry in refused:
        click.echo(f"refused {entry['id']}: {entry['reason']}", err=True)
    if not retried and not refused:
        click.echo("nothing to retry: the dead-letter queue is empty")


# -- stats --------------------------------------------------------------------


def _stats(settings: Settings) -> dict[str, Any]:
    engine = settings.engine()
    now = datetime.now(timezone.utc)
    with database_errors(settings):
        by_status = engine.storage.count_by_status()
        pending = by_status.get(WorkflowStatus.PENDING, 0)
        oldest = None
        if pending:
            page = engine.query(WorkflowStatus.PENDING, offset=pending - 1, limit=1)
            oldest = page.workflows[0] if page.workflows else None
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


@cli.command("stats", short_help="Count sagas per status; stuck and dead-letter counts.")
@click.option("-w", "--watch", is_flag=True, help="Refresh until Ctrl-C.")
@click.option("--interval", type=click.FloatRange(min=0.01), default=2.0, show_default=True,
              metavar="SECONDS", help="Seconds between refreshes with --watch.")
@click.option("--count", "refreshes", type=click.IntRange(min=1), default=None, metavar="N",
              help="With --watch, stop after N refreshes (default: until Ctrl-C).")
@_output_option
@click.pass_context
def stats_command(ctx: click.Context, watch: bool, interval: float, refreshes: int | None) -> None:
    """Count sagas per status, with the oldest pending, stuck and dead-letter counts.

    With --watch the numbers refresh in place on a terminal; when stdout is
    not a terminal each refresh is printed after the previous one (JSON: one
    document per line).
    """
    settings = settings_of(ctx)
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


# -- graph --------------------------------------------------------------------


@cli.command("graph", short_help="Draw the step graph of a saga class.")
@click.argument("saga_name", metavar="SAGA")
@_import_option
@click.option("-f", "--format", "fmt", type=click.Choice(["text", "mermaid", "dot"]), default="text",
              show_default=True, help="Plain text, a Mermaid flowchart or Graphviz DOT.")
@_output_option
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
    _import(modules)
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


# -- worker -------------------------------------------------------------------


@cli.command("worker")
@_import_option
@click.option("-c", "--concurrency", type=click.IntRange(min=1), default=4, show_default=True, metavar="N",
              help="Sagas driven at once.")
@click.option("--poll-interval", type=click.FloatRange(min=0.01), default=1.0, show_default=True,
              metavar="SECONDS", help="Seconds between polls when idle.")
@click.option("--once", is_flag=True, help="Exit once nothing is left to do (for cron and scripts).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="info", show_default=True, help="Logging level on stderr.")
@_output_option
@click.pass_context
def worker_command(ctx: click.Context, modules: tuple[str, ...], concurrency: int,
                   poll_interval: float, once: bool, log_level: str) -> None:
    """Run a recovery worker until SIGTERM or Ctrl-C.

    It runs submitted sagas, resumes sagas whose executor died and continues
    sagas moved back from dead letter by `retry`. Any number of workers can
    share one PostgreSQL database. On SIGTERM/SIGINT it stops claiming and
    lets running sagas finish.

    \b
    Example:
      saga-admin worker --import myapp.sagas --concurrency 8
    """
    if not modules:
        raise click.UsageError("give --import MODULE for each module that defines sagas, so the "
                               "worker can rebuild them", ctx)
    settings = settings_of(ctx)
    _import(modules)
    engine = settings.engine()
    handler = logging.StreamHandler(sys.stderr)
    # The worker logs its storage (with the URL); mask any password the formatter would write.
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    library_logger = logging.getLogger("sagadsl")
    previous_level = library_logger.level
    library_logger.addHandler(handler)
    library_logger.setLevel(log_level.upper())
    try:
        with database_errors(settings):
            stats = engine.run_worker(concurrency=concurrency, poll_interval=poll_interval,
                                      stop_when_idle=once, install_signal_handlers=True)
    finally:
        library_logger.removeHandler(handler)
        library_logger.setLevel(previous_level)
    document = {"completed": stats.completed, "failed": stats.failed,
                "dead_lettered": stats.dead_lettered, "locked": stats.locked,
                "unknown": stats.unknown, "errors": stats.errors}
    if settings.json:
        render.print_json(document)
    else:
        click.echo("worker stopped: " + ", ".join(f"{k} {v}" for k, v in document.items()))


# -- db -----------------------------------------------------------------------


@cli.group("db", short_help="Install, inspect and check sagadsl's tables.")
def db_group() -> None:
    """Install, inspect and check sagadsl's tables (Alembic migrations)."""


def _revision_document(settings: Settings, current: str | None) -> dict[str, Any]:
    head = head_revision()
    return {"database": settings.masked_url, "schema": settings.schema, "current": current,
            "head": head, "up_to_date": current == head}


@db_group.command("upgrade", short_help="Create or upgrade sagadsl's tables.")
@_output_option
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
@_output_option
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
@_output_option
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


def main(args: list[str] | None = None) -> int:
    """Run ``saga-admin`` and return its exit code (the console script's entry point)."""
    code: int = cli.main(args=args, prog_name="saga-admin", standalone_mode=False)
    return code
