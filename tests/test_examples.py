"""Every file in examples/ runs, as a user would run it, and says what the docs say it says."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, cwd: Path, *args: str) -> str:
    """Run ``examples/<name>`` with this interpreter in ``cwd``; return its stdout."""
    done = subprocess.run([sys.executable, str(EXAMPLES / name), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, f"{name} exited {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_every_example_is_tested() -> None:
    tested = {"quickstart.py", "order_parallel.py", "service.py", "dead_letter.py", "order_pivot.py",
              "transfer.py", "outbox.py"}
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested


def test_quickstart_succeeds_compensates_and_resumes_after_sigkill(tmp_path: Path) -> None:
    out = run_example("quickstart.py", tmp_path)
    assert "=> order-1 completed: shipped parcel-order-1" in out
    assert "   release: giving back sku-42 (r-order-2)" in out
    assert ("=> order-2 failed at step 'charge' (card declined for 50000 cents); "
            "the reservation was released") in out
    assert "=> the process running order-3 was killed (exit code -9)" in out
    assert "=> stored: order-3 is pending, committed steps: reserve, charge" in out
    assert out.count("reserve: holding one sku-7") == 1
    assert out.count("charge: 900 cents") == 1
    assert out.endswith("ship ran once more and produced parcel-order-3\n")
    assert (tmp_path / "quickstart.db").exists()


def test_quickstart_can_be_run_again(tmp_path: Path) -> None:
    run_example("quickstart.py", tmp_path)
    assert "=> order-1 completed" in run_example("quickstart.py", tmp_path)


def test_order_parallel_retries_payment_and_runs_two_steps_at_once(tmp_path: Path) -> None:
    out = run_example("order_parallel.py", tmp_path)
    assert "   charge: attempt 1 lost its connection; retrying" in out
    assert "   charge: 2500 cents paid on attempt 2" in out
    assert "=> reserve_stock and book_shipping overlapped: True" in out
    assert ("=> o-101 failed at 'book_shipping' (no courier available); undone in this order: "
            "release_stock, refund") in out
    assert list(tmp_path.iterdir()) == []


def test_outbox_writes_each_row_and_message_once_and_relays_them_in_order(tmp_path: Path) -> None:
    out = run_example("outbox.py", tmp_path)
    assert [line.split("published ")[1] for line in out.splitlines() if "published" in line] == [
        "order.created A1", "order.confirmed A1", "order.created A2", "order.voided A2"]
    assert "relayed 0 messages on the next pass" in out
    assert out.endswith("orders: A1 confirmed\norders: A2 voided\n")


def test_service_runs_sagas_per_request_on_its_worker(tmp_path: Path) -> None:
    out = run_example("service.py", tmp_path, "--demo")
    assert out.splitlines()[1:] == [
        "POST /orders A1 -> 202 order-A1",
        "GET /order-A1 -> completed {'reserve': 'completed', 'charge': 'completed'}",
        "POST /orders A2 -> 202 order-A2",
        "GET /order-A2 -> failed {'reserve': 'compensated', 'charge': 'failed'}",
        "POST /orders A1 again -> 202 order-A1 (same saga, not run twice)",
        "POST /order-A3/cancel -> 202 cancelled; GET -> cancelled",
        "POST /order-A1/cancel -> 409 INVALID_STATE",
        "worker stopped, server closed",
    ]


def test_dead_letter_walkthrough_ends_with_everything_undone(tmp_path: Path) -> None:
    out = run_example("dead_letter.py", tmp_path)
    assert "=> COMPENSATION_FAILED: the saga is parked in dead letter" in out
    assert "   status: dead_letter" in out
    assert ("   compensation error: cancel_flight (compensating book_flight): ConnectionError: "
            "airline API: 503 Service Unavailable") in out
    assert "=> retry #1: status is now pending" in out
    assert "   cancel_flight: FL-t-1 cancelled" in out
    assert out.endswith("   status: failed; steps: book_flight compensated, book_hotel failed\n")


def test_order_pivot_retries_the_shipment_after_the_charge_and_compensates_before_it(tmp_path: Path) -> None:
    out = run_example("order_pivot.py", tmp_path)
    assert "   ship: label printed on attempt 3" in out
    assert "=> completed, past the pivot: True, shipment ship-o-1" in out
    assert "   release: res-o-2 released" in out and "release: res-o-1" not in out
    assert out.endswith("   step kinds: reserve compensatable, charge pivot, ship retriable\n")


def test_transfer_refuses_then_queues_a_transfer_on_a_held_account(tmp_path: Path) -> None:
    out = run_example("transfer.py", tmp_path)
    assert "=> t-2 refused: RESOURCE_LOCKED, key 'account:B' held by 't-1'; stored: False" in out
    assert "   account:B: t-2 waits" in out
    assert out.endswith("=> both completed; balances {'A': 40, 'B': 50, 'C': 10}; locks held: 0\n")


@pytest.mark.parametrize("name", ["quickstart.py", "order_parallel.py", "service.py", "dead_letter.py",
                                  "order_pivot.py", "transfer.py", "outbox.py"])
def test_examples_have_a_docstring_saying_how_to_run_them(name: str) -> None:
    source = (EXAMPLES / name).read_text()
    assert source.startswith('"""') and f"python examples/{name}" in source
