"""The options several ``saga-admin`` commands share: output, ``--import``, and paging and filters.

Each is one decorator, so that a command states which it takes and the help
text of an option is written once.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

import click

from ..engine import SagaEngine
from ..errors import SagaError
from ..records import QueryResult
from ..registry import import_modules
from ..status import WorkflowStatus
from .app import CliError, settings_of

__all__ = ["SagaPage", "TimeBound", "Duration", "import_option", "import_saga_modules", "output_option",
           "page_options"]

R = TypeVar("R")

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_STATUS_NAMES = [s.value for s in WorkflowStatus]


class TimeBound(click.ParamType):  # type: ignore[type-arg]  # generic only in click >= 8.2
    """A point in time: ``30m``, ``1h``, ``2d`` ago, or an ISO 8601 date/time (UTC if no offset)."""

    name = "WHEN"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        text = str(value)
        if _RELATIVE.match(text):
            return datetime.now(timezone.utc) - Duration().convert(text, param, ctx)
        try:
            when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        except ValueError:
            self.fail(f"{text!r} is neither a duration like 30m, 1h, 2d nor an ISO 8601 time like "
                      "2026-11-29 or 2026-11-29T06:30:00Z", param, ctx)
        return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)


class Duration(click.ParamType):  # type: ignore[type-arg]  # generic only in click >= 8.2
    """A length of time: ``90s``, ``30m``, ``12h``, ``30d``, ``2w``."""

    name = "DURATION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> timedelta:
        if isinstance(value, timedelta):
            return value
        match = _RELATIVE.match(str(value))
        if not match:
            self.fail(f"{value!r} is not a duration like 90s, 30m, 12h, 30d or 2w", param, ctx)
        return timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})


def _set_output(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        settings_of(ctx).output = value


#: ``-o/--output`` after the command name, overriding the global option.
output_option = click.option(
    "-o", "--output", type=click.Choice(["table", "json"]), default=None, expose_value=False,
    callback=_set_output, help="Tables or JSON, like the global option.")

#: ``--import MODULE`` (repeatable), passed to the command as ``modules``.
import_option = click.option(
    "--import", "modules", metavar="MODULE", multiple=True,
    help="Module defining the saga classes (repeatable), e.g. myapp.sagas.")


def import_saga_modules(modules: tuple[str, ...]) -> None:
    """Import the application's saga modules (``--import``), from the current directory as well."""
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


@dataclass(frozen=True)
class SagaPage:
    """The sagas a listing command shows: its filters and one page of them, newest first."""

    statuses: tuple[WorkflowStatus, ...] = ()
    saga_name: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    stuck: bool = False
    offset: int = 0
    limit: int = 50

    def fetch(self, engine: SagaEngine) -> QueryResult:
        """This page of the matching sagas, and how many match in all."""
        return engine.query(self.statuses or None, saga_name=self.saga_name, created_after=self.since,
                            created_before=self.until, stuck=self.stuck, offset=self.offset,
                            limit=self.limit)


_FILTER_OPTIONS = (
    click.option("-s", "--status", "statuses", type=click.Choice(_STATUS_NAMES), multiple=True,
                 help="Only sagas in this status (repeatable)."),
    click.option("--saga", "saga_name", metavar="NAME", help="Only sagas of this registered name."),
    click.option("--since", type=TimeBound(), help="Created at or after: 30m, 1h, 2d or an ISO time."),
    click.option("--until", type=TimeBound(), help="Created before: 30m, 1h, 2d or an ISO time."),
    click.option("--stuck", is_flag=True,
                 help="Only active sagas with no progress for longer than their timeouts allow."),
)
_PAGING_OPTIONS = (
    click.option("--limit", type=click.IntRange(min=0), default=50, show_default=True, metavar="N",
                 help="Rows to show."),
    click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True, metavar="N",
                 help="Rows to skip (newest first)."),
)


def page_options(*, status: WorkflowStatus | None = None
                 ) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """Give a listing command ``--limit``/``--offset`` and the filters, as one ``page: SagaPage``.

    Args:
        status: The one status the command lists (``dead-letter``); it then
            takes no filter options, only the paging ones.
    """
    options = _PAGING_OPTIONS if status is not None else _FILTER_OPTIONS + _PAGING_OPTIONS

    def decorate(command: Callable[..., R]) -> Callable[..., R]:
        @functools.wraps(command)
        def with_page(*args: Any, limit: int, offset: int, statuses: tuple[str, ...] = (),
                      saga_name: str | None = None, since: datetime | None = None,
                      until: datetime | None = None, stuck: bool = False, **kwargs: Any) -> R:
            chosen = (status,) if status is not None else tuple(WorkflowStatus(s) for s in statuses)
            page = SagaPage(statuses=chosen, saga_name=saga_name, since=since, until=until,
                            stuck=stuck, offset=offset, limit=limit)
            return command(*args, page=page, **kwargs)

        # click lists a command's options in the order its decorators are written.
        decorated: Callable[..., R] = with_page
        for option in reversed(options):
            decorated = option(decorated)
        return decorated

    return decorate
