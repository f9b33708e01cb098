"""The transaction of one attempt of a transactional step, on the saga's pinned connection.

A transactional step's writes and its completion share one database
transaction: the attempt begins it and writes through an ORM session joined
to it, and the session's next commit (the step's completion, or its
``compensated`` status) commits it. An attempt that fails rolls it back; one
whose thread is still running after a timeout cannot be rolled back under
it, so its connection is closed instead (the server rolls the transaction
back) and the session reconnects and takes its claim again before the next
use.

Only one attempt uses the connection at a time: the executor runs a
transactional step or compensation alone, never beside a sibling.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from ..errors import SagaError

__all__ = ["StepAttempt", "open_attempt"]


@dataclass
class StepAttempt:
    """One attempt's ORM session and the connection whose transaction it writes in."""

    where: str
    conn: Connection
    session: Session
    #: The attempt's thread has returned (or raised): nothing uses the connection any more.
    done: threading.Event = field(default_factory=threading.Event)
    #: The attempt succeeded and its writes wait, flushed, for the step's commit.
    succeeded: bool = False
    #: The attempt is over: its session refuses any further use.
    closed: bool = False

    def finish(self, ok: bool) -> None:
        """Called by the attempt's own thread when the step returns (``ok``) or raises."""
        try:
            if ok:
                self.session.flush()  # a failing flush fails the attempt, like the step raising
                self.succeeded = True
            else:
                self.rollback()
        finally:
            self.close()
            self.done.set()

    def rollback(self) -> None:
        try:
            if self.conn.in_transaction():
                self.conn.rollback()
        except Exception:  # noqa: BLE001 - a connection already gone has rolled back
            self.conn.invalidate()

    def close(self) -> None:
        self.closed = True
        self.session.close()


def open_attempt(conn: Connection, where: str) -> StepAttempt:
    """Begin a transaction on ``conn`` (if none is open) and an ORM session joined to it."""
    if not conn.in_transaction():
        conn.begin()
    # rollback_only: the session's commit() only flushes (the step's own commit
    # commits), its rollback() rolls the attempt back, close() leaves the
    # transaction alone. No SAVEPOINT round trips.
    session = Session(bind=conn, join_transaction_mode="rollback_only", expire_on_commit=False)
    attempt = StepAttempt(where, conn, session)

    @event.listens_for(session, "after_begin")
    def _refuse_after_the_attempt(*_: Any) -> None:
        if attempt.closed:
            raise SagaError(f"the self.db session of {where} was used after its attempt ended; it belongs "
                            "to one attempt of one step: do the work inside the step, or start a session "
                            "of your own")

    return attempt
