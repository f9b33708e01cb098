"""The console's ASGI application: pages for people, JSON for scripts, actions for operators.

Pages are rendered on the server from Jinja2 templates with autoescaping on,
so every string that came from a saga (ids, names, inputs, results, errors,
tracebacks) reaches the browser as text. Saga ids travel as query parameters
(``/saga?id=...``), URL-encoded, because an id may hold ``/``, ``?``, ``#``
or spaces. The JSON documents are the ones ``saga-admin --output json``
prints (:mod:`sagadsl.cli.render`), so a script can move between the two.

The engine's calls block on the database; Starlette runs the page handlers
in its thread pool, so a slow query does not stall the event loop.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from .. import __version__
from ..cli.render import dead_letter_json, detail_json, iso, span, summary_json
from ..engine import SagaEngine
from ..errors import SagaError, StorageError, UnknownSagaError
from ..limits import MAX_RETRY_COUNT
from ..records import QueryResult, WorkflowRecord
from ..registry import lookup, registered_names
from ..status import ACTIVE_STATUSES, WorkflowStatus
from .drawing import step_graph, timeline
from .security import CSRF_COOKIE, Csrf, Guard, base_path

__all__ = ["create_app"]

_STATIC = Path(__file__).parent / "static"
_STATUSES = [s.value for s in WorkflowStatus]
_DEFAULT_LIMIT = 50
_MAX_LIMIT = 500
_OVERVIEW_ROWS = 20
_REFRESH_SECONDS = 5
# Saga names on the overview: the registered ones and those of the newest sagas.
_NAMES_FROM_RECENT = 200
_MAX_NAMES = 50


class BadRequest(Exception):
    """A query parameter or form field the console cannot use; shown to the operator as 400."""


@dataclass(frozen=True)
class ListFilter:
    """The filters of the list page and of ``/api/sagas``, parsed from the query string."""

    statuses: tuple[str, ...] = ()
    saga_name: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    saga_id: str | None = None
    stuck: bool = False
    offset: int = 0
    limit: int = _DEFAULT_LIMIT
    raw: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, request: Request) -> ListFilter:
        """Read the filters from ``request``'s query string.

        Raises:
            BadRequest: a status, time, offset or limit that cannot be used.
        """
        params = request.query_params
        statuses = tuple(s for s in params.getlist("status") if s)
        unknown = [s for s in statuses if s not in _STATUSES]
        if unknown:
            raise BadRequest(f"unknown status {unknown[0]!r}; use one of {', '.join(_STATUSES)}")
        return cls(
            statuses=statuses,
            saga_name=params.get("saga") or None,
            created_after=_time(params.get("created_after"), "created_after"),
            created_before=_time(params.get("created_before"), "created_before"),
            saga_id=params.get("id") or None,
            stuck=params.get("stuck") in ("1", "true", "on", "yes"),
            offset=_count(params.get("offset"), "offset", 0, None),
            limit=_count(params.get("limit"), "limit", _DEFAULT_LIMIT, _MAX_LIMIT),
            raw={k: v for k, v in params.items() if k not in ("offset", "token")},
        )

    def run(self, engine: SagaEngine) -> QueryResult:
        """The page of sagas these filters select (an id search is an exact match)."""
        if self.saga_id is not None:
            record = engine.get(self.saga_id)
            found = [] if record is None else [record]
            return QueryResult(workflows=found[self.offset:self.offset + self.limit], total=len(found))
        return engine.query(self.statuses or None, saga_name=self.saga_name,
                            created_after=self.created_after, created_before=self.created_before,
                            stuck=self.stuck, offset=self.offset, limit=self.limit)

    def query_string(self, **changes: Any) -> str:
        """These filters as a query string, with ``changes`` applied (None removes a key)."""
        items: list[tuple[str, str]] = [(k, v) for k, v in self.raw.items() if k not in changes and k != "status"]
        if "status" not in changes:
            items += [("status", s) for s in self.statuses]
        items += [(k, str(v)) for k, v in changes.items() if v is not None]
        return _query(items)


def _query(items: list[tuple[str, str]]) -> str:
    """A query string with every reserved character percent-encoded (``/`` and spaces too)."""
    return "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in items)


def _time(value: str | None, name: str) -> datetime | None:
    if not value:
        return None
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"{name}={value!r} is not an ISO 8601 date or time such as 2026-11-29 or "
                         "2026-11-29T06:30 (UTC unless it has an offset)") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)


def _count(value: str | None, name: str, default: int, most: int | None) -> int:
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise BadRequest(f"{name}={value!r} is not a whole number") from None
    if number < 0 or (most is not None and number > most):
        raise BadRequest(f"{name}={number} is out of range (0 to {most if most is not None else 'any'})")
    return number


def _json(document: Any, status_code: int = 200) -> Response:
    body = json.dumps(document, ensure_ascii=False, default=str, indent=2)
    return Response(body, status_code=status_code, media_type="application/json")


class Console:
    """The handlers of one console over one engine; :func:`create_app` wires them to routes."""

    def __init__(self, engine: SagaEngine, *, allow_actions: bool, token: str | None) -> None:
        self.engine = engine
        self.allow_actions = allow_actions
        self.protected = token is not None
        self.csrf = Csrf()
        env = Environment(loader=PackageLoader("sagadsl.web", "templates"),
                          autoescape=select_autoescape(default=True, default_for_string=True),
                          trim_blocks=True, lstrip_blocks=True)
        env.filters["span"] = span
        env.filters["clock"] = _clock
        env.filters["pretty"] = _pretty
        self.templates = Jinja2Templates(env=env)

    # -- rendering -------------------------------------------------------------

    def page(self, request: Request, template: str, context: dict[str, Any],
             status_code: int = 200) -> Response:
        """Render ``template`` with the context every page needs, setting the CSRF cookie if new."""
        base = base_path(request.scope)
        cookie, new = self.csrf.cookie_of(request)

        def link(path: str, **params: Any) -> str:
            query = _query([(k, str(v)) for k, v in params.items() if v is not None])
            return f"{base}{path}" + (f"?{query}" if query else "")

        response = self.templates.TemplateResponse(request, template, {
            "base": base, "link": link, "csrf_token": self.csrf.token_for(cookie),
            "allow_actions": self.allow_actions,
            "protected": self.protected, "version": __version__, "statuses": _STATUSES,
            "max_retries": MAX_RETRY_COUNT, "now": datetime.now(timezone.utc), **context,
        }, status_code=status_code)
        if new:
            response.set_cookie(CSRF_COOKIE, cookie, httponly=True, samesite="strict",
                                path=base or "/", secure=request.url.scheme == "https")
        return response

    def problem(self, request: Request, status_code: int, title: str, message: str) -> Response:
        """An error page (or a JSON error under ``/api/``) whose message is shown as text."""
        if request.url.path.startswith(f"{base_path(request.scope)}/api/"):
            return _json({"error": message}, status_code)
        return self.page(request, "problem.html", {"title": title, "message": message}, status_code)

    # -- data ------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """What ``saga-admin stats --output json`` prints, and the counts per saga name."""
        engine = self.engine
        now = datetime.now(timezone.utc)
        by_status = engine.count_by_status()
        pending = by_status.get(WorkflowStatus.PENDING, 0)
        oldest = None
        if pending:
            page = engine.query(WorkflowStatus.PENDING, offset=pending - 1, limit=1)
            oldest = page.workflows[0] if page.workflows else None
        return {
            "at": iso(now),
            "total": sum(by_status.values()),
            "by_status": {status.value: by_status.get(status, 0) for status in WorkflowStatus},
            "oldest_pending": None if oldest is None else {
                "id": oldest.id, "saga": oldest.saga_name, "created_at": iso(oldest.created_at),
                "age_seconds": round((now - oldest.created_at).total_seconds(), 3)},
            "stuck": engine.query(stuck=True, limit=0).total,
            "dead_letter": by_status.get(WorkflowStatus.DEAD_LETTER, 0),
            "by_name": self.counts_by_name(),
        }

    def counts_by_name(self) -> dict[str, dict[str, int]]:
        """Sagas per name and status, for the registered names and those of the newest sagas.

        The storage has no grouped count by name, so this asks one indexed
        count per name and status (at most 50 names).
        """
        recent = self.engine.query(limit=_NAMES_FROM_RECENT).workflows
        names = sorted(set(registered_names()) | {w.saga_name for w in recent})[:_MAX_NAMES]
        table: dict[str, dict[str, int]] = {}
        for name in names:
            counts = {s.value: self.engine.query(s, saga_name=name, limit=0).total for s in WorkflowStatus}
            if any(counts.values()):
                table[name] = counts
        return table

    def overview_data(self) -> dict[str, Any]:
        """Everything the overview shows."""
        now = datetime.now(timezone.utc)
        dead = self.engine.query(WorkflowStatus.DEAD_LETTER, limit=_OVERVIEW_ROWS)
        stuck = self.engine.query(stuck=True, limit=_OVERVIEW_ROWS)
        return {"stats": self.stats(),
                "dead_letter": [dead_letter_json(w) for w in dead.workflows], "dead_total": dead.total,
                "stuck_sagas": [summary_json(w, now) for w in stuck.workflows], "stuck_total": stuck.total}

    def saga_data(self, record: WorkflowRecord) -> dict[str, Any]:
        """Everything a saga's page shows."""
        now = datetime.now(timezone.utc)
        detail = detail_json(record, now)
        bars, spanned = timeline(detail["steps"], now)
        try:
            definition = lookup(record.saga_name).definition
        except UnknownSagaError:
            definition = None
        graph = None
        if definition is not None:
            graph = step_graph(definition, {s.name: s.status.value for s in record.steps})
        kinds = {}
        if definition is not None:
            kinds = {s.name: getattr(s, "kind", None) for s in definition.steps}
        return {
            "record": record, "detail": detail, "bars": bars, "spanned": spanned, "graph": graph,
            "kinds": kinds, "registered": definition is not None,
            "locks": getattr(record, "locks", None), "past_pivot": getattr(record, "past_pivot", None),
            "can_retry": record.status == WorkflowStatus.DEAD_LETTER,
            "cancellable": (record.status == WorkflowStatus.PENDING and not record.past_pivot
                            and not record.pivot_started and record.cancel_reason is None),
        }

    # -- pages -----------------------------------------------------------------

    def overview(self, request: Request) -> Response:
        refresh = request.query_params.get("refresh") != "0"
        return self.page(request, "overview.html", {**self.overview_data(), "refresh": refresh,
                                                     "refresh_seconds": _REFRESH_SECONDS,
                                                     "nav": "overview"})

    def list_page(self, request: Request) -> Response:
        try:
            flt = ListFilter.parse(request)
        except BadRequest as exc:
            return self.problem(request, 400, "Bad filter", str(exc))
        result = flt.run(self.engine)
        now = datetime.now(timezone.utc)
        nav = ("dead_letter" if flt.statuses == ("dead_letter",) and not flt.stuck
               else "stuck" if flt.stuck and not flt.statuses else "list")
        return self.page(request, "list.html", {
            "flt": flt, "total": result.total, "rows": [summary_json(w, now) for w in result.workflows],
            "names": sorted(set(registered_names()) | ({flt.saga_name} if flt.saga_name else set())),
            "nav": nav,
        })

    def saga_page(self, request: Request) -> Response:
        saga_id = request.query_params.get("id")
        if not saga_id:
            return self.problem(request, 400, "No saga id", "give the saga's id: /saga?id=ID")
        record = self.engine.get(saga_id)
        if record is None:
            return self.problem(request, 404, "No such saga", f"no saga has the id {saga_id!r}")
        return self.page(request, "saga.html", {**self.saga_data(record), "nav": "list"})

    # -- JSON ------------------------------------------------------------------

    def api_list(self, request: Request) -> Response:
        try:
            flt = ListFilter.parse(request)
        except BadRequest as exc:
            return _json({"error": str(exc)}, 400)
        result = flt.run(self.engine)
        now = datetime.now(timezone.utc)
        return _json({"total": result.total, "offset": flt.offset, "limit": flt.limit,
                      "sagas": [summary_json(w, now) for w in result.workflows]})

    def api_saga(self, request: Request) -> Response:
        saga_id = str(request.path_params["saga_id"])
        record = self.engine.get(saga_id)
        if record is None:
            return _json({"error": f"no saga has the id {saga_id!r}"}, 404)
        return _json(detail_json(record, datetime.now(timezone.utc)))

    def api_stats(self, request: Request) -> Response:
        return _json(self.stats())

    # -- actions (only routed with allow_actions) ------------------------------

    async def action(self, request: Request) -> Response:
        """``POST /saga/retry`` and ``/saga/cancel``: confirm first, then act and show the outcome."""
        verb = str(request.path_params["verb"])
        if verb not in ("retry", "cancel"):
            return self.problem(request, 404, "Not found", f"nothing here at {request.url.path}")
        form = await request.form()
        saga_id, reason = str(form.get("id") or ""), str(form.get("reason") or "").strip()
        refusal = self.csrf.check(request, str(form.get("csrf") or ""))
        if refusal is not None:
            return self.problem(request, 403, "Refused", refusal)
        if not saga_id:
            return self.problem(request, 400, "No saga id", "the form did not name a saga")
        record = await run_in_threadpool(self.engine.get, saga_id)
        if record is None:
            return self.problem(request, 404, "No such saga", f"no saga has the id {saga_id!r}")
        if form.get("confirmed") != "yes":
            return self.page(request, "confirm.html", {"verb": verb, "record": record, "reason": reason,
                                                       "nav": "list"})
        outcome: str | None = None
        error: str | None = None
        try:
            if verb == "retry":
                count = await run_in_threadpool(self.engine.retry, saga_id)
                outcome = f"moved back to pending (retry {count} of {MAX_RETRY_COUNT}); a worker continues it"
            else:
                done = await run_in_threadpool(self.engine.cancel, saga_id,
                                               reason or "cancelled from the web console")
                outcome = ("cancelled; it had not started, so there was nothing to compensate"
                           if done == "cancelled" else
                           "cancellation requested; its executor compensates it at its next commit")
        except StorageError:
            raise
        except SagaError as exc:
            error = str(exc)
        after = await run_in_threadpool(self.engine.get, saga_id)
        return self.page(request, "done.html", {"verb": verb, "saga_id": saga_id, "outcome": outcome,
                                                "error": error, "record": after, "nav": "list"},
                         status_code=200 if error is None else 409)


def _clock(value: Any) -> str:
    """An ISO time from the JSON documents as ``YYYY-MM-DD HH:MM:SS`` (UTC)."""
    if not value:
        return "-"
    return str(value).replace("T", " ").split(".")[0].rstrip("Z")


def _pretty(value: Any) -> str:
    """A stored JSON value, indented for a ``<pre>``."""
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def create_app(engine: SagaEngine, allow_actions: bool = False, token: str | None = None) -> Starlette:
    """The web console over ``engine``, as an ASGI application to serve or to mount.

    Mount it in an existing service with ``app.mount("/sagas", create_app(engine))``
    (FastAPI or Starlette), or run it with ``saga-admin serve``.

    Args:
        engine: The engine whose sagas the console shows.
        allow_actions: Offer retry (and, where the engine has it, cancel). Without it
            no action route exists: the console only reads.
        token: When set, every request must carry it (``Authorization: Bearer``,
            or ``?token=`` once, which sets a session cookie).

    Raises:
        ValueError: ``token`` is an empty string.
    """
    if token is not None and not token.strip():
        raise ValueError("token must not be empty; pass None for a console without a token")
    console = Console(engine, allow_actions=allow_actions, token=token)
    routes: list[BaseRoute] = [
        Route("/", console.overview, name="overview"),
        Route("/sagas", console.list_page, name="list"),
        Route("/saga", console.saga_page, name="saga"),
        Route("/api/stats", console.api_stats, name="api_stats"),
        Route("/api/sagas", console.api_list, name="api_list"),
        Route("/api/sagas/{saga_id:path}", console.api_saga, name="api_saga"),
        Mount("/static", StaticFiles(directory=_STATIC), name="static"),
    ]
    if allow_actions:
        routes.append(Route("/saga/{verb:str}", console.action, methods=["POST"], name="action"))

    async def storage_failed(request: Request, exc: Exception) -> Response:
        return console.problem(request, 503, "Database unavailable", str(exc))

    async def not_found(request: Request, exc: Exception) -> Response:
        status_code = int(getattr(exc, "status_code", 404))
        return console.problem(request, status_code, "Not found" if status_code == 404 else "Not allowed",
                               f"nothing here at {request.url.path}" if status_code == 404
                               else f"{request.method} is not allowed here")

    app = Starlette(routes=routes, middleware=[Middleware(Guard, token=token)],
                    exception_handlers={StorageError: storage_failed, 404: not_found, 405: not_found})
    app.state.console = console
    return app
