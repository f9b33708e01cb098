"""``@step`` and ``@compensates``: mark methods of a :class:`~sagadsl.Saga`.

The decorators only check their own arguments and attach a small frozen spec
to the function; the metaclass checks everything that involves other members
and raises :class:`~sagadsl.SagaDefinitionError` naming ``Class.method``.
Both return the function unchanged, so type checkers keep its signature.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, TypeVar, Union, overload

from .errors import SagaDefinitionError
from .policies import CompensationPolicy, RetryPolicy

__all__ = ["step", "compensates", "StepSpec", "CompensatesSpec", "KeySpec", "StepRef"]

F = TypeVar("F", bound=Callable[..., Any])

#: A step idempotency key: a ``str.format`` template over the input's fields
#: (and ``saga_id``), or a callable that receives the saga instance.
KeySpec = Union[str, Callable[[Any], str]]
#: A step named by its method name or by the decorated function itself.
StepRef = Union[str, Callable[..., Any]]

STEP_ATTR = "__sagadsl_step__"
COMPENSATES_ATTR = "__sagadsl_compensates__"
BARE_COMPENSATES_ATTR = "__sagadsl_bare_compensates__"


@dataclass(frozen=True)
class StepSpec:
    """What ``@step(...)`` recorded on a method."""

    idempotency_key: KeySpec | None
    retry: RetryPolicy
    timeout: float | None
    compensation: CompensationPolicy
    after: tuple[str, ...] | None
    pivot: bool = False
    transactional: bool = False


@dataclass(frozen=True)
class CompensatesSpec:
    """What ``@compensates(...)`` recorded on a method."""

    target: str
    transactional: bool = False


def display_name(func: Callable[..., Any]) -> str:
    """``Class.method`` for a function defined in a class body."""
    parts = getattr(func, "__qualname__", getattr(func, "__name__", repr(func))).split(".")
    parts = [p for p in parts if p != "<locals>"]
    return ".".join(parts[-2:])


def _ref_problem(ref: object, what: str) -> str | None:
    """Why ``ref`` names no step (a "{what} ..." text), or None."""
    if isinstance(ref, str):
        return f"{what} got an empty step name" if not ref else None
    if callable(ref) and hasattr(ref, "__name__"):
        return None
    return f"{what} takes a step name (str) or a step method, got {ref!r}"


def _ref_name(ref: StepRef) -> str:
    return ref if isinstance(ref, str) else str(ref.__name__)


class _Missing:
    """The default of ``compensates(target)``: ``@compensates()`` gets a clear message."""


_MISSING = _Missing()

#: ``after=`` of ``@step``: one step, or several.
After = Union[StepRef, tuple[StepRef, ...], list[StepRef], None]


@overload
def step(
    *,
    idempotency_key: str,
    retry: RetryPolicy | None = None,
    timeout: float | None = None,
    compensation: CompensationPolicy | None = None,
    after: After = None,
    pivot: bool = False,
    transactional: bool = False,
) -> Callable[[F], F]: ...


@overload
def step(
    *,
    idempotency_key: Callable[[Any], str],
    retry: RetryPolicy | None = None,
    timeout: float | None = None,
    compensation: CompensationPolicy | None = None,
    after: After = None,
    pivot: bool = False,
    transactional: bool = False,
) -> Callable[[F], F]: ...


# The overloads are what type checkers see: a key is required, and a bare
# ``@step`` or an ``@step()`` without one is a type error. The implementation
# accepts both, so that at run time they get a SagaDefinitionError with the
# correct usage instead of Python's TypeError about a missing argument.
def step(
    _misused: Any = None,
    *,
    idempotency_key: KeySpec | None = None,
    retry: RetryPolicy | None = None,
    timeout: float | None = None,
    compensation: CompensationPolicy | None = None,
    after: After = None,
    pivot: bool = False,
    transactional: bool = False,
) -> Callable[[F], F]:
    """Mark a saga method as a step.

    Args:
        idempotency_key: Required. A template such as ``"charge-{order_id}"``
            over the input's fields and ``saga_id`` (plain field names only),
            or a callable receiving the saga instance. Available in the step
            as ``self.step_key``; it is the same for every attempt and after
            a resume.
        retry: How failed attempts are retried; default: no retry.
        timeout: Seconds one attempt may take; default: bounded only by the
            saga's ``MAX_EXECUTION_DURATION``. An async step is cancelled at
            the timeout. A sync step runs in a worker thread, which Python
            cannot stop: its attempt is failed with ``StepTimeoutError`` and
            its eventual return value is discarded (pass ``self.step_key`` to
            whatever it calls so that a late duplicate has no effect).
        compensation: Retries and timeout of this step's compensation.
        after: Steps this one depends on (names or methods). By default a
            step depends on the step declared before it; ``after=()`` makes
            it a root. Steps whose dependencies are done run concurrently.
        pivot: This step is the point of no return (at most one per saga):
            the steps it depends on are compensatable, the steps that depend
            on it are retriable, retried until they succeed and never
            compensated. The pivot itself has no compensation.
        transactional: ``self.db`` is a SQLAlchemy ``Session`` whose writes
            commit in the same transaction as the step's completion. The
            method must be sync (``def``).

    Raises:
        SagaDefinitionError: naming ``Class.method``, if used without
            parentheses or with bad arguments.
    """
    if _misused is not None:
        where = display_name(_misused) if callable(_misused) else "@step"
        raise SagaDefinitionError(
            f'{where}: @step must be called with an idempotency key, e.g. '
            f'@step(idempotency_key="{getattr(_misused, "__name__", "step")}-{{order_id}}")'
        )
    # Bad arguments are reported when the method is known, so that the
    # message names Class.method like every other definition error.
    problem: str | None = None
    if retry is not None and not isinstance(retry, RetryPolicy):
        problem = f"retry= must be a RetryPolicy, e.g. retry=RetryPolicy(max_attempts=3), got {retry!r}"
    elif compensation is not None and not isinstance(compensation, CompensationPolicy):
        problem = ("compensation= must be a CompensationPolicy, e.g. "
                   f"compensation=CompensationPolicy(max_attempts=5), got {compensation!r}")
    elif timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                  or timeout <= 0):
        problem = f"timeout= must be a number of seconds > 0, got {timeout!r}"
    elif not isinstance(pivot, bool):
        problem = f"pivot= must be True or False, got {pivot!r}"
    elif not isinstance(transactional, bool):
        problem = f"transactional= must be True or False, got {transactional!r}"
    deps: tuple[StepRef, ...] | None
    if after is None:
        deps = None
    elif isinstance(after, (tuple, list)):
        deps = tuple(after)
    else:
        deps = (after,)
    for dep in deps or ():
        problem = problem or _ref_problem(dep, "@step(after=...)")

    def decorate(func: F) -> F:
        where = display_name(func)
        if problem is not None:
            raise SagaDefinitionError(f"{where}: {problem}")
        if not inspect.isfunction(func):
            raise SagaDefinitionError(f"{where}: @step decorates a plain (sync or async) method, "
                                      f"got {type(func).__name__}")
        if hasattr(func, COMPENSATES_ATTR):
            raise SagaDefinitionError(f"{where}: a method cannot be both @step and @compensates; "
                                      "write the compensation as its own method")
        setattr(func, STEP_ATTR, StepSpec(
            idempotency_key=idempotency_key,
            retry=retry or RetryPolicy(),
            timeout=float(timeout) if timeout is not None else None,
            compensation=compensation or CompensationPolicy(),
            after=tuple(_ref_name(d) for d in deps) if deps is not None else None,
            pivot=pivot,
            transactional=transactional,
        ))
        return func

    return decorate


@overload
def compensates(target: str, *, transactional: bool = False) -> Callable[[F], F]: ...


@overload
def compensates(target: Callable[..., Any], *, transactional: bool = False) -> Callable[[F], F]: ...


def compensates(target: StepRef | _Missing = _MISSING, *, transactional: bool = False) -> Callable[[F], F]:
    """Mark a saga method as the compensation of the step ``target``.

    The compensation runs when a later step fails and ``target`` had
    completed. Its first parameter, if any, receives ``target``'s result;
    further parameters named after ``target``'s dependencies receive theirs.

    Args:
        target: The step's method name, or the step method itself.
        transactional: ``self.db`` is a SQLAlchemy ``Session`` whose writes
            commit with the step's ``compensated`` status. The method must
            be sync (``def``).

    Raises:
        SagaDefinitionError: naming ``Class.method``, if used without
            parentheses, without a step, or with a bad target.
    """
    usage = '@compensates("reserve") or @compensates(reserve)'
    name: str | None = None
    problem: str | None = None
    if isinstance(target, _Missing):
        problem = f"@compensates() needs the step it undoes, e.g. {usage}"
    elif not isinstance(transactional, bool):
        problem = f"transactional= must be True or False, got {transactional!r}"
    else:
        problem = _ref_problem(target, "@compensates(...)")
        name = _ref_name(target) if problem is None else None

    def decorate(func: F) -> F:
        where = display_name(func)
        if problem is not None:
            raise SagaDefinitionError(f"{where}: {problem}")
        if not inspect.isfunction(func):
            raise SagaDefinitionError(f"{where}: @compensates decorates a plain (sync or async) method, "
                                      f"got {type(func).__name__}")
        if hasattr(func, STEP_ATTR):
            raise SagaDefinitionError(f"{where}: a method cannot be both @step and @compensates; "
                                      "write the compensation as its own method")
        assert name is not None
        setattr(func, COMPENSATES_ATTR, CompensatesSpec(target=name, transactional=transactional))
        return func

    if inspect.isfunction(target) and not hasattr(target, STEP_ATTR):
        # Written as a bare ``@compensates``, the class body binds the method's
        # name to ``decorate``; the metaclass finds this mark and says so.
        setattr(decorate, BARE_COMPENSATES_ATTR, target)
    return decorate
