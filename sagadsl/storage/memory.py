"""In-memory storage for unit tests: fast, and gone when the process ends."""

from __future__ import annotations

import copy
import dataclasses
import threading
from types import SimpleNamespace
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Collection, Sequence

from ..errors import (
    InvalidStateError,
    RetryCapExceededError,
    SagaLockedError,
    SagaNotFoundError,
)
from ..records import ErrorInfo, QueryResult, StepRecord, WorkflowRecord
from ..status import ACTIVE_STATUSES, StepStatus, WorkflowStatus
from .base import GUARDED_COLUMNS, CancelOutcome, Change, LockRecord, NewWorkflow, QueryFilter
from .cancelling import explain_refused_cancel
from .claims import locked
from .semantic_locks import resource_locked

__all__ = ["InMemoryStorage"]


@dataclass
class _Row:
    values: dict[str, Any]
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)


class InMemoryStorage:
    """Sagas in a dict guarded by a lock. **Not production safe.**

    Everything is lost when the process exits, and claims only exclude other
    executors in this process. Use it in unit tests; the engine logs a
    warning when it is used.
    """

    is_production_safe = False
    detects_dead_executors = True

    def __init__(self) -> None:
        self._guard = threading.RLock()
        self._rows: dict[str, _Row] = {}
        self._claims: dict[str, str] = {}
        #: Semantic locks: key -> {saga id: (held, requested_at)}.
        self._locks: dict[str, dict[str, tuple[bool, datetime]]] = {}

    def session(self, saga_id: str) -> _MemorySession:
        return _MemorySession(self, saga_id)

    def get(self, saga_id: str) -> WorkflowRecord | None:
        with self._guard:
            row = self._rows.get(saga_id)
            return _record(row) if row is not None else None

    def query(self, flt: QueryFilter) -> QueryResult:
        with self._guard:
            matches = [r for r in self._rows.values() if _matches(r.values, flt)]
            matches.sort(key=lambda r: (r.values["created_at"], r.values["id"]), reverse=flt.order == "newest")
            page = matches[flt.offset: flt.offset + flt.limit]
            return QueryResult(workflows=[_record(r) for r in page], total=len(matches))

    def count(self, statuses: Sequence[WorkflowStatus]) -> int:
        wanted = {s.value for s in statuses}
        with self._guard:
            return sum(1 for r in self._rows.values() if not wanted or r.values["status"] in wanted)

    def count_by_status(self) -> dict[WorkflowStatus, int]:
        with self._guard:
            counts = {status: 0 for status in WorkflowStatus}
            for r in self._rows.values():
                counts[WorkflowStatus(r.values["status"])] += 1
            return counts

    def retry(self, saga_id: str, now: datetime, max_retries: int) -> int:
        with self._guard:
            row = self._rows.get(saga_id)
            if row is None:
                raise SagaNotFoundError(f"no saga with id {saga_id!r}", saga_id=saga_id)
            v = row.values
            if v["status"] != WorkflowStatus.DEAD_LETTER.value:
                raise InvalidStateError(f"saga {saga_id!r} is {v['status']}, not dead_letter; only a "
                                        "dead-letter saga can be retried", saga_id=saga_id)
            if v["retry_count"] >= max_retries:
                raise RetryCapExceededError(
                    f"saga {saga_id!r} was already retried {v['retry_count']} times, the cap is "
                    f"{max_retries}; inspect it with `saga-admin show {saga_id}` and resolve it by hand",
                    saga_id=saga_id)
            v.update(status=WorkflowStatus.PENDING.value, retry_count=v["retry_count"] + 1,
                     started_at=now, updated_at=now, stuck_after=now, claims=0, version=v["version"] + 1)
            if (v.get("error_step") is None and v.get("compensation_error") is None) or v.get("past_pivot"):
                # Parked by the engine while going forward: it resumes forward.
                v.update(error=None, error_at=None, error_traceback=None)
            return int(v["retry_count"])

    def cancel(self, saga_id: str, reason: str, now: datetime) -> CancelOutcome:
        with self._guard:
            row = self._rows.get(saga_id)
            v = row.values if row is not None else None
            if v is not None and v["status"] == WorkflowStatus.PENDING.value:
                if v["started_at"] is None:
                    v.update(status=WorkflowStatus.CANCELLED.value, cancel_reason=reason, updated_at=now,
                             stuck_after=None, version=v["version"] + 1)
                    self._release(saga_id)
                    return "cancelled"
                if v.get("cancel_reason") is None and not v.get("past_pivot") and not v.get("pivot_started"):
                    v["cancel_reason"] = reason
                    return "requested"
            fields = ("status", "cancel_reason", "past_pivot", "pivot_started", "error_step", "started_at")
            outcome = explain_refused_cancel(
                saga_id, None if v is None else SimpleNamespace(**{f: v.get(f) for f in fields}))
        assert outcome is not None, "nothing moves a saga while the guard is held"
        return outcome

    def recoverable(self, now: datetime, limit: int, exclude: Collection[str] = ()) -> list[str]:
        with self._guard:
            active = [r.values for r in self._rows.values()
                      if r.values["status"] in {s.value for s in ACTIVE_STATUSES}
                      and r.values["id"] not in self._claims and r.values["id"] not in exclude
                      and (r.values.get("start_after") is None or r.values["start_after"] <= now)
                      and not self._waiting(r.values["id"])]
            active.sort(key=lambda v: (v.get("start_after") or v["created_at"], v["id"]))
            return [v["id"] for v in active[:limit]]

    def count_by_name(self) -> dict[str, dict[WorkflowStatus, int]]:
        counts: dict[str, dict[WorkflowStatus, int]] = {}
        with self._guard:
            for r in self._rows.values():
                by_status = counts.setdefault(r.values["saga_name"], {})
                status = WorkflowStatus(r.values["status"])
                by_status[status] = by_status.get(status, 0) + 1
        return counts

    def prune(self, before: datetime, statuses: Collection[WorkflowStatus], batch: int,
              progress: Callable[[int], None] | None = None) -> int:
        wanted = {s.value for s in statuses} - {s.value for s in ACTIVE_STATUSES}
        deleted = 0
        while True:
            with self._guard:
                ids = [saga_id for saga_id, r in self._rows.items()
                       if r.values["status"] in wanted and r.values["updated_at"] < before][:batch]
                for saga_id in ids:
                    del self._rows[saga_id]
                    self._release(saga_id)
            deleted += len(ids)
            if ids and progress is not None:
                progress(len(ids))
            if len(ids) < batch:
                return deleted

    def locks(self, keys: Sequence[str] = ()) -> list[LockRecord]:
        with self._guard:
            out = [LockRecord(key, saga_id, held, at) for key, entries in self._locks.items()
                   if not keys or key in keys for saga_id, (held, at) in entries.items()]
        return sorted(out, key=lambda r: (r.key, not r.held, r.requested_at, r.saga_id))

    def _take_locks(self, new: NewWorkflow, held: bool) -> None:
        if held:
            for key in new.locks:
                holders = [saga_id for saga_id, (is_held, _) in self._locks.get(key, {}).items() if is_held]
                if holders:
                    raise resource_locked(new.id, new.saga_name, key, holders[0])
        for key in new.locks:
            self._locks.setdefault(key, {})[new.id] = (held, new.now)

    def _blocker(self, saga_id: str) -> tuple[str, str] | None:
        """The (key, saga) that keeps ``saga_id`` waiting: a holder, or a saga queued first."""
        for key, entries in self._locks.items():
            mine = entries.get(saga_id)
            if mine is None or mine[0]:
                continue
            for other, (held, other_at) in entries.items():
                if other != saga_id and (held or (other_at, other) < (mine[1], saga_id)):
                    return key, other
        return None

    def _waiting(self, saga_id: str) -> bool:
        return self._blocker(saga_id) is not None

    def _take_waiting(self, saga_id: str, saga_name: str) -> None:
        blocker = self._blocker(saga_id)
        if blocker is not None:
            raise resource_locked(saga_id, saga_name, blocker[0], blocker[1], waiting=True)
        for key, entries in self._locks.items():
            if saga_id in entries:
                entries[saga_id] = (True, entries[saga_id][1])

    def _release(self, saga_id: str) -> None:
        for key in [k for k, entries in self._locks.items() if saga_id in entries]:
            del self._locks[key][saga_id]
            if not self._locks[key]:
                del self._locks[key]

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return "InMemoryStorage()"



def _matches(v: dict[str, Any], flt: QueryFilter) -> bool:
    if flt.statuses and v["status"] not in {s.value for s in flt.statuses}:
        return False
    if flt.saga_name and v["saga_name"] != flt.saga_name:
        return False
    if flt.created_after and v["created_at"] < flt.created_after:
        return False
    if flt.created_before and v["created_at"] >= flt.created_before:
        return False
    if flt.updated_after and v["updated_at"] < flt.updated_after:
        return False
    if flt.updated_before and v["updated_at"] >= flt.updated_before:
        return False
    if flt.stuck_at:
        if v["status"] not in {s.value for s in ACTIVE_STATUSES}:
            return False
        if v["stuck_after"] is None or v["stuck_after"] >= flt.stuck_at:
            return False
    return True


def _record(row: _Row) -> WorkflowRecord:
    v = copy.deepcopy(row.values)
    error = None
    if v.get("error") is not None or v.get("compensation_error") is not None:
        error = ErrorInfo(step_name=v.get("error_step"), error=v.get("error"),
                          compensation_error=v.get("compensation_error"), timestamp=v.get("error_at"),
                          traceback=v.get("error_traceback"),
                          compensation_traceback=v.get("compensation_traceback"))
    steps = sorted(row.steps.values(), key=lambda s: s["position"])
    return WorkflowRecord(
        id=v["id"], saga_name=v["saga_name"], status=WorkflowStatus(v["status"]), input=v["input"],
        idempotency_key=v["idempotency_key"], fingerprint=v["fingerprint"],
        steps=tuple(StepRecord(
            name=s["name"], position=s["position"], idempotency_key=s["idempotency_key"],
            status=StepStatus(s["status"]), result=copy.deepcopy(s.get("result")),
            attempts=s.get("attempts", 0), started_at=s.get("started_at"), finished_at=s.get("finished_at"),
            error=s.get("error"), compensation_error=s.get("compensation_error"),
            compensated_at=s.get("compensated_at")) for s in steps),
        retry_count=v["retry_count"], error=error, created_at=v["created_at"], updated_at=v["updated_at"],
        started_at=v["started_at"], current_step=v.get("current_step"), stuck_after=v.get("stuck_after"),
        claims=v.get("claims", 0), past_pivot=bool(v.get("past_pivot", False)), locks=tuple(v.get("locks") or ()),
        start_after=v.get("start_after"), cancel_reason=v.get("cancel_reason"),
        pivot_started=bool(v.get("pivot_started", False)),
    )


class _MemorySession:
    def __init__(self, storage: InMemoryStorage, saga_id: str) -> None:
        self._storage = storage
        self._saga_id = saga_id
        self._claimed = False
        self._version = 0

    def begin(self, new: NewWorkflow | None, *, saga_id: str, claim: bool,
              now: datetime) -> WorkflowRecord | None:
        s = self._storage
        with s._guard:
            if claim:
                if saga_id in s._claims:
                    raise SagaLockedError(
                        f"saga {saga_id!r} is being run by another live executor; wait for it to finish",
                        saga_id=saga_id)
            row = s._rows.get(saga_id)
            if row is None and new is not None and new.locks:
                s._take_locks(new, held=claim and new.started)
            elif row is not None and claim and row.values["status"] in {st.value for st in ACTIVE_STATUSES} \
                    and row.values.get("locks"):
                s._take_waiting(saga_id, row.values["saga_name"])
            if claim:
                s._claims[saga_id] = "held"
                self._claimed = True
            if row is None and new is not None:
                values = {f.name: getattr(new, f.name) for f in dataclasses.fields(new)
                          if f.name not in ("steps", "now")}
                values.update(status=WorkflowStatus.PENDING.value, input=copy.deepcopy(new.input), retry_count=0,
                              created_at=new.now, updated_at=new.now, started_at=new.now if new.started else None,
                              current_step=None, error_step=None, error=None, compensation_error=None,
                              error_at=None, claims=1 if claim else 0, version=0)
                s._rows[saga_id] = _Row(values, {
                    st.name: {"name": st.name, "position": st.position,
                              "idempotency_key": st.idempotency_key,
                              "status": StepStatus.PENDING.value, "attempts": 0}
                    for st in new.steps})
                return None
            if row is None:
                raise SagaNotFoundError(f"no saga with id {saga_id!r}", saga_id=saga_id)
            if claim and row.values["status"] in {st.value for st in ACTIVE_STATUSES}:
                row.values["claims"] = row.values.get("claims", 0) + 1
                row.values["version"] += 1
            self._version = row.values["version"]
            return _record(row)

    def write(self, change: Change) -> str | None:
        s = self._storage
        with s._guard:
            row = s._rows[self._saga_id]
            if row.values["version"] != self._version:
                raise locked(self._saga_id, "its stored state moved on; this executor stops")
            reason = row.values.get("cancel_reason")
            workflow = copy.deepcopy(change.workflow)
            if change.unless_cancelled and reason is not None:
                for column in GUARDED_COLUMNS:
                    workflow.pop(column, None)
            row.values.update(workflow, version=self._version + 1)
            self._version += 1
            for name, values in change.steps.items():
                row.steps[name].update(copy.deepcopy(values))
            for st in change.new_steps:
                row.steps[st.name] = {"name": st.name, "position": st.position,
                                      "idempotency_key": st.idempotency_key,
                                      "status": StepStatus.PENDING.value, "attempts": 0}
            for name in change.removed_steps:
                row.steps.pop(name, None)
            status = workflow.get("status")
            if status is not None and WorkflowStatus(status).is_terminal and status != WorkflowStatus.DEAD_LETTER:
                s._release(self._saga_id)
            return reason

    def close(self) -> None:
        if self._claimed:
            with self._storage._guard:
                self._storage._claims.pop(self._saga_id, None)
            self._claimed = False
