"""Semantic locks in SQL: taking a saga's lock keys, queueing for them, and refusing.

At most one holder per key is enforced by the database itself: a unique
index over the held rows of ``sagadsl_locks`` (migration ``sagadsl_0004``).
The queries here only decide who may take a key and name the holder when
one is taken.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import exists, insert, literal, select, tuple_, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from ..errors import ResourceLockedError
from .base import NewWorkflow
from .models import locks as locks_table

__all__ = ["insert_locks", "take_waiting_locks", "still_waiting", "resource_locked"]


def insert_locks(conn: Connection, new: NewWorkflow, *, held: bool) -> None:
    """Write the new saga's lock rows: held by a saga that runs now, queued for a submitted one.

    A saga that runs now needs every key free of holders; sagas waiting in
    the queue hold none of their keys.
    """
    if held:
        taken = conn.execute(select(locks_table.c.key, locks_table.c.workflow_id)
                             .where(locks_table.c.key.in_(new.locks), locks_table.c.held.is_(True))).first()
        if taken is not None:
            raise resource_locked(new.id, new.saga_name, taken.key, taken.workflow_id)
    # The unique index over held keys is what makes two holders impossible;
    # the check above only names the holder. The caller's transaction rolls
    # back on the error, so nothing of the saga is written.
    try:
        conn.execute(insert(locks_table), [dict(key=key, workflow_id=new.id, held=held,
                                                requested_at=new.now) for key in new.locks])
    except IntegrityError as exc:  # a concurrent saga took a key in between
        raise resource_locked(new.id, new.saga_name, None, None) from exc


def take_waiting_locks(conn: Connection, saga_id: str, saga_name: str) -> None:
    """Take all of a queued saga's keys at once, or raise ResourceLockedError and take none.

    A key is free for this saga when nobody holds it and no saga queued
    before it waits for it: sagas start in submission order per key.
    """
    mine, other = _blocking_pair()
    blocking = conn.execute(select(mine.c.key, other.c.workflow_id)
                            .join(other, _blocks(mine, other)).where(mine.c.workflow_id == saga_id)
                            .order_by(other.c.held.desc())).first()
    if blocking is not None:
        raise resource_locked(saga_id, saga_name, blocking.key, blocking.workflow_id, waiting=True)
    try:
        conn.execute(update(locks_table).where(locks_table.c.workflow_id == saga_id,
                                               locks_table.c.held.is_(False)).values(held=True))
    except IntegrityError as exc:
        raise resource_locked(saga_id, saga_name, None, None, waiting=True) from exc


def _blocking_pair() -> tuple[Any, Any]:
    return locks_table.alias("mine"), locks_table.alias("other")


def _blocks(mine: Any, other: Any) -> Any:
    """``other`` keeps the saga of ``mine`` waiting: it holds that key, or was queued for it first."""
    return ((other.c.key == mine.c.key) & (other.c.workflow_id != mine.c.workflow_id)
            & mine.c.held.is_(False)
            & (other.c.held.is_(True) | (tuple_(other.c.requested_at, other.c.workflow_id)
                                         < tuple_(mine.c.requested_at, mine.c.workflow_id))))


def still_waiting(workflow_id: Any) -> Any:
    """SQL: the saga of ``workflow_id`` waits for a lock key it cannot take yet.

    Workers leave such sagas out of their poll, so that a queue of waiting
    sagas never crowds out the sagas they could run.
    """
    mine, other = _blocking_pair()
    return exists(select(literal(1)).select_from(mine).join(other, _blocks(mine, other))
                  .where(mine.c.workflow_id == workflow_id))


def resource_locked(saga_id: str, saga_name: str, key: str | None, holder: str | None, *,
                     waiting: bool = False) -> ResourceLockedError:
    what = f"lock key {key!r} is held by saga {holder!r}" if key else "one of its lock keys was just taken"
    then = ("it waits in pending and a worker starts it when its keys are free" if waiting else
            "nothing was written; wait for that saga to finish, or submit() to queue this one")
    return ResourceLockedError(f"saga {saga_id!r} ({saga_name}) cannot start: {what}; {then}",
                               saga_id=saga_id, key=key, holder=holder)
