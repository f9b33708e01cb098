"""The commands that make sagas go: ``retry`` out of dead letter, and the recovery ``worker``."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import Any

import click

from ..errors import (
    CompensationFailedError,
    DeadLetterError,
    InvalidStateError,
    RetryCapExceededError,
    SagaCancelledError,
    SagaFailedError,
    SagaNotFoundError,
)
from ..limits import MAX_RETRY_COUNT
from ..status import WorkflowStatus
from . import render
from .app import CliError, RedactingFormatter, Settings, cli, database_errors, settings_of
from .options import import_option, import_saga_modules, output_option

__all__ = ["retry_command", "worker_command"]

_PAGE = 500


@cli.command("retry")
@click.argument("saga_ids", metavar="[ID]...", nargs=-1)
@click.option("--all-dead-letter", is_flag=True, help="Retry every saga in dead letter.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask before --all-dead-letter.")
@click.option("--run", "run_now", is_flag=True,
              help="Drive each retried saga to its end now, in this process (needs --import), "
                   "instead of leaving it to a worker.")
@import_option
@output_option
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
    import_saga_modules(modules)
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
            except SagaCancelledError as exc:
                return {"status": "cancelled", "detail": str(exc)}
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


@cli.command("worker")
@import_option
@click.option("-c", "--concurrency", type=click.IntRange(min=1), default=4, show_default=True, metavar="N",
              help="Sagas driven at once.")
@click.option("--poll-interval", type=click.FloatRange(min=0.01), default=1.0, show_default=True,
              metavar="SECONDS", help="Seconds between polls when idle.")
@click.option("--once", is_flag=True, help="Exit once nothing is left to do (for cron and scripts).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="info", show_default=True, help="Logging level on stderr.")
@output_option
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
    import_saga_modules(modules)
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
