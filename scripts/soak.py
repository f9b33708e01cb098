#!/usr/bin/env python
"""Soak run of the crash-torture harness, for long runs by hand.

    .venv/bin/python scripts/soak.py --sagas 5000 --minutes 10

Starts a throwaway PostgreSQL cluster (needs the server binaries), submits the
sagas, runs workers that are SIGKILLed at random, restarts the server once,
then checks the ledger: every saga terminal, no effect lost or doubled.
Exits 1 if any check fails.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn  # noqa: E402

from tests.torture.harness import Torture  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sagas", type=int, default=5000, help="sagas to submit (default 5000)")
    parser.add_argument("--minutes", type=float, default=10.0, help="time budget (default 10)")
    parser.add_argument("--workers", type=int, default=4, help="worker processes (default 4)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--kill-every", type=float, nargs=2, default=(0.5, 1.5), metavar=("MIN", "MAX"),
                        help="seconds between SIGKILLs of a random worker (default 0.5 1.5)")
    args = parser.parse_args()
    # Stopped with SIGTERM, still stop the workers and remove the throwaway cluster.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn()) as progress:
        task = progress.add_task("sagas finished", total=args.sagas)
        torture = Torture(sagas=args.sagas, workers=args.workers, minutes=args.minutes, seed=args.seed,
                          kill_every=tuple(args.kill_every),
                          progress=lambda done, total: progress.update(task, completed=done))
        report = torture.run()
    print(report.summary())
    for problem in report.problems[:50]:
        print("PROBLEM:", problem)
    ok = not report.problems and report.duplicates == 0 and report.lost == 0 and report.orphans == 0
    print("OK: no saga stranded, no effect lost or doubled" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
