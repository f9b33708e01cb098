"""The SQL statements of a saga's hot path, built once from the ORM tables.

Re-executing the same statement object reuses its memoized cache key and
SQLAlchemy's compiled form, where building it per write cost more CPU than
the database round trip. UPDATEs take their SET columns from each
execution's parameters; the WHERE bind names are prefixed (``w_``, ``s_``)
so they cannot collide with column names.
"""

from __future__ import annotations

import functools
from typing import Any

from sqlalchemy import BigInteger, Integer, Text, bindparam, case, delete, exists, func, insert, literal, literal_column
from sqlalchemy import select, text, true, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql import Executable, Update

from ..status import ACTIVE_STATUSES, StepStatus
from .base import GUARDED_COLUMNS
from .models import locks as locks_table
from .models import steps as steps_table
from .models import workflows as wf_table

__all__ = ["UPDATE_WORKFLOW", "UPDATE_STEP", "update_workflow", "INSERT_STEPS", "INSERT_WORKFLOW", "TRY_ADVISORY_LOCK",
           "ADVISORY_UNLOCK", "COUNT_CLAIM", "RELEASE_LOCKS", "HELD_ADVISORY_KEYS", "update_workflow_and_step",
           "create_saga_postgresql"]

UPDATE_WORKFLOW = update(wf_table).where(wf_table.c.id == bindparam("w_id"),
                                          wf_table.c.version == bindparam("w_expected"))
UPDATE_STEP = update(steps_table).where(steps_table.c.workflow_id == bindparam("s_workflow_id"),
                                         steps_table.c.name == bindparam("s_name"))
INSERT_STEPS = insert(steps_table)
TRY_ADVISORY_LOCK = select(func.pg_try_advisory_lock(bindparam("key", type_=BigInteger)))
# The pinned connection drove this one saga: releasing every session lock it
# holds also undoes a lock taken twice, which pg_advisory_unlock would not.
ADVISORY_UNLOCK = select(func.pg_advisory_unlock_all())
# Taking over an active saga counts as a claim until the executor commits
# progress; bumping the version fences off any executor that held it before.
COUNT_CLAIM = (update(wf_table)
                .where(wf_table.c.id == bindparam("w_id"),
                       wf_table.c.status.in_([s.value for s in ACTIVE_STATUSES]))
                .values(claims=wf_table.c.claims + 1, version=wf_table.c.version + 1)
                .returning(wf_table.c.version))


def _workflow_values(workflow_columns: tuple[str, ...], unless_cancelled: bool) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for c in workflow_columns:
        value: Any = bindparam(f"w_{c}", type_=wf_table.c[c].type)
        if unless_cancelled and c in GUARDED_COLUMNS:
            # Decided in the row's own UPDATE, under its row lock: a cancel
            # committed first wins, one committed later finds the saga ended.
            value = case((wf_table.c.cancel_reason.is_(None), value), else_=wf_table.c[c])
        values[c] = value
    return values


def _unlock_if_ended(cancel_reason: Any, unless_cancelled: bool) -> Any:
    """``pg_advisory_unlock_all()``, evaluated only if the commit ends the saga.

    A terminal commit that a cancel turned aside (``unless_cancelled`` and a
    reason set) leaves the saga going, so its claim must stay. The call sits
    in RETURNING, so it runs only when the fence held: a session lock is not
    transactional, and a statement that wrote nothing must not release it.
    """
    unlock = func.pg_advisory_unlock_all()
    if not unless_cancelled:
        return unlock.label("released")
    return case((cancel_reason.is_(None), unlock)).label("released")


@functools.lru_cache(maxsize=64)
def update_workflow(workflow_columns: tuple[str, ...], unless_cancelled: bool,
                    release_claim: bool = False) -> Executable:
    """The saga row's fenced UPDATE, returning its ``cancel_reason`` (no row: the fence failed).

    With ``release_claim`` (a terminal commit on PostgreSQL) the statement
    also releases the session's advisory claim when it ends the saga: one
    round trip fewer per saga than a release of its own.
    """
    returning = [wf_table.c.cancel_reason]
    if release_claim:
        returning.append(_unlock_if_ended(wf_table.c.cancel_reason, unless_cancelled))
    return (update(wf_table)
            .where(wf_table.c.id == bindparam("w_id"), wf_table.c.version == bindparam("w_expected"))
            .values(_workflow_values(workflow_columns, unless_cancelled))
            .returning(*returning))


@functools.lru_cache(maxsize=64)
def update_workflow_and_step(workflow_columns: tuple[str, ...], step_columns: tuple[str, ...],
                             unless_cancelled: bool = False, release_claim: bool = False) -> Update:
    """One PostgreSQL statement that updates the saga row and one of its step rows.

    The saga row's UPDATE is a data-modifying CTE fenced by ``version``; the
    step row is updated only if that CTE returned the row, so the statement
    returns a row only if the fence held, and that row is the saga's
    ``cancel_reason``. One round trip instead of two per step commit.

    The step row is found by its whole primary key from the parameters, not
    by joining to the CTE's output: a prepared statement's generic plan for
    the join searched the key's second column alone, a scan that grew with
    the table.

    ``release_claim`` releases the advisory claim in the same statement, as
    for :func:`update_workflow`.
    """
    fenced = (update(wf_table)
              .where(wf_table.c.id == bindparam("w_id"), wf_table.c.version == bindparam("w_expected"))
              .values(_workflow_values(workflow_columns, unless_cancelled))
              .returning(wf_table.c.id, wf_table.c.cancel_reason)
              .cte("fenced"))
    cancel_reason = select(fenced.c.cancel_reason).scalar_subquery()
    returning = [cancel_reason.label("cancel_reason")]
    if release_claim:
        returning.append(_unlock_if_ended(cancel_reason, unless_cancelled))
    return (update(steps_table)
            .where(steps_table.c.workflow_id == bindparam("w_id"), steps_table.c.name == bindparam("s_name"),
                   exists(select(fenced.c.id)))
            .values({c: bindparam(f"s_{c}", type_=steps_table.c[c].type) for c in step_columns})
            .returning(*returning))


@functools.lru_cache(maxsize=8)
def create_saga_postgresql(workflow_columns: tuple[str, ...], claim: bool) -> Executable:
    """One PostgreSQL statement that inserts a saga row and its pending step rows.

    The saga row's INSERT ... ON CONFLICT DO NOTHING is a CTE; the step rows
    (passed as arrays) are inserted only for the row it returned, so the
    statement returns rows if the saga was created and none if its id
    already existed. One round trip for the saga's first commit.

    With ``claim`` the statement also takes the saga's session advisory lock
    (parameter ``key``) and inserts only if it got it: no rows then means the
    id exists or another session holds the claim. A CTE calling a volatile
    function is evaluated once, before the INSERT that reads it.
    """
    values = [bindparam(f"w_{c}", type_=wf_table.c[c].type) for c in workflow_columns]
    insert_saga = postgresql.insert(wf_table)
    if claim:
        lock = func.pg_try_advisory_lock(bindparam("key", type_=BigInteger))
        claimed = select(lock.label("held")).cte("claim")
        insert_saga = insert_saga.from_select(list(workflow_columns), select(*values).where(claimed.c.held))
    else:
        insert_saga = insert_saga.values(dict(zip(workflow_columns, values)))
    created = (insert_saga
               .on_conflict_do_nothing(index_elements=["id"])
               .returning(wf_table.c.id)
               .cte("created"))
    new_steps = func.unnest(bindparam("names", type_=postgresql.ARRAY(Text)),
                            bindparam("positions", type_=postgresql.ARRAY(Integer)),
                            bindparam("keys", type_=postgresql.ARRAY(Text))
                            ).table_valued("name", "position", "idempotency_key").render_derived("new_steps")
    rows = (select(created.c.id, new_steps.c.name, new_steps.c.position, new_steps.c.idempotency_key,
                   literal(StepStatus.PENDING.value), literal(0))
            .select_from(created.join(new_steps, true())))
    return (insert(steps_table)
            .from_select(["workflow_id", "name", "position", "idempotency_key", "status", "attempts"], rows)
            .returning(steps_table.c.workflow_id))


INSERT_WORKFLOW = {
    dialect: make(wf_table).on_conflict_do_nothing(index_elements=["id"]).returning(wf_table.c.id)
    for dialect, make in (("postgresql", postgresql.insert), ("sqlite", sqlite.insert))
}


RELEASE_LOCKS = delete(locks_table).where(locks_table.c.workflow_id == bindparam("w_id"))

#: Advisory lock keys some session holds in this database now. A bigint key is
#: split into two oids in pg_locks; shifting the high half back rebuilds the
#: signed key. Locks in other databases of the same server are not claims here.
HELD_ADVISORY_KEYS = (
    select(literal_column("(classid::bigint << 32) | objid::bigint", BigInteger).label("key"))
    .select_from(text("pg_catalog.pg_locks"))
    .where(text("locktype = 'advisory' AND objsubid = 1 AND granted "
                "AND database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())"))
    .subquery("held")
)
