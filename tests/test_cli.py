"""``saga-admin``: every command and option, on SQLite and PostgreSQL, through click's CliRunner.

The database is filled by :func:`tests.cli_sagas.populate`: ``ship-ok``
completed, ``ship-lost`` failed (compensated), ``ship-jammed`` in dead letter
and ``ship-waiting`` pending and stuck (submitted two hours ago).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result
from sqlalchemy.engine import make_url

from sagadsl import CompensationFailedError, CompensationPolicy, Saga, SagaEngine, compensates, step
from sagadsl.cli import cli, main
from sagadsl.records import ErrorInfo, StepRecord, WorkflowRecord
from sagadsl.status import StepStatus, WorkflowStatus
from sagadsl.storage import SqlStorage
from sagadsl.storage.models import steps as steps_table
from sagadsl.storage.models import workflows as wf_table
from sagadsl.storage.schema import head_revision
from sagadsl.storage.sql import mask_url
from sagadsl.testing import FakeClock
from tests import cli_sagas
from tests.cli_sagas import Parcel, Shipping

ROOT = Path(__file__).resolve().parent.parent
CLEAN_ENV: dict[str, str | None] = {"SAGADSL_DATABASE_URL": None, "SAGADSL_SCHEMA": None,
                                    "SAGADSL_OUTPUT": None}
SAGAS = ["--import", "tests.cli_sagas"]


@dataclass
class Db:
    """A populated database and the global options that select it."""

    url: str
    schema: str | None

    @property
    def options(self) -> list[str]:
        return ["--database-url", self.url] + (["--schema", self.schema] if self.schema else [])

    def engine(self) -> SagaEngine:
        return SagaEngine(SqlStorage(self.url, schema=self.schema))

    def status(self, saga_id: str) -> str:
        with self.engine() as engine:
            record = engine.get(saga_id)
        assert record is not None
        return record.status.value


def run(*args: str, env: dict[str, str | None] | None = None, input: str | None = None) -> Result:
    """Invoke saga-admin in-process with a clean environment."""
    return CliRunner().invoke(cli, list(args), prog_name="saga-admin", env={**CLEAN_ENV, **(env or {})},
                              input=input)


@pytest.fixture
def db(durable_url: tuple[str, str | None]) -> Iterator[Db]:
    url, schema = durable_url
    cli_sagas.populate(url, schema)
    cli_sagas.refunds.down = True
    yield Db(url, schema)
    cli_sagas.refunds.down = True


def one_line_error(result: Result) -> str:
    """The single error line saga-admin printed on stderr."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert result.stdout == ""
    return lines[0]


# -- help --------------------------------------------------------------------

COMMANDS = [["list"], ["show"], ["dead-letter"], ["retry"], ["stats"], ["graph"], ["worker"], ["db"],
            ["db", "upgrade"], ["db", "current"], ["db", "check"]]


def test_help_lists_every_command_and_the_exit_codes() -> None:
    result = run("--help")
    assert result.exit_code == 0
    for name in ("db", "dead-letter", "graph", "list", "retry", "show", "stats", "worker"):
        assert f"\n  {name} " in result.stdout
    assert "0 ok, 1 operational error, 2 usage error" in " ".join(result.stdout.split())
    assert "SAGADSL_DATABASE_URL" in result.stdout


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help(command: list[str]) -> None:
    result = run(*command, "--help")
    assert result.exit_code == 0
    assert result.stdout.startswith(f"Usage: saga-admin {' '.join(command)} ")


def test_no_command_shows_help_and_exits_2() -> None:
    result = run()
    assert result.exit_code == 2
    assert "Usage: saga-admin [OPTIONS] COMMAND [ARGS]..." in result.stderr


def test_python_dash_m_sagadsl_is_saga_admin() -> None:
    done = subprocess.run([sys.executable, "-m", "sagadsl", "--help"], capture_output=True, text=True,
                          cwd=ROOT, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "Operate sagadsl sagas" in done.stdout


def test_version() -> None:
    result = run("--version")
    assert result.exit_code == 0
    assert result.stdout == "saga-admin, version 0.1.0\n"


def test_main_returns_the_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert main(["show"]) == 2
    assert capsys.readouterr().err == "Error: Missing argument 'ID'. (see 'saga-admin show --help')\n"


def test_unknown_option_is_a_one_line_usage_error() -> None:
    result = run("list", "--bogus")
    assert result.exit_code == 2
    assert one_line_error(result) == "Error: No such option '--bogus'. (see 'saga-admin list --help')"


# -- list --------------------------------------------------------------------


def test_list_shows_a_table_of_every_saga_and_the_total(db: Db) -> None:
    result = run(*db.options, "list")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["ID", "SAGA", "STATUS", "STEP", "REACHED", "RETRIES", "AGE", "UPDATED",
                                "(UTC)"]
    rows = [line.split() for line in lines[2:6]]
    assert [r[:4] for r in rows] == [
        ["ship-ok", "demo.shipping", "completed", "hand_to_carrier"],
        ["ship-lost", "demo.shipping", "failed", "hand_to_carrier"],
        ["ship-jammed", "demo.shipping", "dead_letter", "hand_to_carrier"],
        ["ship-waiting", "demo.shipping", "pending", "(stuck)", "-"][:4],
    ]
    assert rows[3][4] == "-" and rows[3][5] == "0/10" and rows[3][6].startswith("2h0")
    assert lines[-1] == "showing 4 of 4"


def test_list_filters_by_several_statuses(db: Db) -> None:
    result = run(*db.options, "list", "--status", "pending", "-s", "dead_letter", "-o", "json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert [s["id"] for s in document["sagas"]] == ["ship-jammed", "ship-waiting"]
    assert document["total"] == 2


def test_list_filters_by_saga_name(db: Db) -> None:
    assert json.loads(run(*db.options, "-o", "json", "list", "--saga", "demo.shipping").stdout)["total"] == 4
    result = run(*db.options, "list", "--saga", "orders.place")
    assert result.exit_code == 0
    assert result.stdout == "showing 0 of 0\n"


def test_list_since_and_until_take_durations_and_iso_times(db: Db) -> None:
    def ids(*options: str) -> list[str]:
        result = run(*db.options, "-o", "json", "list", *options)
        assert result.exit_code == 0, result.stderr
        return [s["id"] for s in json.loads(result.stdout)["sagas"]]

    assert ids("--since", "1h") == ["ship-ok", "ship-lost", "ship-jammed"]
    assert ids("--until", "90m") == ["ship-waiting"]
    assert ids("--since", "3h", "--until", "1h") == ["ship-waiting"]
    assert ids("--since", "2d") == ["ship-ok", "ship-lost", "ship-jammed", "ship-waiting"]
    assert ids("--until", "2000-01-01") == []
    assert ids("--since", "2000-01-01T00:00:00Z") == ["ship-ok", "ship-lost", "ship-jammed", "ship-waiting"]


def test_list_stuck_shows_active_sagas_without_progress(db: Db) -> None:
    result = run(*db.options, "-o", "json", "list", "--stuck")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert [(s["id"], s["stuck"]) for s in document["sagas"]] == [("ship-waiting", True)]


def test_list_pages_with_limit_and_offset(db: Db) -> None:
    result = run(*db.options, "list", "--limit", "2", "--offset", "1")
    assert result.exit_code == 0, result.stderr
    rows = [line.split()[0] for line in result.stdout.splitlines()[2:4]]
    assert rows == ["ship-lost", "ship-jammed"]
    assert result.stdout.splitlines()[-1] == "showing 2 of 4 (rows 2-3)"


def test_list_json_document(db: Db) -> None:
    result = run(*db.options, "list", "--output", "json", "--limit", "1")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["total"] == 4 and document["offset"] == 0 and document["limit"] == 1
    (saga,) = document["sagas"]
    assert set(saga) == {"id", "saga", "status", "current_step", "retry_count", "created_at",
                         "updated_at", "age_seconds", "stuck", "past_pivot"}
    assert saga["id"] == "ship-ok" and saga["status"] == "completed" and saga["retry_count"] == 0
    assert saga["created_at"].endswith("Z") and saga["stuck"] is False


@pytest.mark.parametrize("option, value, message", [
    ("--since", "yesterday", ("Error: Invalid value for '--since': 'yesterday' is neither a duration "
                              "like 30m, 1h, 2d nor an ISO 8601 time like 2026-11-29 or "
                              "2026-11-29T06:30:00Z (see 'saga-admin list --help')")),
    ("--status", "done", ("Error: Invalid value for '-s' / '--status': 'done' is not one of 'pending', "
                          "'compensating', 'completed', 'failed', 'dead_letter', "
                          "'cancelled'. "
                          "(see 'saga-admin list --help')")),
    ("--limit", "-1", ("Error: Invalid value for '--limit': -1 is not in the range x>=0. "
                       "(see 'saga-admin list --help')")),
])
def test_list_rejects_bad_values_as_usage_errors(option: str, value: str, message: str,
                                                 sqlite_url: str) -> None:
    result = run("--database-url", sqlite_url, "list", option, value)
    assert result.exit_code == 2
    assert one_line_error(result) == message


# -- show --------------------------------------------------------------------


def test_show_prints_input_steps_compensations_error_and_position(db: Db) -> None:
    result = run(*db.options, "show", "ship-jammed")
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert out.startswith("Saga ship-jammed\n")
    assert "status           dead_letter\n" in out
    assert "retries          0 of 10\n" in out
    assert ("position         step 3 of 3 (hand_to_carrier), stopped; steps: 1 failed, 1 compensated, "
            "1 compensation_failed\n") in out
    input_line = next(line for line in out.splitlines() if line.startswith("input "))
    assert json.loads(input_line[len("input"):]) == {"parcel_id": "jammed", "grams": 1200,
                                                     "outcome": "jammed"}
    steps = {line.split()[1]: line.split() for line in out.split("Steps\n")[1].splitlines()[3:6]}
    assert steps["reserve_slot"][2:4] == ["compensated", "1"]
    assert steps["reserve_slot"][5:] == ["slot-jammed", '"slot-jammed"']
    assert steps["charge"][5] == "charge-jammed"
    assert json.loads(" ".join(steps["charge"][6:])) == {"charge_id": "ch-jammed", "cents": 2400}
    assert steps["hand_to_carrier"][2] == "failed"
    compensations = out.split("Compensations\n")[1]
    assert "charge         failed         -                     ConnectionError: refund of ch-jammed " \
           "refused: payments service unavailable" in compensations
    error = out.split("\nError\n")[1]
    assert "step                hand_to_carrier\n" in error
    assert "error               RuntimeError: carrier rejected parcel jammed: over the weight limit\n" in error
    assert ("compensation error  refund (compensating charge): ConnectionError: refund of ch-jammed "
            "refused: payments service unavailable\n") in error


def test_show_json_document(db: Db) -> None:
    result = run(*db.options, "-o", "json", "show", "ship-jammed")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["id"] == "ship-jammed" and doc["saga"] == "demo.shipping" and doc["status"] == "dead_letter"
    assert doc["input"] == {"parcel_id": "jammed", "grams": 1200, "outcome": "jammed"}
    assert doc["idempotency_key"] == "k-jammed" and doc["retry_count"] == 0 and doc["max_retries"] == 10
    assert doc["position"] == {"current_step": "hand_to_carrier", "index": 3, "of": 3, "phase": "stopped",
                               "steps_by_status": {"pending": 0, "completed": 0, "failed": 1,
                                                   "compensated": 1, "compensation_failed": 1}}
    assert [(s["name"], s["status"], s["attempts"], s["idempotency_key"]) for s in doc["steps"]] == [
        ("reserve_slot", "compensated", 1, "slot-jammed"),
        ("charge", "compensation_failed", 1, "charge-jammed"),
        ("hand_to_carrier", "failed", 1, "ship-jammed"),
    ]
    assert doc["steps"][1]["result"] == {"charge_id": "ch-jammed", "cents": 2400}
    assert isinstance(doc["steps"][0]["duration_seconds"], float)
    assert [(c["step"], c["status"]) for c in doc["compensations"]] == [
        ("reserve_slot", "completed"), ("charge", "failed")]
    assert doc["error"]["step"] == "hand_to_carrier"
    assert doc["error"]["error"] == "RuntimeError: carrier rejected parcel jammed: over the weight limit"
    assert doc["error"]["compensation_error"] == ("refund (compensating charge): ConnectionError: refund "
                                                  "of ch-jammed refused: payments service unavailable")


def test_show_a_completed_saga_has_no_error_block(db: Db) -> None:
    result = run(*db.options, "show", "ship-ok")
    assert result.exit_code == 0, result.stderr
    assert "\nError\n" not in result.stdout and "Compensations" not in result.stdout
    assert '"track-ok"' in result.stdout


def test_show_unknown_id_exits_1(db: Db) -> None:
    result = run(*db.options, "show", "nope")
    assert result.exit_code == 1
    assert one_line_error(result) == f"Error: no saga with id 'nope' in {mask_url(db.url)}"


# -- dead-letter -------------------------------------------------------------


def test_dead_letter_lists_the_failing_step_and_both_errors(db: Db) -> None:
    result = run(*db.options, "dead-letter")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("ship-jammed  demo.shipping  retries 0/10  failed at ")
    assert lines[1:4] == [
        "  failed step         hand_to_carrier",
        "  error               RuntimeError: carrier rejected parcel jammed: over the weight limit",
        ("  compensation error  refund (compensating charge): ConnectionError: refund of ch-jammed "
         "refused: payments service unavailable"),
    ]
    assert lines[-1] == "showing 1 of 1 in dead letter"


def test_dead_letter_json_and_limit(db: Db) -> None:
    doc = json.loads(run(*db.options, "dead-letter", "-o", "json").stdout)
    assert doc["total"] == 1
    (row,) = doc["sagas"]
    assert set(row) == {"id", "saga", "retry_count", "failed_step", "error", "compensation_error",
                        "failed_at", "updated_at"}
    assert (row["id"], row["failed_step"]) == ("ship-jammed", "hand_to_carrier")
    limited = json.loads(run(*db.options, "-o", "json", "dead-letter", "--limit", "0").stdout)
    assert limited == {"total": 1, "offset": 0, "limit": 0, "sagas": []}
    skipped = json.loads(run(*db.options, "-o", "json", "dead-letter", "--offset", "1").stdout)
    assert skipped == {"total": 1, "offset": 1, "limit": 50, "sagas": []}


# -- retry -------------------------------------------------------------------


def test_retry_moves_a_dead_letter_saga_back_to_pending(db: Db) -> None:
    result = run(*db.options, "retry", "ship-jammed")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "retried ship-jammed (retry 1 of 10): pending, a worker will continue it\n"
    assert db.status("ship-jammed") == "pending"


def test_retry_refuses_a_saga_not_in_dead_letter(db: Db) -> None:
    result = run(*db.options, "retry", "ship-ok")
    assert result.exit_code == 1
    assert result.stderr == ("refused ship-ok: saga 'ship-ok' is completed, not dead_letter; only a "
                             "dead-letter saga can be retried\n")
    assert db.status("ship-ok") == "completed"


def test_retry_refuses_an_unknown_id(db: Db) -> None:
    result = run(*db.options, "-o", "json", "retry", "nope")
    assert result.exit_code == 1
    assert json.loads(result.stdout) == {"retried": [], "refused": [
        {"id": "nope", "code": "SAGA_NOT_FOUND", "reason": "no saga with id 'nope'"}]}


def test_retry_refuses_a_saga_over_the_cap(db: Db) -> None:
    with db.engine() as engine:
        for _ in range(10):
            engine.retry("ship-jammed")
            with pytest.raises(CompensationFailedError):
                engine.resume("ship-jammed")
    assert db.status("ship-jammed") == "dead_letter"
    result = run(*db.options, "retry", "ship-jammed", "-o", "json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["refused"] == [{
        "id": "ship-jammed", "code": "RETRY_CAP_EXCEEDED",
        "reason": "saga 'ship-jammed' was already retried 10 times, the cap is 10; inspect it with "
                  "`saga-admin show ship-jammed` and resolve it by hand"}]
    assert db.status("ship-jammed") == "dead_letter"


def test_retry_reports_each_saga_of_a_mixed_batch(db: Db) -> None:
    result = run(*db.options, "retry", "ship-jammed", "ship-lost")
    assert result.exit_code == 1
    assert result.stdout == "retried ship-jammed (retry 1 of 10): pending, a worker will continue it\n"
    assert result.stderr == ("refused ship-lost: saga 'ship-lost' is failed, not dead_letter; only a "
                             "dead-letter saga can be retried\n")


def test_retry_all_dead_letter_asks_first(db: Db) -> None:
    result = run(*db.options, "retry", "--all-dead-letter", input="n\n")
    assert result.exit_code == 1
    assert result.stderr.endswith("Error: aborted\n")
    assert f"Retry 1 dead-letter saga in {mask_url(db.url)}? [y/N]" in result.stderr
    assert db.status("ship-jammed") == "dead_letter"


def test_retry_all_dead_letter_yes(db: Db) -> None:
    result = run(*db.options, "retry", "--all-dead-letter", "--yes")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "retried ship-jammed (retry 1 of 10): pending, a worker will continue it\n"
    again = run(*db.options, "retry", "--all-dead-letter", "--yes")
    assert again.exit_code == 0
    assert again.stdout == "nothing to retry: the dead-letter queue is empty\n"


def test_retry_run_drives_the_saga_to_its_end_now(db: Db) -> None:
    cli_sagas.refunds.down = False
    result = run(*db.options, "-o", "json", "retry", "ship-jammed", "--run", *SAGAS)
    assert result.exit_code == 0, result.stderr
    (entry,) = json.loads(result.stdout)["retried"]
    assert (entry["id"], entry["retry_count"], entry["status"]) == ("ship-jammed", 1, "failed")
    assert db.status("ship-jammed") == "failed"


def test_retry_run_that_dead_letters_again_exits_1(db: Db) -> None:
    result = run(*db.options, "retry", "ship-jammed", "--run", *SAGAS)
    assert result.exit_code == 1
    assert result.stdout.startswith("retried ship-jammed (retry 1 of 10): now dead_letter: ")
    assert db.status("ship-jammed") == "dead_letter"


def test_retry_run_in_a_real_process_prints_its_result_and_nothing_else(db: Db) -> None:
    # In pytest the library's log records go to pytest's handlers; a real
    # process shows whether they would also reach the terminal.
    done = subprocess.run(
        [sys.executable, "-m", "sagadsl", *db.options, "retry", "ship-jammed", "--run", *SAGAS],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith(("SAGADSL_", "CLI_SAGAS_"))})
    assert done.returncode == 1, done.stderr
    assert done.stdout.startswith("retried ship-jammed (retry 1 of 10): now dead_letter: ")
    assert done.stderr == ""


@pytest.mark.parametrize("args, message", [
    ([], "Error: give the IDs of the sagas to retry, or --all-dead-letter"),
    (["a", "--all-dead-letter"], "Error: give saga IDs or --all-dead-letter, not both"),
    (["a", "--run"], "Error: --run needs --import MODULE so the saga classes are known"),
    (["a", *SAGAS], "Error: --import is only used with --run"),
])
def test_retry_usage_errors(args: list[str], message: str, sqlite_url: str) -> None:
    result = run("--database-url", sqlite_url, "retry", *args)
    assert result.exit_code == 2
    assert one_line_error(result) == f"{message} (see 'saga-admin retry --help')"


# -- stats -------------------------------------------------------------------


def test_stats_counts_per_status_with_oldest_pending_stuck_and_dead_letter(db: Db) -> None:
    result = run(*db.options, "stats")
    assert result.exit_code == 0, result.stderr
    lines = [line.split() for line in result.stdout.splitlines()]
    assert ["pending", "1"] in lines and ["completed", "1"] in lines and ["compensating", "0"] in lines
    assert ["total", "4"] in lines and ["stuck", "1"] in lines and ["dead", "letter", "1"] in lines
    assert any(line[:4] == ["oldest", "pending", "ship-waiting", "(demo.shipping),"] for line in lines)


def test_stats_oldest_pending_is_the_earliest_created_not_the_first_or_last_id(db: Db) -> None:
    now = datetime.now(timezone.utc)
    for saga_id, age in (("ship-aaa", timedelta(hours=1)), ("ship-zzz", timedelta(0))):
        with SagaEngine(SqlStorage(db.url, schema=db.schema), clock=FakeClock(now - age)) as at:
            at.submit(Shipping, Parcel(saga_id, 100), saga_id=saga_id, idempotency_key=f"k-{saga_id}")
    result = run(*db.options, "stats")
    assert result.exit_code == 0, result.stderr
    oldest = [line.split() for line in result.stdout.splitlines() if line.startswith("oldest pending")]
    assert [line[:5] for line in oldest] == [
        ["oldest", "pending", "ship-waiting", "(demo.shipping),", "created"]]
    assert oldest[0][5].startswith("2h")


def test_query_oldest_first_pages_from_the_earliest_created(engine: SagaEngine, clock: FakeClock) -> None:
    for saga_id in ("ship-m", "ship-z", "ship-a"):  # created in an order that is not the ids' order
        engine.submit(Shipping, Parcel(saga_id, 100), saga_id=saga_id, idempotency_key=f"k-{saga_id}")
        clock.advance(60)
    assert [w.id for w in engine.query(order="oldest").workflows] == ["ship-m", "ship-z", "ship-a"]
    assert [w.id for w in engine.query().workflows] == ["ship-a", "ship-z", "ship-m"]
    first = engine.query("pending", order="oldest", limit=1)
    assert [w.id for w in first.workflows] == ["ship-m"] and first.total == 3
    assert [w.id for w in engine.query(order="oldest", offset=1, limit=1).workflows] == ["ship-z"]


def test_query_rejects_an_unknown_order(engine: SagaEngine) -> None:
    with pytest.raises(ValueError, match="order must be 'newest' or 'oldest', not 'asc'"):
        engine.query(order="asc")  # type: ignore[arg-type]


def test_stats_json_document(db: Db) -> None:
    doc = json.loads(run(*db.options, "stats", "-o", "json").stdout)
    assert doc["by_status"] == {"pending": 1, "compensating": 0, "completed": 1, "failed": 1,
                                "dead_letter": 1, "cancelled": 0}
    assert doc["total"] == 4 and doc["stuck"] == 1 and doc["dead_letter"] == 1
    assert doc["oldest_pending"]["id"] == "ship-waiting"
    assert 7100 < doc["oldest_pending"]["age_seconds"] < 7300


def test_stats_watch_refreshes(db: Db) -> None:
    result = run(*db.options, "-o", "json", "stats", "--watch", "--interval", "0.01", "--count", "3")
    assert result.exit_code == 0, result.stderr
    documents = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(documents) == 3 and all(d["total"] == 4 for d in documents)
    table = run(*db.options, "stats", "-w", "--interval", "0.01", "--count", "2")
    assert table.exit_code == 0, table.stderr
    assert table.stdout.count("Sagas at ") == 2


def test_stats_count_needs_watch(sqlite_url: str) -> None:
    result = run("--database-url", sqlite_url, "stats", "--count", "2")
    assert result.exit_code == 2
    assert one_line_error(result) == "Error: --count only applies with --watch (see 'saga-admin stats --help')"


# -- graph -------------------------------------------------------------------


@pytest.mark.parametrize("fmt, method", [("text", "to_text"), ("mermaid", "to_mermaid"), ("dot", "to_dot")])
def test_graph_draws_the_registered_saga(fmt: str, method: str) -> None:
    result = run("graph", "demo.shipping", *SAGAS, "--format", fmt)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == getattr(Shipping.definition, method)() + "\n"


def test_graph_json_and_default_format() -> None:
    result = run("-o", "json", "graph", "demo.shipping", *SAGAS)
    doc = json.loads(result.stdout)
    assert doc["saga"] == "demo.shipping" and doc["class"] == "Shipping" and doc["format"] == "text"
    assert doc["graph"] == Shipping.definition.to_text()
    assert doc["steps"][1] == {"name": "charge", "after": ["reserve_slot"], "compensation": "refund"}


def test_graph_unknown_saga_exits_1() -> None:
    result = run("graph", "orders.place", *SAGAS)
    assert result.exit_code == 1
    assert one_line_error(result).startswith(
        "Error: no saga is registered as 'orders.place' after importing tests.cli_sagas; registered: ")
    assert "demo.shipping" in result.stderr


def test_graph_needs_an_importable_module() -> None:
    assert run("graph", "demo.shipping").exit_code == 2
    result = run("graph", "demo.shipping", "--import", "no_such_module_here")
    assert result.exit_code == 1
    assert one_line_error(result) == ("Error: cannot import 'no_such_module_here' (--import): "
                                      "No module named 'no_such_module_here'")


# -- worker ------------------------------------------------------------------


def submit_fresh(db: Db) -> None:
    with db.engine() as engine:
        engine.submit(Shipping, Parcel("fresh", 100), saga_id="ship-fresh", idempotency_key="k-fresh")


def test_worker_once_runs_pending_sagas_and_exits(db: Db) -> None:
    submit_fresh(db)
    result = run(*db.options, "worker", *SAGAS, "--once", "--concurrency", "2", "--poll-interval", "0.05")
    assert result.exit_code == 0, result.stderr
    # ship-waiting waited two hours in the queue; its budget starts when the worker takes it.
    assert result.stdout == ("worker stopped: completed 2, failed 0, dead_lettered 0, locked 0, "
                             "unknown 0, errors 0\n")
    assert (db.status("ship-fresh"), db.status("ship-waiting")) == ("completed", "completed")


def test_worker_log_level_filters_what_it_logs(db: Db) -> None:
    quiet = run(*db.options, "worker", *SAGAS, "--once", "--log-level", "warning")
    assert quiet.exit_code == 0, quiet.stderr
    assert "INFO" not in quiet.stderr
    assert db.status("ship-waiting") == "completed"


def test_worker_logs_at_info_by_default(db: Db) -> None:
    result = run(*db.options, "worker", *SAGAS, "--once")
    assert result.exit_code == 0, result.stderr
    assert "INFO sagadsl.worker: worker started (concurrency 4)" in result.stderr


def test_worker_needs_import(sqlite_url: str) -> None:
    result = run("--database-url", sqlite_url, "worker")
    assert result.exit_code == 2
    assert "give --import MODULE" in one_line_error(result)


def test_worker_stops_on_sigterm(db: Db) -> None:
    submit_fresh(db)
    proc = subprocess.Popen(
        [sys.executable, "-m", "sagadsl", *db.options, "worker", *SAGAS, "--poll-interval", "0.1"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith(("SAGADSL_", "CLI_SAGAS_"))})
    try:
        deadline = time.monotonic() + 30
        while (db.status("ship-fresh"), db.status("ship-waiting")) != ("completed", "completed"):
            assert time.monotonic() < deadline, "the worker did not finish the pending sagas"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert out.startswith("worker stopped: completed 2, ")
    assert "INFO sagadsl.worker: worker started" in err


# -- db ----------------------------------------------------------------------


def test_db_upgrade_creates_a_sqlite_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    result = run("--database-url", url, "-o", "json", "db", "upgrade")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == {"database": url, "schema": None, "from": None,
                                         "to": head_revision()}
    again = run("--database-url", url, "db", "upgrade")
    assert again.stdout == f"{url}: already at {head_revision()} (head)\n"
    assert run("--database-url", url, "db", "check").exit_code == 0


def test_db_upgrade_current_and_check_on_an_empty_postgres_schema(pg_schema: tuple[str, str]) -> None:
    url, schema = pg_schema
    options = ["--database-url", url, "--schema", schema]
    before = run(*options, "-o", "json", "db", "current")
    assert json.loads(before.stdout) == {"database": mask_url(url), "schema": schema, "current": None,
                                         "head": head_revision(), "up_to_date": False}
    check = run(*options, "db", "check")
    assert check.exit_code == 1
    assert one_line_error(check).startswith(
        f"Error: sagadsl's tables are not installed in schema '{schema}' of {mask_url(url)}; run `saga-admin")
    assert "db upgrade`" in check.stderr
    upgrade = run(*options, "db", "upgrade")
    assert upgrade.exit_code == 0, upgrade.stderr
    assert upgrade.stdout == f"{mask_url(url)}: upgraded from an empty database to {head_revision()}\n"
    current = run(*options, "db", "current")
    assert current.stdout == (f"database: {mask_url(url)} (schema {schema})\n"
                              f"current:  {head_revision()}\nhead:     {head_revision()} (up to date)\n")
    assert run(*options, "db", "check").exit_code == 0


def test_db_check_on_a_sqlite_file_without_tables_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    sqlite3.connect(path).close()
    result = run("--database-url", f"sqlite:///{path}", "db", "check")
    assert result.exit_code == 1
    assert one_line_error(result).startswith(
        f"Error: sagadsl's tables are not installed in sqlite:///{path}; run `saga-admin db upgrade` ")


def test_read_commands_refuse_a_database_without_tables(pg_schema: tuple[str, str]) -> None:
    url, schema = pg_schema
    result = run("--database-url", url, "--schema", schema, "list")
    assert result.exit_code == 1
    assert one_line_error(result).startswith(
        f"Error: sagadsl's tables are not installed in schema '{schema}' of {mask_url(url)}; run `saga-admin")


# -- database URLs and connections -------------------------------------------


def test_database_url_and_schema_from_the_environment(db: Db) -> None:
    env = {"SAGADSL_DATABASE_URL": db.url, "SAGADSL_SCHEMA": db.schema, "SAGADSL_OUTPUT": "json"}
    result = run("stats", env=env)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["total"] == 4


def test_missing_sqlite_file_is_reported_and_not_created(tmp_path: Path) -> None:
    path = tmp_path / "typo.db"
    result = run("--database-url", f"sqlite:///{path}", "list")
    assert result.exit_code == 1
    assert one_line_error(result) == (
        f"Error: no SQLite database at {path} (from sqlite:///{path}); check --database-url / "
        "SAGADSL_DATABASE_URL, or create it with `saga-admin db upgrade`")
    assert not path.exists()


BAD_URL = "Error: Invalid value for '--database-url' / SAGADSL_DATABASE_URL: "


@pytest.mark.parametrize("url, message", [
    ("not a url", (f"{BAD_URL}cannot parse 'not a url' as a database URL")),
    ("mysql://app:pw@db/app", (f"{BAD_URL}'mysql://app:***@db/app' is a mysql URL; sagadsl stores "
                               "sagas in SQLite")),
    ("postgresql://app:pw@db:port/app", f"{BAD_URL}cannot parse 'postgresql://app:***@db:port/app'"),
])
def test_bad_url_is_a_usage_error(url: str, message: str) -> None:
    result = run("--database-url", url, "list")
    assert result.exit_code == 2
    assert one_line_error(result).startswith(message)


def test_unreachable_server_fails_fast_with_one_line() -> None:
    started = time.monotonic()
    result = run("--database-url", "postgresql+psycopg://root:pw@127.0.0.1:1/test", "--connect-timeout",
                 "1", "stats")
    assert result.exit_code == 1
    assert one_line_error(result).startswith(
        "Error: could not connect to postgresql+psycopg://root:***@127.0.0.1:1/test")
    assert "Connection refused" in result.stderr
    assert time.monotonic() - started < 30  # generous: a hang would hit pytest's timeout instead


def test_invalid_schema_name_is_a_usage_error(db: Db) -> None:
    result = run("--database-url", db.url, "--schema", "no-dashes", "list")
    assert result.exit_code == 2
    assert one_line_error(result).startswith("Error: Invalid value for '--schema' / SAGADSL_SCHEMA: "
                                             "schema 'no-dashes' is not a valid SQL identifier")


# -- passwords ---------------------------------------------------------------

PASSWORD = "s3cr3t-pw"
COMMAND_LINES = [
    ["list"], ["list", "--stuck", "-o", "json"], ["show", "ship-jammed"], ["show", "nope"],
    ["-o", "json", "show", "ship-jammed"], ["dead-letter"], ["retry", "ship-ok"], ["retry", "nope"],
    ["retry", "ship-jammed", "--run", *SAGAS], ["retry", "--all-dead-letter", "--yes"], ["stats"],
    ["stats", "-o", "json"], ["graph", "demo.shipping", *SAGAS], ["worker", *SAGAS, "--once"],
    ["db", "current"], ["db", "check"], ["db", "upgrade"], ["-o", "json", "db", "current"],
    ["list", "--bogus"], ["list", "--since", "soon"],
]


@pytest.fixture
def secret_pg(pg_schema: tuple[str, str]) -> tuple[str, str]:
    """A populated PostgreSQL schema and a URL with a password (trust auth ignores it)."""
    url, schema = pg_schema
    SqlStorage(url, schema=schema, auto_migrate=True).close()
    cli_sagas.populate(url, schema)
    return make_url(url).set(password=PASSWORD).render_as_string(hide_password=False), schema


@pytest.mark.parametrize("command", COMMAND_LINES, ids=" ".join)
def test_no_output_contains_the_password(command: list[str], secret_pg: tuple[str, str]) -> None:
    url, schema = secret_pg
    unreachable = make_url(url).set(port=1).render_as_string(hide_password=False)
    unparsable = url.replace("127.0.0.1", "127.0.0.1:notaport")
    attempts = [
        run("--database-url", url, "--schema", schema, *command),
        run("--schema", schema, *command, env={"SAGADSL_DATABASE_URL": url}),
        run("--database-url", unreachable, *command),
        run("--database-url", unparsable, *command),
        run(f"--database-url={url.replace(PASSWORD, 'p%40ss')}", "--schema", schema, *command),
    ]
    for result in attempts:
        printed = result.stdout + result.stderr
        assert PASSWORD not in printed and "p%40ss" not in printed and "p@ss" not in printed
        assert result.exit_code in (0, 1, 2)
    if command[0] != "graph" and "--bogus" not in command and "soon" not in command:
        assert attempts[2].exit_code == 1
        assert "root:***@127.0.0.1:1" in attempts[2].stderr


# -- values that look like rich markup ----------------------------------------

HOSTILE = ["[/]", "[bold red]x", "[link=http://x]", ":thumbs_up:"]


class Markup(Saga[Parcel], name="[link=http://x]demo.markup[/]"):
    """A saga whose ids, keys, inputs, results and errors all look like rich markup."""

    @step(idempotency_key="[/]slot-{parcel_id}", compensation=CompensationPolicy(max_attempts=1))
    def reserve(self) -> str:
        return f"[bold red]x result {self.input.parcel_id}"

    @compensates(reserve)
    def release(self, slot: str) -> None:
        if self.input.outcome == "jammed":
            raise ConnectionError(f"[/] release of {slot} refused [bold red]x")

    @step(idempotency_key="[link=http://x]{parcel_id}")
    def ship(self) -> str:
        raise RuntimeError(f"[link=http://x]carrier[/link] rejected {self.input.parcel_id} [/]")


@pytest.fixture
def hostile_db(durable_url: tuple[str, str | None]) -> Iterator[Db]:
    """One dead-letter saga per hostile id, and one pending (stuck) saga."""
    url, schema = durable_url
    with SagaEngine(SqlStorage(url, schema=schema)) as engine:
        for saga_id in HOSTILE:
            with pytest.raises(CompensationFailedError):
                engine.run(Markup, Parcel(saga_id, 1, "jammed"), saga_id=saga_id,
                           idempotency_key=f"{saga_id}[/]")
    with SagaEngine(SqlStorage(url, schema=schema),
                    clock=FakeClock(datetime.now(timezone.utc) - timedelta(hours=2))) as past:
        past.submit(Markup, Parcel("[/]wait", 1), saga_id="[bold]waiting[/]", idempotency_key="[/]k")
    yield Db(url, schema)


def test_list_prints_markup_like_values_literally(hostile_db: Db) -> None:
    result = run(*hostile_db.options, "list")
    assert result.exit_code == 0, result.stderr
    rows = [" ".join(line.split()) for line in result.stdout.splitlines()[2:-1] if line.strip()]
    assert len(rows) == 5
    for saga_id in HOSTILE:
        assert sum(row.startswith(f"{saga_id} [link=http://x]demo.markup[/] dead_letter ship 0/10 ")
                   for row in rows) == 1, rows
    assert sum(row.startswith("[bold]waiting[/] [link=http://x]demo.markup[/] pending (stuck) - 0/10 ")
               for row in rows) == 1, rows
    assert "\x1b" not in result.stdout


@pytest.mark.parametrize("saga_id", HOSTILE)
def test_show_prints_markup_like_values_literally(hostile_db: Db, saga_id: str) -> None:
    result = run(*hostile_db.options, "show", saga_id)
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert out.startswith(f"Saga {saga_id}\n")
    assert "saga             [link=http://x]demo.markup[/]\n" in out
    assert f"idempotency key  {saga_id}[/]\n" in out
    assert f'"parcel_id": "{saga_id}"' in out
    steps = {line.split()[1]: line for line in out.split("Steps\n")[1].splitlines()[3:5]}
    assert f"[/]slot-{saga_id}" in steps["reserve"]
    assert f"[link=http://x]{saga_id}" in steps["ship"]
    assert f"RuntimeError: [link=http://x]carrier[/link] rejected {saga_id} [/]" in " ".join(out.split())
    assert f"[/] release of [bold red]x result {saga_id} refused [bold red]x" in " ".join(out.split())
    assert "\x1b" not in out


def test_dead_letter_and_stats_print_markup_like_values_literally(hostile_db: Db) -> None:
    result = run(*hostile_db.options, "dead-letter")
    assert result.exit_code == 0, result.stderr
    flat = " ".join(result.stdout.split())
    for saga_id in HOSTILE:
        assert f"{saga_id} [link=http://x]demo.markup[/] retries 0/10" in flat
        assert f"RuntimeError: [link=http://x]carrier[/link] rejected {saga_id} [/]" in flat
    stats = run(*hostile_db.options, "stats")
    assert stats.exit_code == 0, stats.stderr
    assert "oldest pending  [bold]waiting[/] ([link=http://x]demo.markup[/]), created 2h" in stats.stdout


def test_json_output_keeps_markup_like_values_verbatim(hostile_db: Db) -> None:
    doc = json.loads(run(*hostile_db.options, "-o", "json", "show", "[/]").stdout)
    assert doc["id"] == "[/]" and doc["saga"] == "[link=http://x]demo.markup[/]"
    assert doc["error"]["error"] == "RuntimeError: [link=http://x]carrier[/link] rejected [/] [/]"


# -- where a saga stopped ------------------------------------------------------


def test_list_names_the_step_where_a_failed_saga_stopped(db: Db) -> None:
    result = run(*db.options, "-o", "json", "list")
    assert result.exit_code == 0, result.stderr
    reached = {s["id"]: s["current_step"] for s in json.loads(result.stdout)["sagas"]}
    assert reached == {"ship-ok": "hand_to_carrier", "ship-lost": "hand_to_carrier",
                       "ship-jammed": "hand_to_carrier", "ship-waiting": None}


def test_show_position_is_the_step_where_the_saga_stopped(db: Db) -> None:
    for saga_id, phase, counts in [("ship-lost", "finished", "1 failed, 2 compensated"),
                                   ("ship-jammed", "stopped",
                                    "1 failed, 1 compensated, 1 compensation_failed"),
                                   ("ship-ok", "finished", "3 completed")]:
        result = run(*db.options, "show", saga_id)
        assert result.exit_code == 0, result.stderr
        assert (f"position         step 3 of 3 (hand_to_carrier), {phase}; steps: {counts}\n"
                in result.stdout), result.stdout
        doc = json.loads(run(*db.options, "-o", "json", "show", saga_id).stdout)
        assert (doc["position"]["current_step"], doc["position"]["index"]) == ("hand_to_carrier", 3)


def test_show_position_of_a_saga_stopped_midway(db: Db) -> None:
    # A saga whose executor died after its first two steps: pending, at charge.
    with db.engine() as engine:
        engine.run(Shipping, Parcel("mid", 10), saga_id="ship-mid", idempotency_key="k-mid")
    storage = SqlStorage(db.url, schema=db.schema)
    try:
        with storage.engine.begin() as conn:
            conn.execute(sa.update(wf_table).where(wf_table.c.id == "ship-mid").values(
                status="pending", current_step="charge"))
            conn.execute(sa.update(steps_table)
                         .where(steps_table.c.workflow_id == "ship-mid",
                                steps_table.c.name == "hand_to_carrier")
                         .values(status="pending", result=None, started_at=None, finished_at=None))
    finally:
        storage.close()
    result = run(*db.options, "show", "ship-mid")
    assert result.exit_code == 0, result.stderr
    assert "position         step 2 of 3 (charge), forward; steps: 1 pending, 2 completed\n" in result.stdout
    assert "deadline         " in result.stdout


def test_show_prints_no_deadline_for_a_finished_saga(db: Db) -> None:
    for saga_id in ("ship-ok", "ship-lost", "ship-jammed"):
        result = run(*db.options, "show", saga_id)
        assert result.exit_code == 0, result.stderr
        assert "deadline" not in result.stdout
        assert json.loads(run(*db.options, "-o", "json", "show", saga_id).stdout)["deadline"] is None
    waiting = run(*db.options, "show", "ship-waiting")
    assert "deadline         not started yet" in waiting.stdout


# -- tracebacks ----------------------------------------------------------------


def test_show_prints_the_stored_tracebacks(db: Db) -> None:
    result = run(*db.options, "show", "ship-jammed")
    assert result.exit_code == 0, result.stderr
    after_error = result.stdout.split("\nError\n")[1]
    step_tb = after_error.split("Traceback of the failing step (hand_to_carrier)\n")[1]
    assert "Traceback (most recent call last):" in step_tb
    assert 'in hand_to_carrier\n' in step_tb
    assert "RuntimeError: carrier rejected parcel jammed: over the weight limit" in step_tb
    comp_tb = after_error.split("Traceback of the failing compensation\n")[1]
    assert "in refund\n" in comp_tb
    assert "ConnectionError: refund of ch-jammed refused: payments service unavailable" in comp_tb
    doc = json.loads(run(*db.options, "-o", "json", "show", "ship-jammed").stdout)
    assert "RuntimeError: carrier rejected parcel jammed" in doc["error"]["traceback"]
    assert "ConnectionError: refund of ch-jammed" in doc["error"]["compensation_traceback"]


def test_show_without_tracebacks_prints_no_traceback_section(db: Db) -> None:
    result = run(*db.options, "show", "ship-ok")
    assert "Traceback" not in result.stdout
    assert json.loads(run(*db.options, "-o", "json", "show", "ship-ok").stdout)["error"] is None


def _record_with_tracebacks(tb: str | None, comp_tb: str | None) -> WorkflowRecord:
    now = datetime.now(timezone.utc)
    return WorkflowRecord(
        id="[/]rec", saga_name="[bold]s", status=WorkflowStatus.DEAD_LETTER, input={"a": "[/]"},
        idempotency_key="[/]", fingerprint="f", retry_count=0, created_at=now, updated_at=now,
        started_at=now, current_step="first",
        steps=(StepRecord("first", 0, "[/]k1", StepStatus.COMPENSATION_FAILED, result="[/]",
                          compensation_error="[/] undo"),
               StepRecord("second", 1, "k2", StepStatus.FAILED, error="[bold red]x")),
        error=ErrorInfo("second", "[bold red]x", "[/] undo", now, traceback=tb,
                        compensation_traceback=comp_tb))


def test_show_tracebacks_of_a_built_record_are_escaped(monkeypatch: pytest.MonkeyPatch,
                                                       sqlite_url: str) -> None:
    SqlStorage(sqlite_url).close()
    tb = ('Traceback (most recent call last):\n  File "[/]x.py", line 1, in second\n'
          "    raise X('[link=http://x]')\nX: [bold red]x [/]")
    record = _record_with_tracebacks(tb, "Traceback (most recent call last):\nY: [/] undo")
    monkeypatch.setattr(SagaEngine, "get", lambda self, saga_id: record)
    result = run("--database-url", sqlite_url, "show", "[/]rec")
    assert result.exit_code == 0, result.stderr
    assert "position         step 2 of 2 (second), stopped" in result.stdout
    assert f"Traceback of the failing step (second)\n{tb}\n" in result.stdout.replace("\n  ", "\n  ")
    assert "Traceback of the failing compensation\nTraceback (most recent call last):\nY: [/] undo" \
        in result.stdout
    doc = json.loads(run("--database-url", sqlite_url, "-o", "json", "show", "x").stdout)
    assert doc["error"]["traceback"] == tb
    assert doc["error"]["compensation_traceback"] == "Traceback (most recent call last):\nY: [/] undo"
    none = _record_with_tracebacks(None, None)
    monkeypatch.setattr(SagaEngine, "get", lambda self, saga_id: none)
    doc = json.loads(run("--database-url", sqlite_url, "-o", "json", "show", "x").stdout)
    assert doc["error"]["traceback"] is None and doc["error"]["compensation_traceback"] is None
    assert "Traceback" not in run("--database-url", sqlite_url, "show", "x").stdout


# -- passwords in query parameters ---------------------------------------------


@pytest.mark.parametrize("url, masked", [
    ("postgresql+psycopg://u@h/db?password=secret", "postgresql+psycopg://u@h/db?password=***"),
    ("postgresql+psycopg://u@h/db?sslpassword=secret&sslmode=require",
     "postgresql+psycopg://u@h/db?sslmode=require&sslpassword=***"),
    ("postgresql+psycopg://u:secret@h/db?password=secret&application_name=a",
     "postgresql+psycopg://u:***@h/db?application_name=a&password=***"),
    ("postgresql://u@h:port/db?PASSWORD=secret&x=1", "postgresql://u@h:port/db?PASSWORD=***&x=1"),
    ("sqlite:///a.db", "sqlite:///a.db"),
])
def test_mask_url_masks_passwords_in_query_parameters(url: str, masked: str) -> None:
    from sagadsl.urls import mask_url as moved

    assert moved(url) == masked
    assert mask_url(url) == masked  # still importable from sagadsl.storage.sql
    assert "secret" not in moved(make_url(url) if "port/" not in url else url)


def test_query_parameter_passwords_never_printed(secret_pg: tuple[str, str], sqlite_url: str) -> None:
    url, schema = secret_pg
    bare = url.replace(f":{PASSWORD}@", "@")
    with_query = [f"{bare}?password={PASSWORD}", f"{bare}?sslpassword={PASSWORD}&password={PASSWORD}"]
    for target in with_query:
        unreachable = make_url(target).set(port=1).render_as_string(hide_password=False)
        unparsable = target.replace("127.0.0.1", "127.0.0.1:notaport")
        for command in (["db", "current"], ["-o", "json", "db", "current"], ["db", "check"],
                        ["db", "upgrade"], ["list"], ["show", "nope"], ["worker", *SAGAS, "--once"]):
            attempts = [run("--database-url", target, "--schema", schema, *command),
                        run("--schema", schema, *command, env={"SAGADSL_DATABASE_URL": target}),
                        run("--database-url", unreachable, *command),
                        run("--database-url", unparsable, *command)]
            for result in attempts:
                printed = result.stdout + result.stderr
                assert PASSWORD not in printed, (command, printed)
            assert attempts[0].exit_code == 0 or command == ["show", "nope"], attempts[0].stderr
            assert attempts[2].exit_code == 1 and "password=***" in attempts[2].stderr
        current = run("--database-url", target, "--schema", schema, "db", "current")
        assert "password=***" in current.stdout
        worker = run("--database-url", target, "--schema", schema, "worker", *SAGAS, "--once")
        assert "password=***" in worker.stderr and "worker started" in worker.stderr


def test_control_characters_from_a_saga_are_shown_escaped(monkeypatch: pytest.MonkeyPatch,
                                                          sqlite_url: str) -> None:
    SqlStorage(sqlite_url).close()
    record = _record_with_tracebacks("Traceback (most recent call last):\nX: \x1b[2J\x07gone", None)
    assert record.error is not None
    record = dataclasses.replace(record, id="\x1b]0;owned\x07id",
                                 error=dataclasses.replace(record.error, error="bad\x1b[31m red"))
    monkeypatch.setattr(SagaEngine, "get", lambda self, saga_id: record)
    result = run("--database-url", sqlite_url, "show", "x")
    assert result.exit_code == 0, result.stderr
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout
    assert result.stdout.startswith("Saga \\x1b]0;owned\\x07id\n")
    assert "error               bad\\x1b[31m red\n" in result.stdout
    assert "X: \\x1b[2J\\x07gone\n" in result.stdout


# -- locks ---------------------------------------------------------------------------


def test_locks_shows_who_holds_and_who_waits(durable_url: tuple[str, str | None]) -> None:
    from sagadsl import SagaEngine
    from sagadsl.storage import SqlStorage

    from .test_locks import Move, Transfer

    url, schema = durable_url
    with SagaEngine(SqlStorage(url, schema=schema)) as engine:
        engine.submit(Move, Transfer("x[/]", "y"), saga_id="waiter", idempotency_key="k")
    options = ["--database-url", url] + (["--schema", schema] if schema else [])
    table = run(*options, "locks")
    assert table.exit_code == 0, table.output
    assert "account:x[/]" in table.output and "waiter" in table.output and "waits" in table.output
    assert "0 held, 2 waiting" in table.output
    as_json = run(*options, "--output", "json", "locks", "account:y")
    assert as_json.exit_code == 0, as_json.output
    document = json.loads(as_json.output)
    assert [(r["key"], r["saga_id"], r["held"]) for r in document["locks"]] == [("account:y", "waiter", False)]
