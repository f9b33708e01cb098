"""Driving one saga: forward through its step graph, or backward through compensations.

The executor owns no connection and no claim: it receives a storage session
that already holds both, and turns each finished step into one commit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Awaitable, Callable, Iterable, TypeVar

from ..clock import Clock
from ..codec import from_json, to_json
from ..definition import SagaDefinition, StepDefinition
from ..errors import SerializationError
from ..events import EventEmitter
from ..limits import MAX_EXECUTION_DURATION, describe_exception, format_traceback, truncate_error
from ..records import SagaResult, WorkflowRecord
from ..saga import Saga
from ..status import StepStatus, WorkflowStatus
from ..storage.base import Change, StorageSession
from .attempts import (
    AttemptOutcome,
    Budget,
    Call,
    Phase,
    Runtime,
    UntilItSucceeds,
    call_with_retries,
)
from .outcomes import (
    cancel_dead_letter_error,
    cancelled_error,
    cannot_drive_error,
    dead_letter_error,
    failed_error,
    goes_backward,
    is_engine_failure,
    parked_values,
    past_pivot_error,
)
from .context import step_db
from .stuck import stuck_allowance

__all__ = ["SagaExecutor"]

logger = logging.getLogger("sagadsl.executor")
T = TypeVar("T")

@dataclass(frozen=True)
class _Failure:
    """Why the saga stops going forward: a step's error, or (both None) a cancel."""

    step: str | None
    error: Exception | None


#: The forward pass stops because the saga was cancelled.
_CANCELLED = _Failure(None, None)


class SagaExecutor:
    """Runs one claimed saga to a terminal status.

    Args:
        saga: The bound saga instance (input and id set).
        record: The stored saga when resuming, None for a fresh one.
        session: The storage session holding the claim.
        db: Runs a storage call (inline, or on a thread for ``run_async``).
    """

    def __init__(
        self,
        *,
        saga: Saga[Any],
        definition: SagaDefinition,
        session: StorageSession,
        record: WorkflowRecord | None,
        started_at: datetime,
        clock: Clock,
        pool: Executor,
        emitter: EventEmitter,
        db: Callable[[Callable[[], Any]], Awaitable[Any]],
    ) -> None:
        self.saga = saga
        self.definition = definition
        self.session = session
        self.clock = clock
        self.pool = pool
        self.emitter = emitter
        self.runtime = Runtime(clock, pool, emitter)
        self._db = db
        self._t0 = time.perf_counter()
        self.saga_id = saga.saga_id
        self.where_cls = definition.class_name
        self.budget = Budget(started_at + MAX_EXECUTION_DURATION, self.saga_id)
        self.allowance = stuck_allowance(definition)
        self.status: dict[str, StepStatus] = {s.name: StepStatus.PENDING for s in definition.steps}
        self.results: dict[str, Any] = {}
        self.keys: dict[str, str] = {}
        self.error_step: str | None = None
        self.error_text: str | None = None
        self.backward = False
        #: The pivot's completion is committed: from here on, only forward.
        self.past_pivot = False
        #: The commit before the pivot step started landed: no cancel from here on.
        self.pivot_started = False
        #: The reason of a cancel, as the saga's commits return it: it is compensated and ends ``cancelled``.
        self.cancel_reason: str | None = None
        #: Past the pivot, the first failing step's row values, written with the parking commit.
        self._parked_step_values: dict[str, Any] = {}
        #: The failure commit already ended the saga (nothing to compensate).
        self._ended_by_failure = False
        self._completion_written = False
        self._in_flight_unknown = False
        #: A transactional step or compensation succeeded: its writes wait, in the
        #: connection's open transaction, for the next commit (its outcome's).
        self._step_writes_pending = False
        #: The first commit of progress resets the stored claim count.
        self._claims_to_reset = record is None or record.claims > 0
        #: A step whose value could not be stored, compensated before the
        #: failure commit, whose compensation failed: (message, exception).
        self._early_compensation_failure: tuple[str, BaseException] | None = None
        if record is not None:
            self._restore(record)

    # -- state from a stored row ---------------------------------------------

    def _restore(self, record: WorkflowRecord) -> None:
        for stored in record.steps:
            if not self.definition.has_step(stored.name):
                continue
            self.status[stored.name] = stored.status
            self.keys[stored.name] = stored.idempotency_key
            if stored.status in (StepStatus.COMPLETED, StepStatus.COMPENSATION_FAILED,
                                 StepStatus.COMPENSATED):
                # Compensated results too: a later compensation may take them as inputs.
                step = self.definition.step(stored.name)
                self.results[stored.name] = from_json(
                    stored.result, step.return_type(),
                    where=f"stored result of {self.where_cls}.{stored.name} (saga {self.saga_id!r})")
        for step in self.definition.steps:
            if step.name not in self.keys:  # added to the class since the saga started
                self.keys[step.name] = step.render_key(self.saga)
        if record.error is not None:
            self.error_step = record.error.step_name
            self.error_text = record.error.error
        self.backward = goes_backward(record)
        self.past_pivot = record.past_pivot
        self.pivot_started = record.pivot_started
        self.cancel_reason = record.cancel_reason
        #: Cancelled but not yet compensating when its last executor stopped: a
        #: step may have been in flight then, its effect done but not recorded.
        self._in_flight_unknown = record.cancel_reason is not None and record.status == WorkflowStatus.PENDING
        if self.past_pivot:
            # Resumed forward after a retry: a step that failed past the pivot runs again.
            for name, status in self.status.items():
                if status == StepStatus.FAILED:
                    self.status[name] = StepStatus.PENDING

    # -- commits ----------------------------------------------------------------

    async def _write(self, workflow: dict[str, Any], steps: dict[str, dict[str, Any]] | None = None, *,
                     unless_cancelled: bool = False) -> None:
        """Commit a change; note a cancel its commit reports.

        With ``unless_cancelled`` (a commit that completes or fails the saga,
        or starts its pivot) a cancel requested first keeps the saga row's
        status and pivot flags as they were: the caller checks
        ``self.cancel_reason`` afterwards.
        """
        now = workflow.setdefault("updated_at", self.clock.now())
        if workflow.get("status") in (None, WorkflowStatus.PENDING.value, WorkflowStatus.COMPENSATING.value):
            workflow.setdefault("stuck_after", now + self.allowance)
        if self._claims_to_reset:
            workflow["claims"] = 0
            self._claims_to_reset = False
        change = Change(workflow=workflow, steps=steps or {}, unless_cancelled=unless_cancelled,
                        with_step_writes=self._step_writes_pending)
        self._step_writes_pending = False
        reason = await self._db(lambda: self.session.write(change))
        if reason is not None and self.cancel_reason is None:
            logger.info("saga %s was cancelled (%s); compensating it", self.saga_id, reason,
                        extra={"saga_id": self.saga_id, "step": None})
            self.cancel_reason = reason

    # -- entry point ------------------------------------------------------------

    async def execute(self, resumed: bool) -> SagaResult:
        """Drive the saga to a terminal status and return or raise its outcome.

        If the engine's own machinery fails for this saga (a value it cannot
        store, a key it cannot render), the saga is parked in dead letter
        with the reason instead of being left active to fail again on every
        resume.
        """
        try:
            return await self._execute(resumed)
        except Exception as exc:
            if not is_engine_failure(exc):
                raise
            reason = f"the engine failed while driving it: {describe_exception(exc)}"
            await self.park(reason, exc)
            raise cannot_drive_error(self.saga_id, self.definition.name, reason) from exc

    async def park(self, reason: str, cause: BaseException) -> None:
        """Move the saga to dead letter because the engine cannot drive it, recording why."""
        logger.error("saga %s cannot be driven; moving it to dead letter: %s", self.saga_id, reason,
                     exc_info=cause, extra={"saga_id": self.saga_id, "step": None})
        values = parked_values(backward=self.backward, reason=reason, cause=cause, now=self.clock.now())
        await self._db(lambda: self.session.write(Change(workflow=values)))
        parked = cannot_drive_error(self.saga_id, self.definition.name, reason)
        parked.__cause__ = cause
        await self.emitter.emit("dead_letter", error=parked, duration=time.perf_counter() - self._t0)

    async def _execute(self, resumed: bool) -> SagaResult:
        self._t0 = time.perf_counter()
        await self.emitter.emit("saga_start", resumed=resumed)
        logger.debug("saga %s %s", self.saga_id, "resumed" if resumed else "started",
                     extra={"saga_id": self.saga_id, "step": None})
        if resumed:
            for name, status in self.status.items():
                if status == StepStatus.COMPLETED and not self.backward:
                    await self.emitter.emit("step_skipped", name, result=self.results.get(name))
        if not self.backward:
            failure = await self._forward()
            if failure is not None and self.past_pivot:
                await self._park_past_pivot(failure)
            if failure is None:
                await self.emitter.emit("saga_complete", result=dict(self.results),
                                        duration=time.perf_counter() - self._t0)
                logger.debug("saga %s completed", self.saga_id, extra={"saga_id": self.saga_id, "step": None})
                return SagaResult(self.saga_id, WorkflowStatus.COMPLETED, dict(self.results))
            cause: BaseException | None = failure.error
            if failure.error is not None:
                self.error_step = failure.step
                self.error_text = describe_exception(failure.error)
        else:
            cause = None
            if self._in_flight_unknown:
                await self._finish_in_flight()
        comp_error, comp_cause = await self._backward()
        duration = time.perf_counter() - self._t0
        if self.cancel_reason is not None:
            await self._end_cancelled(comp_error, comp_cause, duration)
        if comp_error is None:
            failed = failed_error(self.saga_id, self.definition.name, self.error_step, self.error_text)
            failed.__cause__ = cause
            # Saga-level events name no step; the error they carry names it.
            await self.emitter.emit("saga_failed", error=failed, duration=duration)
            logger.info("saga %s failed at step %s; every completed step was compensated", self.saga_id,
                        self.error_step, extra={"saga_id": self.saga_id, "step": None})
            raise failed
        dead = dead_letter_error(self.saga_id, self.definition.name, self.error_step, self.error_text,
                                 comp_error)
        dead.__cause__ = comp_cause
        await self.emitter.emit("dead_letter", error=dead, duration=duration)
        logger.warning("saga %s moved to dead letter: %s", self.saga_id, comp_error,
                       extra={"saga_id": self.saga_id, "step": None})
        raise dead

    async def _end_cancelled(self, comp_error: str | None, comp_cause: BaseException | None,
                             duration: float) -> None:
        """Raise how a cancelled saga ended: ``cancelled``, or dead letter if a compensation failed."""
        assert self.cancel_reason is not None
        if comp_error is None:
            cancelled = cancelled_error(self.saga_id, self.definition.name, self.cancel_reason)
            await self.emitter.emit("saga_cancelled", error=cancelled, duration=duration)
            logger.info("saga %s was cancelled; every completed step was compensated", self.saga_id,
                        extra={"saga_id": self.saga_id, "step": None})
            raise cancelled
        dead = cancel_dead_letter_error(self.saga_id, self.definition.name, self.cancel_reason, comp_error)
        dead.__cause__ = comp_cause
        await self.emitter.emit("dead_letter", error=dead, duration=duration)
        logger.warning("saga %s moved to dead letter while being cancelled: %s", self.saga_id, comp_error,
                       extra={"saga_id": self.saga_id, "step": None})
        raise dead

    async def _finish_in_flight(self) -> None:
        """Run again the steps that may have been in flight when a cancelled saga's executor died.

        Such a step may have had its effect without its result being
        committed; run again with its idempotency key, its result is
        committed and it is compensated with the others, as a step in flight
        when the cancel arrived would have been. The pivot is never among
        them: a cancel is refused once it may have started.
        """
        failure: _Failure | None = None
        for s in self._ready(set()):
            if s.name != self.definition.pivot:
                failure = await self._settle(s, await self._run_step(s), failure, {})

    # -- forward ------------------------------------------------------------------

    def _ready(self, running: set[str]) -> list[StepDefinition]:
        return [s for s in self.definition.steps
                if self.status[s.name] == StepStatus.PENDING and s.name not in running
                and all(self.status[d] == StepStatus.COMPLETED for d in s.after)]

    def _to_compensate(self) -> set[str]:
        """The steps the backward pass must still compensate: the one place that decides it."""
        return {s.name for s in self.definition.steps
                if s.compensation is not None
                and self.status[s.name] in (StepStatus.COMPLETED, StepStatus.COMPENSATION_FAILED)}

    async def _forward(self) -> _Failure | None:
        running: dict[asyncio.Task[AttemptOutcome], StepDefinition] = {}
        failure: _Failure | None = None
        try:
            while True:
                ready: list[StepDefinition] = []
                if failure is None and self.cancel_reason is not None:
                    failure = _CANCELLED  # the steps still running settle; nothing new starts
                if failure is None and not any(r.transactional for r in running.values()):
                    for s in self._ready({r.name for r in running.values()}):
                        remaining = self.budget.remaining(self.clock)
                        if remaining is not None and remaining <= 0:
                            failure = _Failure(s.name, self.budget.exceeded_error(f"step {s.name!r}"))
                            if not self.past_pivot:  # past it, the parking commit records it
                                await self._record_failure(failure, attempts=0, running=bool(running or ready))
                            break
                        if s.transactional and (running or ready):
                            # Its transaction is the saga connection's only one:
                            # it runs alone, once the steps beside it are done.
                            continue
                        if s.name == self.definition.pivot and not self.pivot_started:
                            # A commit before the point of no return orders it
                            # against a cancel: one that came first stops the
                            # saga here; any later one is refused.
                            await self._write({"pivot_started": True}, unless_cancelled=True)
                            if self.cancel_reason is not None:
                                failure = _CANCELLED
                                break
                            self.pivot_started = True
                        ready.append(s)
                        if s.transactional:
                            break
                if failure is None and len(ready) == 1 and not running:
                    # The next step of a chain runs alone: awaited in place,
                    # without a task of its own or a wait on a set of tasks.
                    (s,) = ready
                    failure = await self._settle(s, await self._run_step(s), failure, running)
                    continue
                for s in ready:
                    running[asyncio.ensure_future(self._run_step(s))] = s
                if not running:
                    if failure is None and not self._completion_written:
                        # A resume that found nothing left to run (its remaining
                        # steps were removed from the class) still ends the saga.
                        await self._write({"status": WorkflowStatus.COMPLETED.value, "stuck_after": None},
                                          unless_cancelled=True)
                        if self.cancel_reason is not None:
                            return _CANCELLED
                    return failure
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in sorted(done, key=lambda t: running[t].position):
                    s = running.pop(task)
                    failure = await self._settle(s, task.result(), failure, running)
        finally:
            await _cancel(running)

    async def _settle(self, s: StepDefinition, outcome: AttemptOutcome, failure: _Failure | None,
                      running: dict[asyncio.Task[AttemptOutcome], StepDefinition]) -> _Failure | None:
        """Commit how step ``s`` ended; the saga's failure so far, or the first one."""
        if outcome.ok:
            await self._record_completion(s, outcome, finishing=not running and failure is None)
            return failure
        assert outcome.error is not None
        await self.emitter.emit("step_failed", s.name, error=outcome.error,
                                attempt=outcome.attempts, idempotency_key=self.keys[s.name])
        step_values = self._failed_step_values(outcome)
        if outcome.unstored is not None and s.compensation is not None:
            # The step ran, so its effect may exist, but its value cannot be
            # stored: compensate it now, with the value it returned, before
            # the commit that records the failure (after that commit the
            # value would be gone). A crash before that commit runs the step
            # again on resume, which fails and compensates the same way.
            step_values.update(await self._compensate_unstored(s, outcome.unstored[0]))
        if self.past_pivot:
            # Nothing is compensated past the pivot: the saga is parked once
            # the steps still running have settled.
            self.status[s.name] = StepStatus.FAILED
            if failure is None:
                self._parked_step_values[s.name] = step_values
                logger.error("saga %s step %s failed past the pivot: %s", self.saga_id, s.name,
                             describe_exception(outcome.error), exc_info=outcome.error,
                             extra={"saga_id": self.saga_id, "step": s.name})
                return _Failure(s.name, outcome.error)
            await self._write({}, {s.name: step_values})
            return failure
        if failure is None:
            failure = _Failure(s.name, outcome.error)
            await self._record_failure(failure, attempts=outcome.attempts,
                                       running=bool(running), outcome=outcome, step_values=step_values)
            return failure
        await self._write({}, {s.name: step_values})
        self.status[s.name] = StepStatus.FAILED
        logger.info("saga %s step %s failed: %s", self.saga_id, s.name, describe_exception(outcome.error),
                    extra={"saga_id": self.saga_id, "step": s.name})
        return failure

    async def _run_step(self, s: StepDefinition) -> AttemptOutcome:
        where = f"{self.where_cls}.{s.name}"
        kwargs = {p: self.results[p] for p in s.params}
        what = f"result of {where} (saga {self.saga_id!r})"
        return_type = s.return_type()

        def durable(value: Any) -> tuple[Any, Any]:
            # The one place where a result becomes durable: later steps get
            # the stored form decoded back, exactly what a resume would give.
            try:
                stored = to_json(value, where=what)
                return from_json(stored, return_type, where=what), stored
            except SerializationError:
                raise
            except Exception as exc:  # a constructor of the annotated type raised
                raise SerializationError(f"{what}: decoding it back failed: {describe_exception(exc)}") from exc

        func = getattr(self.saga, s.name)
        if s.transactional:
            func = self._in_transaction(func, where)
        call = Call(func, kwargs, s.is_async, self.keys[s.name], where, s.name, Phase.STEP)
        # A step after the pivot is retried until it succeeds (within the budget).
        policy = UntilItSucceeds(s.retry) if s.kind == "retriable" else s.retry
        outcome = await call_with_retries(call, policy, timeout=s.timeout, budget=self.budget,
                                          runtime=self.runtime, durable=durable)
        self._step_writes_pending = s.transactional and outcome.ok
        return outcome

    def _in_transaction(self, func: Callable[..., Any], where: str) -> Callable[..., Any]:
        """``func`` run as one attempt of a transactional step: ``self.db`` is that attempt's session."""
        open_attempt = getattr(self.session, "open_step_attempt")  # noqa: B009 - checked at admission

        def attempt(**kwargs: Any) -> Any:
            opened = open_attempt(where)
            token = step_db.set(opened.session)
            ok = False
            try:
                value = func(**kwargs)
                ok = True
                return value
            finally:
                step_db.reset(token)
                opened.finish(ok)  # flushes (a failing flush fails the attempt) or rolls back

        return attempt

    async def _compensate_unstored(self, s: StepDefinition, value: Any) -> dict[str, Any]:
        """Compensate step ``s`` with the value it returned; its row's compensation columns."""
        comp = s.compensation
        assert comp is not None
        outcome = await self._compensate(s.name, result=value)
        if outcome.ok:
            logger.debug("saga %s step %s compensated", self.saga_id, s.name,
                         extra={"saga_id": self.saga_id, "step": s.name})
            return {"status": StepStatus.COMPENSATED.value, "compensated_at": self.clock.now(),
                    "compensation_error": None}
        assert outcome.error is not None
        text = describe_exception(outcome.error)
        await self.emitter.emit("compensation_failed", s.name, error=outcome.error,
                                attempt=outcome.attempts, idempotency_key=self.keys[s.name])
        logger.error("saga %s step %s could not be compensated: %s", self.saga_id, s.name, text,
                     exc_info=outcome.error, extra={"saga_id": self.saga_id, "step": s.name})
        # The step stays ``failed``: a retry cannot run this compensation
        # again, as the value it needs was never stored.
        self._early_compensation_failure = (
            truncate_error(f"{comp.method_name} (compensating {s.name}, whose result could not be stored, so "
                           f"a retry will not run it again: undo its effect by hand): {text}"), outcome.error)
        return {"compensation_error": text}

    async def _record_completion(self, s: StepDefinition, outcome: AttemptOutcome, finishing: bool) -> None:
        value, encoded = outcome.value
        self.status[s.name] = StepStatus.COMPLETED
        self.results[s.name] = value
        complete = finishing and all(st == StepStatus.COMPLETED for st in self.status.values())
        workflow: dict[str, Any] = {"current_step": s.name}
        if s.name == self.definition.pivot:
            # The point of no return is passed in the commit of the pivot's
            # completion, so a crash can never see one without the other.
            workflow["past_pivot"] = True
            self.past_pivot = True
        if complete:
            # The last step and the saga's completion share one commit.
            workflow.update(status=WorkflowStatus.COMPLETED.value, stuck_after=None)
        await self._write(workflow, {s.name: {
            "status": StepStatus.COMPLETED.value, "result": encoded, "attempts": outcome.attempts,
            "started_at": outcome.started_at, "finished_at": outcome.finished_at, "error": None,
        }}, unless_cancelled=complete)
        # A cancel that came first kept the saga going: it is compensated, this step too.
        self._completion_written = complete and self.cancel_reason is None
        logger.debug("saga %s step %s completed", self.saga_id, s.name,
                     extra={"saga_id": self.saga_id, "step": s.name})

    def _failed_step_values(self, outcome: AttemptOutcome) -> dict[str, Any]:
        return {"status": StepStatus.FAILED.value, "attempts": outcome.attempts,
                "started_at": outcome.started_at, "finished_at": outcome.finished_at,
                "error": describe_exception(outcome.error) if outcome.error else None}

    async def _park_past_pivot(self, failure: _Failure) -> None:
        """Past the pivot a step could not be completed: dead letter, nothing compensated, then raise."""
        assert failure.step is not None and failure.error is not None
        now = self.clock.now()
        text = describe_exception(failure.error)
        workflow: dict[str, Any] = {
            "status": WorkflowStatus.DEAD_LETTER.value, "stuck_after": None, "current_step": failure.step,
            "error_step": failure.step, "error": text, "error_at": now, "updated_at": now,
            "error_traceback": format_traceback(failure.error), "compensation_error": None,
        }
        await self._write(workflow, self._parked_step_values)
        dead = past_pivot_error(self.saga_id, self.definition.name, failure.step, text)
        dead.__cause__ = failure.error
        await self.emitter.emit("dead_letter", error=dead, duration=time.perf_counter() - self._t0)
        logger.warning("saga %s moved to dead letter past its pivot: step %s: %s", self.saga_id, failure.step,
                       text, extra={"saga_id": self.saga_id, "step": None})
        raise dead

    async def _record_failure(self, failure: _Failure, *, attempts: int, running: bool,
                              outcome: AttemptOutcome | None = None,
                              step_values: dict[str, Any] | None = None) -> None:
        assert failure.step is not None and failure.error is not None
        now = self.clock.now()
        text = describe_exception(failure.error)
        logger.error("saga %s step %s failed: %s", self.saga_id, failure.step, text, exc_info=failure.error,
                     extra={"saga_id": self.saga_id, "step": failure.step})
        # A failed early compensation still has to end the saga in dead
        # letter: the backward pass does that.
        final = (not running and not self._to_compensate() and self._early_compensation_failure is None
                 and self.cancel_reason is None)
        workflow: dict[str, Any] = {
            "status": (WorkflowStatus.FAILED if final else WorkflowStatus.COMPENSATING).value,
            "current_step": failure.step, "error_step": failure.step, "error": text,
            "compensation_error": None, "error_at": now, "updated_at": now,
            "error_traceback": format_traceback(failure.error), "compensation_traceback": None,
        }
        if final:
            workflow["stuck_after"] = None
        steps: dict[str, dict[str, Any]] = {}
        if outcome is not None:
            steps[failure.step] = step_values if step_values is not None else self._failed_step_values(outcome)
            self.status[failure.step] = StepStatus.FAILED
        await self._write(workflow, steps, unless_cancelled=final)
        self.backward = True
        # A cancel that came first kept the saga pending: the backward pass ends it ``cancelled``.
        self._ended_by_failure = final and self.cancel_reason is None

    # -- backward -----------------------------------------------------------------

    async def _backward(self) -> tuple[str | None, BaseException | None]:
        """Compensate every completed step; return the first compensation error, if any."""
        if self._ended_by_failure:
            return None, None
        descendants = self.definition.descendants
        todo = self._to_compensate()
        running: dict[asyncio.Task[AttemptOutcome], str] = {}
        first_error: str | None = None
        first_cause: BaseException | None = None
        if self._early_compensation_failure is not None:
            first_error, first_cause = self._early_compensation_failure
        failed_any = first_error is not None
        if not todo:
            if failed_any:
                assert first_cause is not None
                await self._write({"status": WorkflowStatus.DEAD_LETTER.value, "stuck_after": None,
                                   "compensation_error": first_error,
                                   "compensation_traceback": format_traceback(first_cause)})
                return first_error, first_cause
            await self._write({"status": self._unwound().value, "stuck_after": None})
            return None, None
        try:
            while todo or running:
                blocked = todo | set(running.values())
                for name in sorted(todo, key=lambda n: -self.definition.step(n).position):
                    if any(self._compensated_in_transaction(r) for r in running.values()):
                        break  # a transactional compensation runs alone, like a transactional step
                    if not (descendants[name] & blocked):
                        if self._compensated_in_transaction(name) and running:
                            continue
                        todo.discard(name)
                        running[asyncio.ensure_future(self._compensate(name))] = name
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in sorted(done, key=lambda t: -self.definition.step(running[t]).position):
                    name = running.pop(task)
                    outcome = task.result()
                    last = not todo and not running
                    now = self.clock.now()
                    workflow: dict[str, Any] = {"current_step": name, "updated_at": now,
                                                "status": WorkflowStatus.COMPENSATING.value}
                    if outcome.ok:
                        self.status[name] = StepStatus.COMPENSATED
                        step_values: dict[str, Any] = {
                            "status": StepStatus.COMPENSATED.value, "compensated_at": now,
                            "compensation_error": None}
                    else:
                        assert outcome.error is not None
                        failed_any = True
                        self.status[name] = StepStatus.COMPENSATION_FAILED
                        comp = self.definition.step(name).compensation
                        assert comp is not None
                        text = describe_exception(outcome.error)
                        step_values = {"status": StepStatus.COMPENSATION_FAILED.value,
                                       "compensation_error": text}
                        await self.emitter.emit("compensation_failed", name, error=outcome.error,
                                                attempt=outcome.attempts, idempotency_key=self.keys[name])
                        if first_error is None:
                            first_error = truncate_error(f"{comp.method_name} (compensating {name}): {text}")
                            first_cause = outcome.error
                            workflow["compensation_error"] = first_error
                            workflow["compensation_traceback"] = format_traceback(outcome.error)
                    if last:
                        final = WorkflowStatus.DEAD_LETTER if failed_any else self._unwound()
                        workflow.update(status=final.value, stuck_after=None)
                        if not failed_any:
                            # A retry that compensated everything clears the old
                            # compensation error; the retry count keeps the history.
                            workflow["compensation_error"] = None
                            workflow["compensation_traceback"] = None
                        elif "compensation_error" not in workflow and first_cause is not None:
                            workflow["compensation_error"] = first_error
                            workflow["compensation_traceback"] = format_traceback(first_cause)
                    await self._write(workflow, {name: step_values})
                    if outcome.ok:
                        logger.debug("saga %s step %s compensated", self.saga_id, name,
                                     extra={"saga_id": self.saga_id, "step": name})
                    else:
                        logger.error("saga %s step %s could not be compensated: %s", self.saga_id, name,
                                     step_values["compensation_error"], exc_info=outcome.error,
                                     extra={"saga_id": self.saga_id, "step": name})
        finally:
            await _cancel(running)
        return first_error, first_cause

    def _compensated_in_transaction(self, name: str) -> bool:
        comp = self.definition.step(name).compensation
        return comp is not None and comp.transactional

    def _unwound(self) -> WorkflowStatus:
        """The status of a saga whose every completed step was compensated."""
        return WorkflowStatus.CANCELLED if self.cancel_reason is not None else WorkflowStatus.FAILED

    async def _compensate(self, name: str, *, result: Any = None) -> AttemptOutcome:
        s = self.definition.step(name)
        comp = s.compensation
        assert comp is not None
        kwargs: dict[str, Any] = {p: self.results[p] for p in comp.step_params}
        if comp.result_param is not None:
            kwargs[comp.result_param] = self.results.get(name, result)
        policy = s.compensation_policy
        where = f"{self.where_cls}.{comp.method_name}"
        func = getattr(self.saga, comp.method_name)
        if comp.transactional:
            func = self._in_transaction(func, where)
        call = Call(func, kwargs, comp.is_async, self.keys[name], where, name, Phase.COMPENSATION)
        outcome = await call_with_retries(call, policy, timeout=policy.timeout, budget=None, runtime=self.runtime)
        self._step_writes_pending = comp.transactional and outcome.ok
        return outcome


async def _cancel(running: Iterable[asyncio.Future[Any]]) -> None:
    """Cancel steps still running when the executor stops, and let them finish cancelling."""
    tasks = [task for task in running if not task.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks)
