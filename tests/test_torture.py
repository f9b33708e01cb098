"""Crash torture: no saga is stranded and no effect is lost or doubled.

300 sagas of 3–6 steps with planned failures are driven by 4 worker
processes while a supervisor SIGKILLs a random worker every 0.1–0.3 s and
starts a new one, and the PostgreSQL server (a throwaway cluster this test
starts itself) is restarted abruptly once in the middle.
"""

from __future__ import annotations

import pytest

from .conftest import require_postgres
from .torture.cluster import _bindir
from .torture.harness import Torture


@pytest.mark.slow
def test_sagas_survive_killed_workers_and_a_server_restart(capsys: pytest.CaptureFixture[str]) -> None:
    require_postgres()
    if _bindir() is None:
        pytest.fail("the torture test needs the PostgreSQL server binaries (initdb, pg_ctl)")
    report = Torture(sagas=300, workers=4, kill_every=(0.1, 0.3), minutes=2.5).run()
    with capsys.disabled():
        print(f"\ntorture: {report.summary()}")
    assert report.problems == []
    assert report.not_terminal == 0
    assert report.duplicates == 0
    assert report.lost == 0
    assert report.orphans == 0
    assert report.completed + report.failed + report.dead_letter + report.cancelled_at_end == 300
    assert report.kills >= 20, "the supervisor should have killed workers throughout"
    assert report.server_restarts == 1
    assert report.resumes > 0, "killed workers should have left sagas for other workers to finish"
    assert report.dead_letter > 0 and report.failed > 0 and report.completed > 0
    assert report.lock_overlaps == 0
    assert report.past_pivot > 0, "pivot sagas should have passed their pivot"
    assert report.tx_steps > 0, "transactional sagas should have been checked row by row"
    assert report.cancelled > 0, "the supervisor should have cancelled running sagas"
