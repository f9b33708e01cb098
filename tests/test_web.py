"""The web console (``sagadsl.web``) through Starlette's test client, on SQLite and PostgreSQL.

The database is filled by :func:`tests.web_sagas.populate`: the CLI's four
shipping sagas (``ship-ok`` completed, ``ship-lost`` failed, ``ship-jammed``
in dead letter, ``ship-waiting`` pending and stuck), three bookings
(``trip-3`` failed), the booking ``trip-jammed`` in dead letter, and a
dead-lettered saga whose id, input, errors and tracebacks are markup
(:data:`tests.web_sagas.HOSTILE_ID`).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, text
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient

from sagadsl import SagaEngine
from sagadsl.cli import cli
from sagadsl.cli.render import iso
from sagadsl.errors import InvalidStateError, StorageError, UnknownSagaError
from sagadsl.storage import SqlStorage
from sagadsl.web import app as web_app
from sagadsl.web import create_app
from sagadsl.web.drawing import Bar, step_graph, timeline
from tests import web_sagas
from tests.conftest import require_postgres
from tests.web_sagas import HOSTILE, HOSTILE_ID

CLEAN_ENV: dict[str, str | None] = {"SAGADSL_DATABASE_URL": None, "SAGADSL_SCHEMA": None,
                                    "SAGADSL_OUTPUT": None, "SAGADSL_WEB_TOKEN": None}


@dataclass
class Db:
    """A populated database: its URL, schema and an engine on it."""

    url: str
    schema: str | None
    engine: SagaEngine

    def status(self, saga_id: str) -> str:
        record = self.engine.get(saga_id)
        assert record is not None
        return record.status.value

    def cli_json(self, *args: str) -> Any:
        options = ["--database-url", self.url] + (["--schema", self.schema] if self.schema else [])
        result = CliRunner().invoke(cli, [*options, "--output", "json", *args], prog_name="saga-admin",
                                    env=CLEAN_ENV)
        assert result.exit_code == 0, result.output
        return json.loads(result.output)


def _open(url: str, schema: str | None) -> Db:
    web_sagas.populate(url, schema)
    return Db(url, schema, SagaEngine(SqlStorage(url, schema=schema)))


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def shared(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Db]:
    """One populated database per backend for the tests that only read."""
    if request.param == "sqlite":
        db = _open(f"sqlite:///{tmp_path_factory.mktemp('web') / 'sagas.db'}", None)
        yield db
        db.engine.close()
        return
    url = require_postgres()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    SqlStorage(url, schema=schema, auto_migrate=True).close()
    db = _open(url, schema)
    try:
        yield db
    finally:
        db.engine.close()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def db(durable_url: tuple[str, str | None]) -> Iterator[Db]:
    """A fresh populated database per test, for the tests that act on sagas."""
    url, schema = durable_url
    opened = _open(url, schema)
    yield opened
    opened.engine.close()


@pytest.fixture
def client(shared: Db) -> TestClient:
    return TestClient(create_app(shared.engine))


def saga_url(saga_id: str) -> str:
    return f"/saga?id={quote(saga_id, safe='')}"


def texts(html: str, css_class: str) -> list[str]:
    """The text of each element with ``css_class`` (tags removed, entities decoded)."""
    found = re.findall(rf'class="[^"]*\b{re.escape(css_class)}\b[^"]*"[^>]*>(.*?)</', html, re.DOTALL)
    return [unescape(re.sub(r"<[^>]+>", "", t)).strip() for t in found]


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert match, "the page has no CSRF field"
    return match.group(1)


# -- overview ------------------------------------------------------------------


def test_the_overview_counts_sagas_by_status(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    tiles = re.findall(r'<span class="n">(\d+)</span><span class="label">([^<]+)</span>', page.text)
    assert {label: int(n) for n, label in tiles} == {
        "pending": 1, "compensating": 0, "completed": 3, "failed": 2, "dead letter": 3, "cancelled": 0,
        "stuck": 1}


def test_the_overview_lists_the_dead_letter_queue_with_both_errors(client: TestClient) -> None:
    page = client.get("/").text
    section = page.split("<h2>Dead letter")[1].split("</section>")[0]
    assert f'href="{saga_url("ship-jammed")}"' in section
    assert "RuntimeError: carrier rejected parcel jammed: over the weight limit" in section
    assert "ConnectionError: refund of ch-jammed refused: payments service unavailable" in section
    assert '<span class="count">3</span>' in section


def test_the_overview_lists_stuck_sagas(client: TestClient) -> None:
    section = client.get("/").text.split("<h2>Stuck")[1].split("</section>")[0]
    assert f'href="{saga_url("ship-waiting")}"' in section
    assert "ship-jammed" not in section


def test_the_overview_counts_sagas_by_name_and_status(client: TestClient) -> None:
    section = client.get("/").text.split("<h2>By saga name")[1].split("</section>")[0]
    rows = re.findall(r"<tr><td><a [^>]*>([^<]+)</a></td>(.*?)</tr>", section, re.DOTALL)
    counts = {name: [int(n) for n in re.findall(r">(\d+)<", cells)] for name, cells in rows}
    # pending, compensating, completed, failed, dead letter, cancelled, total
    assert counts == {"demo.booking": [0, 0, 2, 1, 1, 0, 4], "demo.hostile": [0, 0, 0, 0, 1, 0, 1],
                      "demo.shipping": [1, 0, 1, 1, 1, 0, 4]}


def test_the_overview_refreshes_itself_unless_paused(client: TestClient) -> None:
    assert '<meta http-equiv="refresh" content="5">' in client.get("/").text
    assert 'http-equiv="refresh"' not in client.get("/?refresh=0").text


# -- list ----------------------------------------------------------------------


def ids_on(page: str) -> list[str]:
    return [unescape(i) for i in re.findall(r'<a class="id" href="[^"]*">([^<]*)</a>', page)]


def test_the_list_shows_every_saga_newest_first_with_the_total(client: TestClient, shared: Db) -> None:
    page = client.get("/sagas").text
    newest_first = [w.id for w in shared.engine.query(limit=100).workflows]
    assert ids_on(page) == newest_first
    assert f"1–{len(newest_first)} of {len(newest_first)}" in page


@pytest.mark.parametrize(("query", "expected"), [
    ("status=dead_letter", {"ship-jammed", "trip-jammed", HOSTILE_ID}),
    ("status=failed&status=pending", {"ship-lost", "trip-3", "ship-waiting"}),
    ("saga=demo.booking", {"trip-1", "trip-2", "trip-3", "trip-jammed"}),
    ("saga=demo.booking&status=failed", {"trip-3"}),
    ("stuck=1", {"ship-waiting"}),
    ("id=trip-2", {"trip-2"}),
    ("id=trip", set()),
])
def test_the_list_filters_by_status_name_stuck_and_exact_id(client: TestClient, query: str,
                                                            expected: set[str]) -> None:
    assert set(ids_on(client.get(f"/sagas?{query}").text)) == expected


def test_the_list_filters_by_created_range(client: TestClient) -> None:
    hour_ago = (datetime.now(timezone.utc) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S")
    assert set(ids_on(client.get(f"/sagas?created_before={hour_ago}").text)) == {"ship-waiting"}
    assert "ship-waiting" not in ids_on(client.get(f"/sagas?created_after={hour_ago}").text)


def test_the_list_pages_with_offset_and_limit_keeping_the_filters(client: TestClient, shared: Db) -> None:
    everything = [w.id for w in shared.engine.query(limit=100).workflows]
    page = client.get("/sagas?limit=3&offset=3").text
    assert ids_on(page) == everything[3:6]
    assert f"4–6 of {len(everything)}" in page
    filtered = client.get("/sagas?saga=demo.booking&limit=2").text
    older = re.search(r'rel="next" href="([^"]+)"', filtered)
    assert older and unescape(older.group(1)) == "/sagas?saga=demo.booking&limit=2&offset=2"
    assert ids_on(client.get(unescape(older.group(1))).text) == ["trip-2", "trip-1"]


@pytest.mark.parametrize(("query", "message"), [
    ("status=done", "unknown status &#39;done&#39;; use one of pending"),
    ("created_after=yesterday", "created_after=&#39;yesterday&#39; is not an ISO 8601 date or time"),
    ("limit=-1", "limit=-1 is out of range"),
    ("offset=x", "offset=&#39;x&#39; is not a whole number"),
])
def test_a_bad_filter_is_a_400_saying_what_is_wrong(client: TestClient, query: str, message: str) -> None:
    page = client.get(f"/sagas?{query}")
    assert page.status_code == 400
    assert message in page.text


# -- a saga's page --------------------------------------------------------------


def test_a_saga_page_shows_its_steps_attempts_durations_and_timeline(client: TestClient) -> None:
    page = client.get(saga_url("trip-3")).text
    rows = re.findall(r"<tr>\s*<td class=\"num\">(\d+)</td>\s*<td><code>(\w+)</code>.*?"
                      r'<span class="badge s-(\w+)">.*?<td class="num">(\d+)</td>', page, re.DOTALL)
    assert rows == [("1", "book_flight", "compensated", "1"), ("2", "book_hotel", "compensated", "1"),
                    ("3", "charge_card", "failed", "1"), ("4", "send_confirmation", "pending", "0")]
    assert page.count('<rect class="bar ') == 3  # the step that never started has no bar
    assert "RuntimeError: card declined for trip t-3" in page


def test_a_saga_page_shows_input_results_error_and_traceback(client: TestClient) -> None:
    page = client.get(saga_url("ship-jammed")).text
    assert json.loads(unescape(page.split('<pre class="json">')[1].split("</pre>")[0])) == {
        "parcel_id": "jammed", "grams": 1200, "outcome": "jammed"}
    assert '<code class="result">{"cents": 2400, "charge_id": "ch-jammed"}</code>' in page
    tracebacks = [unescape(t) for t in re.findall(r'<pre class="traceback">(.*?)</pre>', page, re.DOTALL)]
    assert len(tracebacks) == 2
    assert tracebacks[0].startswith("Traceback (most recent call last):")
    assert tracebacks[0].rstrip().endswith("RuntimeError: carrier rejected parcel jammed: over the weight limit")
    assert tracebacks[1].rstrip().endswith(
        "ConnectionError: refund of ch-jammed refused: payments service unavailable")


def test_a_saga_page_shows_locks_and_past_pivot(client: TestClient) -> None:
    page = client.get(saga_url("ship-ok")).text
    assert "<dt>Past pivot</dt><dd>no</dd>" in page
    assert "<dt>Locks</dt><dd>none</dd>" in page


def test_a_saga_page_draws_the_step_graph_of_a_registered_class(client: TestClient) -> None:
    page = client.get(saga_url("trip-3")).text
    svg = page.split('<svg class="graph"')[1].split("</svg>")[0]
    assert re.findall(r'<g class="node step-(\w+)">', svg) == ["compensated", "compensated", "failed", "pending"]
    assert re.findall(r'<text class="name"[^>]*>(\w+)</text>', svg) == [
        "book_flight", "book_hotel", "charge_card", "send_confirmation"]
    assert svg.count('class="edge"') == 3  # flight -> card, hotel -> card, card -> confirmation
    assert "undo: cancel_flight" in svg


def test_a_saga_page_says_when_its_class_is_not_registered(client: TestClient,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def unknown(name: str) -> Any:
        raise UnknownSagaError(f"no saga class is registered as {name!r}")

    monkeypatch.setattr(web_app, "lookup", unknown)
    page = client.get(saga_url("trip-3")).text
    assert '<svg class="graph"' not in page
    assert "is not registered in this process" in page
    assert "saga-admin serve --import MODULE" in page


def test_an_unknown_saga_is_a_404_page(client: TestClient) -> None:
    page = client.get(saga_url("no-such-saga"))
    assert page.status_code == 404
    assert "no saga has the id &#39;no-such-saga&#39;" in page.text


@pytest.mark.parametrize("saga_id", ["a/b c", "q?x=1&y=2", "hash#tag", "100%", "..", "trail/"])
def test_ids_with_url_characters_round_trip_through_links(db: Db, saga_id: str) -> None:
    client = TestClient(create_app(db.engine))
    db.engine.submit(web_sagas.Booking, web_sagas.Trip(saga_id, "Oslo", 1), saga_id=saga_id,
                         idempotency_key=f"k-{saga_id}")
    listing = client.get(f"/sagas?id={quote(saga_id, safe='')}").text
    href = re.search(r'<a class="id" href="([^"]+)">', listing)
    assert href and unescape(href.group(1)) == saga_url(saga_id)
    page = client.get(unescape(href.group(1)))
    assert page.status_code == 200 and texts(page.text, "id")[0] == saga_id
    # A dot segment would be resolved away by any HTTP client: such an id is found with ?id=.
    if saga_id != "..":
        api = client.get(f"/api/sagas/{quote(saga_id, safe='')}")
        assert api.status_code == 200 and api.json()["id"] == saga_id
    listed = client.get(f"/api/sagas?id={quote(saga_id, safe='')}").json()
    assert [s["id"] for s in listed["sagas"]] == [saga_id]


def test_the_graph_puts_each_step_one_row_below_its_deepest_dependency() -> None:
    svg = str(step_graph(web_sagas.Booking.definition, {}))
    rows = {name: float(y) for y, name in re.findall(
        r'<text class="name" x="[\d.]+" y="([\d.]+)">(\w+)</text>', svg)}
    assert rows["book_flight"] == rows["book_hotel"] < rows["charge_card"] < rows["send_confirmation"]
    assert svg.count('class="node step-pending"') == 4  # no stored status: all pending


def test_the_graph_escapes_what_it_writes() -> None:
    svg = str(step_graph(web_sagas.Hostile.definition, {"grab": "<b>"}))
    assert "<b>" not in svg and 'class="node step-&lt;b&gt;"' in svg


def test_the_timeline_scales_bars_to_the_saga_span_and_ticks_instant_steps() -> None:
    t0 = datetime(2030, 1, 1, tzinfo=timezone.utc)

    def at(seconds: float) -> str | None:
        return iso(t0 + timedelta(seconds=seconds))

    bars, spanned = timeline([{"started_at": at(0), "finished_at": at(1)},
                              {"started_at": at(1), "finished_at": at(4)},
                              {"started_at": None, "finished_at": None},
                              {"started_at": at(3), "finished_at": None}], now=t0 + timedelta(seconds=4))
    assert spanned == 4.0
    assert bars == [Bar(0.0, 25.0, False), Bar(25.0, 75.0, False), None, Bar(75.0, 25.0, True)]
    instant, zero = timeline([{"started_at": at(0), "finished_at": at(0)}], now=t0)
    assert zero == 0.0 and instant == [Bar(0.0, 0.6, False)]


def test_a_database_failure_is_a_503_page_with_the_reason(shared: Db, client: TestClient,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    def down(saga_id: str) -> None:
        raise StorageError("cannot reach the database at postgresql+psycopg://ops:***@db/app: refused <x>")

    monkeypatch.setattr(shared.engine, "get", down)
    page = client.get(saga_url("ship-ok"))
    assert page.status_code == 503
    assert "cannot reach the database at postgresql+psycopg://ops:***@db/app: refused &lt;x&gt;" in page.text
    api = client.get("/api/sagas/ship-ok")
    assert api.status_code == 503 and api.json()["error"].startswith("cannot reach the database")


# -- JSON ------------------------------------------------------------------------


def _without(document: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in document.items() if k not in keys}


def test_api_sagas_is_the_document_of_saga_admin_list(client: TestClient, shared: Db) -> None:
    api = client.get("/api/sagas?limit=5&offset=1").json()
    cli_doc = shared.cli_json("list", "--limit", "5", "--offset", "1")
    assert _without(api, "sagas") == _without(cli_doc, "sagas") == {"total": 9, "offset": 1, "limit": 5}
    assert [_without(s, "age_seconds") for s in api["sagas"]] == [
        _without(s, "age_seconds") for s in cli_doc["sagas"]]


def test_api_sagas_takes_the_list_filters(client: TestClient) -> None:
    doc = client.get("/api/sagas?status=dead_letter&saga=demo.shipping").json()
    assert [s["id"] for s in doc["sagas"]] == ["ship-jammed"] and doc["total"] == 1
    bad = client.get("/api/sagas?status=nope")
    assert bad.status_code == 400
    assert bad.json()["error"].startswith("unknown status 'nope'")


def test_api_saga_is_the_document_of_saga_admin_show(client: TestClient, shared: Db) -> None:
    assert client.get("/api/sagas/ship-jammed").json() == shared.cli_json("show", "ship-jammed")
    missing = client.get("/api/sagas/nope")
    assert missing.status_code == 404 and missing.json() == {"error": "no saga has the id 'nope'"}


def test_api_stats_has_the_fields_of_saga_admin_stats_and_counts_by_name(client: TestClient,
                                                                          shared: Db) -> None:
    api = client.get("/api/stats").json()
    cli_doc = shared.cli_json("stats")
    assert set(api) == set(cli_doc) | {"by_name"}
    for key in ("total", "by_status", "stuck", "dead_letter"):
        assert api[key] == cli_doc[key]
    assert api["oldest_pending"]["id"] == cli_doc["oldest_pending"]["id"] == "ship-waiting"
    assert api["by_name"]["demo.shipping"] == {**{s: 0 for s in api["by_status"]}, "pending": 1,
                                               "completed": 1, "failed": 1, "dead_letter": 1}


# -- actions ---------------------------------------------------------------------


def test_without_allow_actions_there_is_no_button_and_no_action_route(db: Db) -> None:
    client = TestClient(create_app(db.engine))
    page = client.get(saga_url("ship-jammed")).text
    assert "Retry" not in page and 'method="post"' not in page
    assert "read only" in page
    for verb in ("retry", "cancel"):
        response = client.post(f"/saga/{verb}", data={"id": "ship-jammed", "confirmed": "yes"})
        assert response.status_code in (404, 405)
    assert db.status("ship-jammed") == "dead_letter"


def test_retry_asks_for_confirmation_then_moves_the_saga_to_pending(db: Db) -> None:
    client = TestClient(create_app(db.engine, allow_actions=True))
    page = client.get(saga_url("ship-jammed")).text
    token = csrf_of(page)
    asked = client.post("/saga/retry", data={"id": "ship-jammed", "csrf": token})
    assert asked.status_code == 200
    assert "Retry saga <span class=\"id\">ship-jammed</span>?" in asked.text
    assert db.status("ship-jammed") == "dead_letter"
    done = client.post("/saga/retry", data={"id": "ship-jammed", "csrf": csrf_of(asked.text),
                                            "confirmed": "yes"})
    assert done.status_code == 200
    assert "moved back to pending (retry 1 of 10)" in done.text
    assert texts(done.text, "badge") == ["pending"]
    assert db.status("ship-jammed") == "pending"


def test_a_refused_retry_shows_the_reason(db: Db) -> None:
    client = TestClient(create_app(db.engine, allow_actions=True))
    token = csrf_of(client.get(saga_url("ship-jammed")).text)
    refused = client.post("/saga/retry", data={"id": "ship-ok", "csrf": token, "confirmed": "yes"})
    assert refused.status_code == 409
    assert "Retry refused" in refused.text
    assert texts(refused.text, "text") == [
        "saga 'ship-ok' is completed, not dead_letter; only a dead-letter saga can be retried"]
    assert db.status("ship-ok") == "completed"


@pytest.mark.parametrize("forge", ["no token", "wrong token", "token of another browser", "other origin"])
def test_an_action_without_a_valid_csrf_token_is_refused(db: Db, forge: str) -> None:
    client = TestClient(create_app(db.engine, allow_actions=True))
    token = csrf_of(client.get(saga_url("ship-jammed")).text)
    data = {"id": "ship-jammed", "confirmed": "yes", "csrf": token}
    headers = {}
    if forge == "no token":
        del data["csrf"]
    elif forge == "wrong token":
        data["csrf"] = "0" * 64
    elif forge == "token of another browser":
        client.cookies.clear()
        client.get("/")  # a fresh CSRF cookie, to which the token does not belong
    else:
        headers["origin"] = "https://evil.example"
    refused = client.post("/saga/retry", data=data, headers=headers)
    assert refused.status_code == 403
    assert db.status("ship-jammed") == "dead_letter"


def test_the_csrf_cookie_is_httponly_and_samesite_strict(db: Db) -> None:
    cookie = TestClient(create_app(db.engine, allow_actions=True)).get("/").headers["set-cookie"]
    assert cookie.startswith("sagadsl_csrf=") and "HttpOnly" in cookie and "SameSite=strict" in cookie


def test_cancel_asks_for_a_reason_then_cancels_a_waiting_saga(db: Db) -> None:
    client = TestClient(create_app(db.engine, allow_actions=True))
    assert client.post("/saga/cancel", data={"id": "ship-waiting"}).status_code == 403  # no CSRF token
    page = client.get(saga_url("ship-waiting")).text
    assert 'id="cancel"' in page
    assert 'id="cancel"' not in client.get(saga_url("ship-ok")).text  # finished: nothing to cancel
    asked = client.post("/saga/cancel", data={"id": "ship-waiting", "csrf": csrf_of(page)})
    assert 'name="reason"' in asked.text
    assert db.engine.get("ship-waiting").status == "pending"  # nothing happens before the confirmation
    done = client.post("/saga/cancel", data={"id": "ship-waiting", "csrf": csrf_of(asked.text),
                                             "confirmed": "yes", "reason": "customer <b>left</b>"})
    assert done.status_code == 200 and "it had not started" in done.text
    assert "customer <b>left</b>" not in done.text  # escaped, not markup
    record = db.engine.get("ship-waiting")
    assert record.status == "cancelled" and record.cancel_reason == "customer <b>left</b>"
    shown = client.get(saga_url("ship-waiting")).text
    assert "customer &lt;b&gt;left&lt;/b&gt;" in shown and 'id="cancel"' not in shown
    refused = client.post("/saga/cancel", data={"id": "ship-ok", "csrf": csrf_of(page), "confirmed": "yes"})
    assert refused.status_code == 409 and "has already ended completed" in refused.text


# -- access token -------------------------------------------------------------------


SECRET = "s3cret-token"


@pytest.fixture
def guarded(shared: Db) -> TestClient:
    return TestClient(create_app(shared.engine, token=SECRET))


@pytest.mark.parametrize("path", ["/", "/sagas", saga_url("ship-ok"), "/api/stats", "/api/sagas",
                                  "/api/sagas/ship-ok", "/static/console.css", "/nope"])
def test_with_a_token_every_request_without_it_is_refused(guarded: TestClient, path: str) -> None:
    refused = guarded.get(path)
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == 'Bearer realm="sagadsl"'
    assert "needs its access token" in refused.text
    assert guarded.get(path, headers={"authorization": "Bearer wrong"}).status_code == 401
    assert guarded.get(path, params={"token": "wrong"}).status_code == 401
    assert guarded.get(path, headers={"authorization": f"Bearer {SECRET}"}).status_code in (200, 404)


def test_a_token_in_the_url_sets_a_session_cookie_and_is_dropped_from_the_url(guarded: TestClient) -> None:
    login = guarded.get(f"/sagas?status=failed&token={SECRET}", follow_redirects=False)
    assert login.status_code == 303
    assert login.headers["location"] == "/sagas?status=failed"
    cookie = login.headers["set-cookie"]
    assert cookie.startswith("sagadsl_session=") and "HttpOnly" in cookie
    assert SECRET not in cookie
    assert guarded.get("/sagas?status=failed").status_code == 200
    assert guarded.get("/api/stats").status_code == 200


def test_an_api_client_may_pass_the_token_as_a_query_parameter(guarded: TestClient) -> None:
    assert guarded.get(f"/api/stats?token={SECRET}", follow_redirects=False).status_code == 200


def test_the_token_is_compared_in_constant_time(shared: Db, monkeypatch: pytest.MonkeyPatch) -> None:
    import hmac

    from sagadsl.web import security

    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(security.hmac, "compare_digest", spy)
    client = TestClient(create_app(shared.engine, token=SECRET))
    assert client.get("/api/stats", headers={"authorization": "Bearer guess"}).status_code == 401
    assert (b"guess", SECRET.encode()) in compared


def test_an_empty_token_is_refused() -> None:
    with pytest.raises(ValueError, match="token must not be empty"):
        create_app(None, token="")  # type: ignore[arg-type]


# -- escaping ------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/sagas", "/sagas?status=dead_letter", saga_url(HOSTILE_ID)])
def test_markup_from_a_saga_is_shown_as_text_never_as_markup(client: TestClient, path: str) -> None:
    page = client.get(path)
    assert page.status_code == 200
    html = page.text
    assert "<script" not in html.lower()  # the console has no script of its own: any would be injected
    assert "<img" not in html.lower()
    assert "onerror=alert(1)&gt;" in html
    assert HOSTILE_ID in [unescape(i) for i in ids_on(html)] or HOSTILE_ID in texts(html, "id")


def test_the_hostile_saga_page_shows_its_error_traceback_and_input_literally(client: TestClient) -> None:
    html = client.get(saga_url(HOSTILE_ID)).text
    assert texts(html, "id")[0] == HOSTILE_ID
    assert f"RuntimeError: step says {HOSTILE}" in texts(html, "text")
    tracebacks = [unescape(t) for t in re.findall(r'<pre class="traceback">(.*?)</pre>', html, re.DOTALL)]
    assert tracebacks[0].rstrip().endswith(f"RuntimeError: step says {HOSTILE}")
    assert tracebacks[1].rstrip().endswith(f"ValueError: compensation says {HOSTILE}")
    assert json.loads(unescape(html.split('<pre class="json">')[1].split("</pre>")[0])) == {"note": HOSTILE}
    assert unescape(html.split("<title>")[1].split("</title>")[0]) == f"Saga {HOSTILE_ID} · sagadsl console"


def test_the_api_returns_hostile_text_as_json_data(client: TestClient) -> None:
    doc = client.get(f"/api/sagas/{quote(HOSTILE_ID, safe='')}")
    assert doc.headers["content-type"] == "application/json"
    assert doc.json()["error"]["error"] == f"RuntimeError: step says {HOSTILE}"


def test_every_response_forbids_inline_script_and_framing(client: TestClient) -> None:
    for path in ("/", "/api/stats", "/static/console.css", "/nope"):
        headers = client.get(path).headers
        assert "script-src 'self'" in headers["content-security-policy"]
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"


# -- packaging and mounting --------------------------------------------------------------


def test_every_asset_is_bundled_and_nothing_loads_from_another_host(client: TestClient) -> None:
    package = Path(web_app.__file__).parent
    for path in [*package.glob("templates/*.html"), *package.glob("static/*")]:
        body = path.read_text()
        assert not re.search(r"(src|href)=\"(https?:)?//", body), path
        assert "@import" not in body and "url(http" not in body, path
    for asset in ("console.css", "favicon.svg"):
        assert client.get(f"/static/{asset}").status_code == 200


def test_the_console_works_mounted_under_a_prefix(shared: Db) -> None:
    outer = Starlette(routes=[Mount("/ops/sagas", app=create_app(shared.engine, token=SECRET))])
    client = TestClient(outer)
    login = client.get(f"/ops/sagas/?token={SECRET}", follow_redirects=False)
    assert login.headers["location"] == "/ops/sagas/"
    assert "Path=/ops/sagas" in login.headers["set-cookie"]
    page = client.get("/ops/sagas/").text
    assert 'href="/ops/sagas/static/console.css"' in page
    assert f'href="/ops/sagas{saga_url("ship-jammed")}"' in page
    assert client.get("/ops/sagas/static/console.css").status_code == 200
    assert client.get(f"/ops/sagas{saga_url('ship-jammed')}").status_code == 200


# -- saga-admin serve ------------------------------------------------------------------


def serve(*args: str, env: dict[str, str | None] | None = None) -> Any:
    return CliRunner().invoke(cli, ["--database-url", "sqlite:///unused.db", "serve", *args],
                              prog_name="saga-admin", env={**CLEAN_ENV, **(env or {})})


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::", "example.com"])
def test_serve_refuses_a_non_loopback_host_without_a_token(host: str) -> None:
    result = serve("--host", host)
    assert result.exit_code == 2
    assert (f"Error: refusing to serve on {host} without --token: anyone who can reach it would see every "
            "saga's input and errors") in result.output


@pytest.mark.parametrize(("args", "env", "host", "token"), [
    ([], {}, "127.0.0.1", None),
    (["--host", "localhost", "--port", "9001"], {}, "localhost", None),
    (["--host", "0.0.0.0", "--token", SECRET], {}, "0.0.0.0", SECRET),
    (["--host", "0.0.0.0"], {"SAGADSL_WEB_TOKEN": SECRET}, "0.0.0.0", SECRET),
])
def test_serve_runs_uvicorn_with_the_console(sqlite_url: str, monkeypatch: pytest.MonkeyPatch,
                                             args: list[str], env: dict[str, str | None], host: str,
                                             token: str | None) -> None:
    import uvicorn

    SqlStorage(sqlite_url).close()
    started: list[tuple[str, int, list[int]]] = []

    def run(server: uvicorn.Server, sockets: Any = None) -> None:
        client = TestClient(server.config.app)
        if token is None:
            # No token: only this machine's host names are answered (no DNS rebinding).
            codes = [client.get("/", headers={"host": "127.0.0.1:8765"}).status_code,
                     client.get("/", headers={"host": "evil.example"}).status_code]
        else:
            codes = [client.get("/").status_code,
                     client.get("/", headers={"authorization": f"Bearer {token}"}).status_code]
        started.append((server.config.host, server.config.port, codes))

    monkeypatch.setattr(uvicorn.Server, "run", run)
    result = CliRunner().invoke(cli, ["--database-url", sqlite_url, "serve", *args], prog_name="saga-admin",
                                env={**CLEAN_ENV, **env})
    assert result.exit_code == 0, result.output
    assert started == [(host, 9001 if "9001" in args else 8765, [200, 400] if token is None else [401, 200])]
    assert "sagadsl console on http://" in result.output
