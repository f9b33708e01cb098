"""The frozen model of a saga class: its steps, their graph and compensations.

Built and checked once, when the class statement runs (sagadsl/build.py), and
stored as ``SagaCls.definition``. Everything the runtime needs about the
graph (dependencies, transitive ancestors and descendants, step kinds, the
pivot, lock templates) is computed there and kept here, never recomputed.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from . import graph, keys
from .decorators import KeySpec
from .policies import CompensationPolicy, RetryPolicy

__all__ = ["StepKind", "StepDefinition", "CompensationDefinition", "SagaDefinition", "fingerprint_of"]

#: What a step is in the business transaction (DESIGN §7): ``"compensatable"``
#: steps run before the pivot (or in a saga without one) and are undone by
#: their compensation, if they have one; the ``"pivot"`` is the point of no
#: return; ``"retriable"`` steps run after it and are retried until they succeed.
StepKind = Literal["compensatable", "pivot", "retriable"]


@dataclass(frozen=True)
class CompensationDefinition:
    """The compensation of one step."""

    method_name: str
    is_async: bool
    #: Parameter receiving the compensated step's own result, if any.
    result_param: str | None
    #: Parameters named after dependencies of the step, receiving their results.
    step_params: tuple[str, ...]
    #: Whether its writes through ``self.db`` commit with the step's ``compensated`` status.
    transactional: bool = False


@dataclass(frozen=True)
class StepDefinition:
    """One step: its position, dependencies, policies, kind and compensation."""

    name: str
    position: int
    is_async: bool
    idempotency_key: KeySpec
    retry: RetryPolicy
    timeout: float | None
    compensation_policy: CompensationPolicy
    after: tuple[str, ...]
    params: tuple[str, ...]
    compensation: CompensationDefinition | None = None
    owner: type | None = field(default=None, compare=False, repr=False)
    #: The return annotation, resolved and checked when the class was created.
    result_type: Any = field(default=Any, compare=False, repr=False)
    #: Derived from the pivot's place in the graph (see :data:`StepKind`).
    kind: StepKind = "compensatable"
    #: Whether its writes through ``self.db`` commit with its completion (DESIGN §9).
    transactional: bool = False

    def render_key(self, saga: Any) -> str:
        """This step's idempotency key for ``saga`` (template or callable).

        Raises:
            IdempotencyRequiredError: if the key cannot be rendered or is empty.
        """
        owner = self.owner.__name__ if self.owner is not None else "<saga>"
        return keys.render_key(self.idempotency_key, saga, where=f"{owner}.{self.name}")

    def return_type(self) -> Any:
        """The step method's return annotation, resolved (``Any`` if absent)."""
        return self.result_type


@dataclass(frozen=True)
class SagaDefinition:
    """The checked step graph of a saga class, stored as ``SagaCls.definition``.

    Attributes:
        name: The registered saga name.
        class_name: The class's ``__qualname__``.
        input_type: The ``T`` of ``Saga[T]`` (``Any`` if not given).
        steps: Steps in declaration order (a topological order: dependencies first).
        ancestors: For each step, every step it depends on, directly or
            transitively (not the step itself).
        descendants: For each step, every step that depends on it, directly
            or transitively (not the step itself).
        pivot: The name of the pivot step, or None.
        locks: The ``locks=`` templates of the class, as written
            (render them with :func:`sagadsl.keys.render_locks`).
        has_transactional: Whether any step or compensation is transactional.
        fingerprint: A hash of step names, order, dependencies, compensations
            and the pivot; stored with each saga to detect incompatible changes.
    """

    name: str
    class_name: str
    input_type: Any
    steps: tuple[StepDefinition, ...]
    # Derived from ``steps`` (so left out of comparisons), computed once by the build.
    ancestors: Mapping[str, frozenset[str]] = field(compare=False, repr=False)
    descendants: Mapping[str, frozenset[str]] = field(compare=False, repr=False)
    pivot: str | None = None
    locks: tuple[str, ...] = ()
    has_transactional: bool = False

    @functools.cached_property
    def _by_name(self) -> dict[str, StepDefinition]:
        return {s.name: s for s in self.steps}

    @functools.cached_property
    def _dependents(self) -> dict[str, tuple[str, ...]]:
        dependents: dict[str, list[str]] = {s.name: [] for s in self.steps}
        for s in self.steps:
            for dep in s.after:
                dependents[dep].append(s.name)
        return {name: tuple(names) for name, names in dependents.items()}

    def step(self, name: str) -> StepDefinition:
        """The step called ``name``; ``KeyError`` if there is none."""
        return self._by_name[name]

    def has_step(self, name: str) -> bool:
        """Whether the saga has a step called ``name``."""
        return name in self._by_name

    def dependents(self, name: str) -> tuple[str, ...]:
        """Steps that list ``name`` among their direct dependencies."""
        return self._dependents[name]

    @functools.cached_property
    def fingerprint(self) -> str:
        """A hash of step names, order, dependencies, compensations and the pivot."""
        return fingerprint_of(self.shape())

    @property
    def step_names(self) -> tuple[str, ...]:
        """Step names in declaration order."""
        return tuple(s.name for s in self.steps)

    @property
    def is_linear(self) -> bool:
        """True when each step depends exactly on the one before it."""
        return all(s.after == ((self.steps[i - 1].name,) if i else ()) for i, s in enumerate(self.steps))

    def shape(self) -> list[dict[str, Any]]:
        """The graph as JSON data: what the fingerprint is computed from.

        The pivot step carries ``"pivot": true``; no other key is added, so
        that the fingerprint of a saga without a pivot is what it always was.
        """
        return [
            {"name": s.name, "after": list(s.after),
             "compensation": s.compensation.method_name if s.compensation else None,
             **({"pivot": True} if s.kind == "pivot" else {})}
            for s in self.steps
        ]

    def to_text(self) -> str:
        """The graph as indented plain text, one line per step (see :mod:`sagadsl.graph`)."""
        return graph.to_text(self)

    def to_mermaid(self) -> str:
        """The graph as a Mermaid flowchart (see :mod:`sagadsl.graph`)."""
        return graph.to_mermaid(self)

    def to_dot(self) -> str:
        """The graph in Graphviz DOT (see :mod:`sagadsl.graph`)."""
        return graph.to_dot(self)


def fingerprint_of(shape: list[dict[str, Any]]) -> str:
    """A stable hash of a graph shape."""
    blob = json.dumps(shape, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()
