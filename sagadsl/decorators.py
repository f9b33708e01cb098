"""``@step`` and ``@compensates``: mark methods of a :class:`~sagadsl.Saga`.

The decorators only check their own arguments and attach a small frozen spec
to the function; the metaclass checks everything that involves other members
and raises :class:`~sagadsl.SagaDefinitionError` naming ``Class.method``.
Both return the function unchanged, so type checkers keep its signature.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, TypeVar, Union

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
    after: tuple[StepRef, ...] | None


@dataclass(frozen=True)
class CompensatesSpec:
    """What ``@compensates(...)`` recorded on a method."""

    target: str


def display_name(func: Callable[..., Any]) -> str:
    """``Class.method`` for a function defined in a class body."""
    parts = getattr(func, "__qualname__", getattr(func, "__name__", repr(func))).split(".")
    parts = [p for p in parts if p != "<locals>"]
    return ".".join(parts[-2:])


def _ref_name(ref: object, where: str, what: str) -> str:
    if isinstance(ref, str):
        if not ref:
            raise SagaDefinitionError(f"{where}: {what} got an empty step name")
        return ref
    if callable(ref) and hasattr(ref, "__name__"):
        return str(ref.__name__)
    raise SagaDefinitionError(f"{where}: {what} takes a step name (str) or a step method, got {ref!r}")


def step(
    _misused: Any = None,
    *,
    idempotency_key: KeySpec | None = None,
    retry: RetryPolicy | None = None,
    timeout: float | None = None,
    compensation: CompensationPolicy | None = None,
    after: StepRef | tuple[StepRef, ...] | list[StepRef] | None = None,
) -> Callable[[F], F]:
    """Mark a saga method as a step.

    Args:
        idempotency_key: Required. A template such as ``"charge-{order_id}"``
            over the input's fields and ``saga_id``, or a callable receiving
            the saga instance. Available in the step as ``self.step_key``;
            it is the same for every attempt and after a resume.
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

    Raises:
        SagaDefinitionError: if used without parentheses or with bad arguments.
    """
    if _misused is not None:
        where = display_name(_misused) if callable(_misused) else "@step"
        raise SagaDefinitionError(
            f'{where}: @step must be called with an idempotency key, e.g. '
            f'@step(idempotency_key="{getattr(_misused, "__name__", "step")}-{{order_id}}")'
        )
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise SagaDefinitionError(f"@step: retry must be a RetryPolicy, got {retry!r}")
    if compensation is not None and not isinstance(compensation, CompensationPolicy):
        raise SagaDefinitionError(f"@step: compensation must be a CompensationPolicy, got {compensation!r}")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or timeout <= 0):
        raise SagaDefinitionError(f"@step: timeout must be a number of seconds > 0, got {timeout!r}")
    deps: tuple[StepRef, ...] | None
    if after is None:
        deps = None
    elif isinstance(after, (tuple, list)):
        deps = tuple(after)
    else:
        deps = (after,)

    def decorate(func: F) -> F:
        where = display_name(func)
        if not inspect.isfunction(func):
            raise SagaDefinitionError(f"{where}: @step decorates a plain (sync or async) method, "
                                      f"got {type(func).__name__}")
        if hasattr(func, COMPENSATES_ATTR):
            raise SagaDefinitionError(f"{where}: a method cannot be both @step and @compensates; "
                                      "write the compensation as its own method")
        if deps is not None:
            for dep in deps:
                _ref_name(dep, where, "@step(after=...)")
        setattr(func, STEP_ATTR, StepSpec(
            idempotency_key=idempotency_key,
            retry=retry or RetryPolicy(),
            timeout=float(timeout) if timeout is not None else None,
            compensation=compensation or CompensationPolicy(),
            after=tuple(_ref_name(d, where, "@step(after=...)") for d in deps) if deps is not None else None,
        ))
        return func

    return decorate


def compensates(target: StepRef) -> Callable[[F], F]:
    """Mark a saga method as the compensation of the step ``target``.

    The compensation runs when a later step fails and ``target`` had
    completed. Its first parameter, if any, receives ``target``'s result;
    further parameters named after ``target``'s dependencies receive theirs.

    Args:
        target: The step's method name, or the step method itself.

    Raises:
        SagaDefinitionError: if used without parentheses or with a bad target.
    """
    name = _ref_name(target, "@compensates", "@compensates(...)")

    def decorate(func: F) -> F:
        where = display_name(func)
        if not inspect.isfunction(func):
            raise SagaDefinitionError(f"{where}: @compensates decorates a plain (sync or async) method, "
                                      f"got {type(func).__name__}")
        if hasattr(func, STEP_ATTR):
            raise SagaDefinitionError(f"{where}: a method cannot be both @step and @compensates; "
                                      "write the compensation as its own method")
        setattr(func, COMPENSATES_ATTR, CompensatesSpec(target=name))
        return func

    if inspect.isfunction(target) and not hasattr(target, STEP_ATTR):
        # Written as a bare ``@compensates``, the class body binds the method's
        # name to ``decorate``; the metaclass finds this mark and says so.
        setattr(decorate, BARE_COMPENSATES_ATTR, target)
    return decorate
