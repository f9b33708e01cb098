"""Who may drive a saga in SQL: the claim protocol, one strategy object per storage.

Two protocols, chosen once when a :class:`~sagadsl.storage.SqlStorage` starts:

- :class:`AdvisoryClaim` (PostgreSQL): a session advisory lock on the
  connection pinned for the saga. It dies with that connection, so a dead
  executor's claim is released at once; keepalives bound how long a
  vanished machine's connection lives.
- :class:`LeaseClaim` (SQLite and other databases): an owner token and a
  lease on the saga row, renewed by every commit. A dead owner on this host
  is detected at once; an owner on another host loses the claim when its
  lease runs out.

Each session gets its own claim object, which holds the claim's state
(held or not) and knows how to take it, keep it across a reconnect, renew
it with each write, release it, and which sagas a worker may take.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any, Collection, Protocol

from sqlalchemy import Integer, String, all_, bindparam, func, literal_column, or_, select, tuple_, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection

from ..errors import SagaLockedError
from ..limits import MAX_EXECUTION_DURATION
from ..locks import advisory_key, claim_is_free, owner_token
from ..status import ACTIVE_STATUSES, WorkflowStatus
from .models import UTCDateTime
from .models import workflows as wf_table
from .semantic_locks import still_waiting
from .statements import ADVISORY_UNLOCK, COUNT_CLAIM, HELD_ADVISORY_KEYS, TRY_ADVISORY_LOCK

__all__ = ["Claim", "ClaimProtocol", "AdvisoryClaim", "LeaseClaim", "ADVISORY", "LEASE", "LEASE_DURATION",
           "advisory_lock_key"]

#: An executor's lease on a saga row (where advisory locks do not exist). It is
#: renewed by every commit, and no step may run longer than the saga's budget.
LEASE_DURATION = MAX_EXECUTION_DURATION + timedelta(minutes=1)
#: Active sagas read per page when a lease-based worker looks for free ones.
RECOVERY_PAGE = 500

logger = logging.getLogger("sagadsl.storage")

_ACTIVE = [s.value for s in ACTIVE_STATUSES]
_TERMINAL_VALUES = frozenset(s.value for s in WorkflowStatus if s.is_terminal)


def advisory_lock_key(saga_id: str, schema: str | None) -> int:
    """The advisory lock key of ``saga_id`` in ``schema``.

    Advisory locks are per database, so sagas with the same id in two schemas
    of one database (tenants, test runs) must not claim the same key.
    """
    return advisory_key(f"{schema}.{saga_id}" if schema else saga_id)


def locked(saga_id: str, holder: str | None = None) -> SagaLockedError:
    """The error for a saga another live executor drives."""
    who = f" ({holder})" if holder else ""
    return SagaLockedError(
        f"saga {saga_id!r} is being run by another live executor{who}; wait for it to finish, or let a "
        "worker resume it if that executor dies", saga_id=saga_id)


class Claim(Protocol):
    """One session's claim on one saga."""

    #: Whether the claim is taken inside the statement that creates the saga.
    claims_in_create: bool
    #: Whether a terminal commit of one statement can release the claim
    #: itself (see :func:`~sagadsl.storage.statements.update_workflow`).
    releases_in_terminal_commit: bool
    #: Whether this session holds the claim now.
    held: bool

    def creation_values(self, claim: bool, now: datetime) -> dict[str, Any]:
        """Columns of a new saga row that record this claim."""
        ...

    def take(self, conn: Connection) -> None:
        """Take the claim before the saga is loaded, in a statement of its own.

        Raises:
            SagaLockedError: another live executor holds it.
        """
        ...

    def count(self, conn: Connection, now: datetime) -> int | None:
        """Inside the loading transaction: record the take-over (and, for a lease, take it).

        Returns the saga row's version after it, or None if the saga was no
        longer active (nothing was counted).
        """
        ...

    def created(self, claim: bool) -> None:
        """The creating commit landed, with the claim if ``claim``."""
        ...

    def after_reconnect(self, conn: Connection) -> None:
        """Inside a transaction on a new connection: take the claim back, or raise SagaLockedError."""
        ...

    def write_values(self, values: dict[str, Any]) -> None:
        """Add what renews (or, in a terminal commit, clears) the claim to a write's values."""
        ...

    def ended(self, released: bool) -> None:
        """A terminal commit landed: it cleared whatever the claim keeps in the saga row.

        ``released``: the commit also released the claim itself.
        """
        ...

    def release(self, conn: Connection) -> None:
        """Release a held claim on a live connection, in a statement of its own (the session closes)."""
        ...

    def forget(self) -> None:
        """The connection is gone, and the claim with it (or it will lapse)."""
        ...


class AdvisoryClaim:
    """A session advisory lock on the pinned connection (PostgreSQL)."""

    claims_in_create = True
    releases_in_terminal_commit = True

    def __init__(self, saga_id: str, key: int) -> None:
        self.saga_id = saga_id
        self.key = key
        self.held = False

    def creation_values(self, claim: bool, now: datetime) -> dict[str, Any]:
        if claim:
            # A session lock outlives a failed statement: from here on
            # release() undoes whatever this session may hold.
            self.held = True
        return {"owner": None, "lease_expires_at": None, "lock_key": self.key}

    def take(self, conn: Connection) -> None:
        if not conn.execute(TRY_ADVISORY_LOCK, {"key": self.key}).scalar_one():
            raise locked(self.saga_id)
        self.held = True

    def count(self, conn: Connection, now: datetime) -> int | None:
        version = conn.execute(COUNT_CLAIM, {"w_id": self.saga_id}).scalar_one_or_none()
        return None if version is None else int(version)

    def created(self, claim: bool) -> None:
        self.held = claim

    def after_reconnect(self, conn: Connection) -> None:
        if not conn.execute(TRY_ADVISORY_LOCK, {"key": self.key}).scalar_one():
            raise locked(self.saga_id, "it was taken over while this executor was disconnected")
        self.held = True

    def write_values(self, values: dict[str, Any]) -> None:
        pass

    def ended(self, released: bool) -> None:
        # The session lock outlives the row's status: unless the terminal
        # commit released it, close() does.
        if released:
            self.held = False

    def release(self, conn: Connection) -> None:
        # The pinned connection drove this one saga: releasing every session
        # lock it holds also undoes a lock taken twice.
        conn.execute(ADVISORY_UNLOCK)
        self.held = False

    def forget(self) -> None:
        self.held = False


class LeaseClaim:
    """An owner token and a lease on the saga row (SQLite and other databases)."""

    claims_in_create = False
    releases_in_terminal_commit = False  # the terminal commit clears the lease anyway

    def __init__(self, saga_id: str) -> None:
        self.saga_id = saga_id
        self.token = owner_token()
        self.held = False

    def creation_values(self, claim: bool, now: datetime) -> dict[str, Any]:
        return {"owner": self.token if claim else None,
                "lease_expires_at": now + LEASE_DURATION if claim else None, "lock_key": None}

    def take(self, conn: Connection) -> None:
        pass  # taken in the loading transaction, by count()

    def count(self, conn: Connection, now: datetime) -> int | None:
        row = conn.execute(select(wf_table.c.owner, wf_table.c.lease_expires_at, wf_table.c.status,
                                  wf_table.c.version)
                           .where(wf_table.c.id == self.saga_id)).first()
        if row is None or WorkflowStatus(row.status).is_terminal:
            return None
        owner, expires = row.owner, row.lease_expires_at
        if not claim_is_free(owner, expires, now):
            raise locked(self.saga_id, f"owner {owner}, lease until {expires.isoformat() if expires else '?'}")
        if owner is not None:
            logger.warning(
                "taking over saga %s from dead or expired executor %s", self.saga_id, owner,
                extra={"saga_id": self.saga_id})
        taken = conn.execute(update(wf_table).where(wf_table.c.id == self.saga_id, wf_table.c.version == row.version)
                             .values(owner=self.token, lease_expires_at=now + LEASE_DURATION,
                                     version=row.version + 1, claims=wf_table.c.claims + 1)).rowcount
        self.held = True
        return int(row.version) + 1 if taken == 1 else None

    def created(self, claim: bool) -> None:
        self.held = claim

    def after_reconnect(self, conn: Connection) -> None:
        pass  # the row's owner is still this session's token; the version fence decides

    def write_values(self, values: dict[str, Any]) -> None:
        if not self.held:
            return
        if values.get("status") in _TERMINAL_VALUES:
            # Cleared by the final write itself (unless a cancel keeps the saga going: see ended()).
            values["owner"] = None
            values["lease_expires_at"] = None
        else:
            values["lease_expires_at"] = values["updated_at"] + LEASE_DURATION

    def ended(self, released: bool) -> None:
        self.held = False

    def release(self, conn: Connection) -> None:
        conn.execute(update(wf_table)
                     .where(wf_table.c.id == self.saga_id, wf_table.c.owner == self.token)
                     .values(owner=None, lease_expires_at=None))
        self.held = False

    def forget(self) -> None:
        self.held = False


class ClaimProtocol(Protocol):
    """How a storage claims sagas: a claim per session, and which sagas are free."""

    name: str

    def for_session(self, saga_id: str, schema: str | None) -> Claim:
        """The claim of a new session on ``saga_id``."""
        ...

    def recoverable(self, conn: Connection, now: datetime, limit: int, exclude: Collection[str]) -> list[str]:
        """Ids of active sagas no live executor holds, oldest first."""
        ...


def _started(now: Any) -> Any:
    """Sagas a worker may start by ``now``: no ``start_after``, or one that has passed."""
    return or_(wf_table.c.start_after.is_(None), wf_table.c.start_after <= now)


#: When a saga became due, the key of ``ix_sagadsl_workflows_due``: a poll
#: reads active sagas in this order and stops after the few it needs (the
#: ones not due yet sort after every due one).
_DUE = func.coalesce(wf_table.c.start_after, wf_table.c.created_at)
#: The partial index's own predicate, with the statuses as literals.
_POLLED = wf_table.c.status.in_([literal_column(f"'{s}'") for s in _ACTIVE])

#: PostgreSQL's poll, built once: held claims are left out in SQL, so however
#: many older sagas live executors hold, the page holds sagas a worker can
#: take; the ids the worker set aside go as one array parameter.
_ADVISORY_POLL = (
    select(wf_table.c.id)
    .where(_POLLED, _started(bindparam("now", type_=UTCDateTime())),
           wf_table.c.id != all_(bindparam("exclude", type_=postgresql.ARRAY(String))),
           ~still_waiting(wf_table.c.id),
           or_(wf_table.c.lock_key.is_(None), wf_table.c.lock_key.not_in(select(HELD_ADVISORY_KEYS.c.key))))
    .order_by(_DUE, wf_table.c.id)
    .limit(bindparam("limit", type_=Integer))
)


class _Advisory:
    name = "advisory"

    def for_session(self, saga_id: str, schema: str | None) -> Claim:
        return AdvisoryClaim(saga_id, advisory_lock_key(saga_id, schema))

    def recoverable(self, conn: Connection, now: datetime, limit: int, exclude: Collection[str]) -> list[str]:
        params = {"now": now, "exclude": list(exclude), "limit": limit}
        return list(conn.execute(_ADVISORY_POLL, params).scalars())


class _Lease:
    name = "lease"

    def for_session(self, saga_id: str, schema: str | None) -> Claim:
        return LeaseClaim(saga_id)

    def recoverable(self, conn: Connection, now: datetime, limit: int, exclude: Collection[str]) -> list[str]:
        # A lease's owner on this host is checked for liveness in Python, so
        # page through the active sagas until enough free ones are found.
        free: list[str] = []
        after: tuple[datetime, str] | None = None
        while len(free) < limit:
            stmt = (select(wf_table.c.id, wf_table.c.owner, wf_table.c.lease_expires_at, _DUE.label("due"))
                    .where(_POLLED, _started(now), ~still_waiting(wf_table.c.id))
                    .order_by(_DUE, wf_table.c.id).limit(RECOVERY_PAGE))
            if exclude:
                stmt = stmt.where(wf_table.c.id.not_in(list(exclude)))
            if after is not None:
                stmt = stmt.where(tuple_(_DUE, wf_table.c.id) > tuple_(*after))
            rows = conn.execute(stmt).all()
            free.extend(r.id for r in rows if claim_is_free(r.owner, r.lease_expires_at, now))
            if len(rows) < RECOVERY_PAGE:
                break
            after = (rows[-1].due, rows[-1].id)
        return free[:limit]


#: The claim protocol of PostgreSQL.
ADVISORY: ClaimProtocol = _Advisory()
#: The claim protocol of every other database.
LEASE: ClaimProtocol = _Lease()
