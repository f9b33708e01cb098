"""The build-and-check pass: a saga class's decorated members become its frozen definition.

``SagaMeta`` collects the members (sagadsl/saga.py) and calls
:func:`build_definition`, which checks everything that involves more than one
member and computes the derived graph data once: dependencies, transitive
ancestors and descendants, step kinds around the pivot. Every problem is
collected as ``(position, message)`` and reported together, sorted by where
the user wrote it (the class statement first, then members in declaration
order), as attrs sorts by its counter.
"""

from __future__ import annotations

import inspect
import re
import sys
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Mapping, Sequence

from .codec import check_storable
from .decorators import CompensatesSpec, KeySpec, StepSpec
from .definition import CompensationDefinition, SagaDefinition, StepDefinition, StepKind
from .errors import SagaDefinitionError, SerializationError
from .hints import Unresolved, annotation_text, input_fields, resolve
from .keys import NO_FIELD, template_problem

__all__ = ["Member", "build_definition", "RESERVED_NAMES", "MAX_SAGA_NAME_LENGTH"]

#: Names a step may not take because the saga instance already uses them.
RESERVED_NAMES = frozenset({"input", "saga_id", "step_key", "attempt", "definition", "saga_name", "db"})

#: The longest registered saga name: ``sagadsl_workflows.saga_name`` is a
#: ``String(255)`` (sagadsl/storage/models.py), and PostgreSQL refuses longer text.
MAX_SAGA_NAME_LENGTH = 255

# PostgreSQL cannot store U+0000 in text, and no UTF-8 database a lone surrogate.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")

#: The position of problems with the class statement itself (its name, input
#: type, keywords): before every member.
_CLASS = -1


@dataclass(frozen=True)
class Member:
    """A decorated method of the class or of a base, as ``SagaMeta`` found it.

    Attributes:
        name: The attribute name.
        func: The function.
        spec: What its decorator recorded.
        owner: The class whose body defines it (a base, for an inherited member).
    """

    name: str
    func: Callable[..., Any]
    spec: StepSpec | CompensatesSpec
    owner: type

    @property
    def where(self) -> str:
        """``Owner.method``: the class whose body holds the code to fix."""
        return f"{self.owner.__name__}.{self.name}"


def build_definition(
    cls_name: str,
    saga_name: str,
    input_type: Any,
    members: Sequence[Member],
    owner: type,
    *,
    locks: object = (),
    localns: Mapping[str, Any] | None = None,
) -> SagaDefinition:
    """Check the collected members and build the step graph.

    Args:
        cls_name: The class's name, for messages.
        saga_name: The name the class registers under.
        input_type: The ``T`` of ``Saga[T]`` (``Any`` if not given).
        members: Steps and compensations in declaration order (base classes first).
        owner: The class being created.
        locks: The ``locks=`` class keyword, unchecked.
        localns: Names visible where the class statement runs, used to
            resolve string annotations (``from __future__ import annotations``).

    Raises:
        SagaDefinitionError: listing every problem, in declaration order.
    """
    return _Build(cls_name, saga_name, input_type, members, owner, localns or {}).run(locks)


class _Build:
    """One class statement being checked: the members, the problems found so far."""

    def __init__(self, cls_name: str, saga_name: str, input_type: Any, members: Sequence[Member],
                 owner: type, localns: Mapping[str, Any]) -> None:
        self.cls_name = cls_name
        self.saga_name = saga_name
        self.input_type = input_type
        self.owner = owner
        self.localns = localns
        self.position = {m.name: i for i, m in enumerate(members)}
        self.steps = [(m, m.spec) for m in members if isinstance(m.spec, StepSpec)]
        self.compensations = [(m, m.spec) for m in members if isinstance(m.spec, CompensatesSpec)]
        self.step_names = [m.name for m, _ in self.steps]
        self.problems: list[tuple[int, str]] = []
        #: The compensation of each step, by step name, once checked.
        self.compensators: dict[str, Member] = {}

    def problem(self, position: int, message: str) -> None:
        self.problems.append((position, message))

    def at(self, member: Member, message: str) -> None:
        """A problem with ``member``: ``Owner.method: message``."""
        self.problem(self.position[member.name], f"{member.where}: {message}")

    def run(self, locks: object) -> SagaDefinition:
        cls_name = self.cls_name
        self.check_saga_name()
        # The input type and every result are stored as JSON: refuse now what the
        # codec could not store or decode, rather than at the first run (DESIGN §2.10).
        input_type = self.checked_type(
            self.input_type, _CLASS, f"{cls_name}: the input type",
            getattr(sys.modules.get(self.owner.__module__), "__dict__", {}))
        known_fields = input_fields(input_type)
        lock_templates = self.check_locks(locks, input_type, known_fields)

        for member, _ in self.steps:
            if member.name in RESERVED_NAMES:
                self.at(member, f"a step cannot be called {member.name!r} because the saga instance "
                                f"uses that name (self.{member.name}); rename the step")
        after = self.dependencies()
        cycle = _find_cycle(self.step_names, after)
        if cycle:
            self.problem(_CLASS, f"{cls_name}: the steps {' -> '.join(cycle)} depend on each other in a "
                                 "cycle; remove one of these after= dependencies")
        ancestors = {} if cycle else _ancestors(self.step_names, after)

        for member, spec in self.steps:
            self.check_key(member, spec, input_type, known_fields)
        result_types = {member.name: self.checked_type(
            inspect.unwrap(member.func).__annotations__.get("return", Any), self.position[member.name],
            f"{member.where}: the return type", getattr(inspect.unwrap(member.func), "__globals__", {}))
            for member, _ in self.steps}
        params = {member.name: self.step_params(member, ancestors if not cycle else None)
                  for member, _ in self.steps}
        compensations = self.compensation_definitions(ancestors if not cycle else None)
        self.check_transactional()
        descendants = _descendants(self.step_names, ancestors) if not cycle else {}
        pivot = None if cycle else self.check_pivot(ancestors, descendants, compensations)

        if self.problems:
            messages = [message for _, message in sorted(self.problems, key=lambda p: p[0])]
            raise SagaDefinitionError("\n".join(messages))

        steps = tuple(
            StepDefinition(
                name=member.name,
                position=i,
                is_async=inspect.iscoroutinefunction(member.func),
                idempotency_key=_checked_key(spec),
                retry=spec.retry,
                timeout=spec.timeout,
                compensation_policy=spec.compensation,
                after=after[member.name],
                params=params[member.name],
                compensation=compensations.get(member.name),
                owner=self.owner,
                result_type=result_types[member.name],
                kind=_kind(member.name, pivot, descendants),
                transactional=spec.transactional,
            )
            for i, (member, spec) in enumerate(self.steps)
        )
        return SagaDefinition(
            name=self.saga_name, class_name=cls_name, input_type=input_type, steps=steps,
            ancestors=MappingProxyType(ancestors), descendants=MappingProxyType(descendants),
            pivot=pivot, locks=lock_templates,
            has_transactional=any(s.transactional or (s.compensation is not None
                                                      and s.compensation.transactional) for s in steps),
        )

    # -- the class statement -------------------------------------------------------------

    def check_saga_name(self) -> None:
        cls_name, saga_name = self.cls_name, self.saga_name
        if len(saga_name) > MAX_SAGA_NAME_LENGTH:
            self.problem(_CLASS, (
                f"{cls_name}: the saga name {saga_name[:40] + '...'!r} is {len(saga_name)} characters "
                f"long, and the database stores at most {MAX_SAGA_NAME_LENGTH}; pass a shorter one: "
                f'class {cls_name}(Saga[...], name="...")'))
        bad = _UNSTORABLE.search(saga_name)
        if bad is not None:
            self.problem(_CLASS, (
                f"{cls_name}: the saga name {saga_name[:40]!r} contains {bad.group()!r}, which the "
                "database cannot store (PostgreSQL refuses NUL characters, and no UTF-8 database "
                "stores a lone surrogate); remove it from name="))

    def check_locks(self, locks: object, input_type: Any, known_fields: frozenset[str] | None
                    ) -> tuple[str, ...]:
        where = f"{self.cls_name}: locks="
        example = 'locks=("account:{src}", "account:{dst}")'
        if isinstance(locks, str):
            self.problem(_CLASS, f"{where} is the single string {locks!r}, which would be read as one "
                                 f"template per character; pass a tuple, e.g. locks=({locks!r},)")
            return ()
        if isinstance(locks, list):
            self.problem(_CLASS, f"{where} must be a tuple, not a list (a definition is frozen); write "
                                 f"locks={tuple(locks)!r}")
            return ()
        if not isinstance(locks, Sequence):
            self.problem(_CLASS, f"{where} must be a tuple of key templates, e.g. {example}, got "
                                 f"{type(locks).__name__} {locks!r}")
            return ()
        templates: list[str] = []
        for template in locks:
            if not isinstance(template, str) or not template.strip():
                self.problem(_CLASS, f"{where} holds {template!r}, which is no key template; give "
                                     f"non-empty strings, e.g. {example}")
                continue
            found = template_problem(template, known_fields, input_type, allow_saga_id=False,
                                      fix="or give the input a field with the value the lock needs")
            if found == NO_FIELD:
                self.problem(_CLASS, (
                    f"{where} template {template!r} has no {{field}}, so every {self.cls_name} would "
                    "take the same lock and none could run beside another; include an input field, "
                    f"e.g. {example}"))
            elif found:
                self.problem(_CLASS, f"{where} template {template!r} {found}")
            elif template not in templates:
                templates.append(template)
        return tuple(templates)

    def checked_type(self, annotation: Any, position: int, where: str, globalns: dict[str, Any]) -> Any:
        """``annotation`` resolved, or ``Any`` with a problem added if it cannot be resolved or stored."""
        try:
            resolved = resolve(annotation, globalns, self.localns)
        except Unresolved as exc:
            self.problem(position, (
                f"{where} is {annotation_text(annotation)}, which cannot be resolved ({exc}); define "
                "the type before the saga class (at module level, or earlier in the same function)"))
            return Any
        try:
            check_storable(resolved, where=where)
        except SerializationError as exc:
            self.problem(position, str(exc))
            return Any
        return resolved

    # -- steps ---------------------------------------------------------------------------

    def dependencies(self) -> dict[str, tuple[str, ...]]:
        """Each step's direct dependencies: its ``after=``, or the step declared before it."""
        after: dict[str, tuple[str, ...]] = {}
        for i, (member, spec) in enumerate(self.steps):
            name = member.name
            if spec.after is None:
                after[name] = (self.step_names[i - 1],) if i else ()
                continue
            deps: list[str] = []
            for dep in spec.after:
                if dep == name:
                    self.at(member, f"a step cannot run after itself; remove {dep!r} from after=")
                elif dep not in self.step_names:
                    self.at(member, f"after= names {dep!r}, which is no step of {self.cls_name}; "
                                    f"the other steps are: {self.others(name)}")
                elif dep not in deps:
                    deps.append(dep)
            after[name] = tuple(deps)
        return after

    def others(self, name: str) -> str:
        return ", ".join(n for n in self.step_names if n != name) or "(none)"

    def check_key(self, member: Member, spec: StepSpec, input_type: Any,
                  known_fields: frozenset[str] | None) -> None:
        key = spec.idempotency_key
        name = member.name
        if key is None:
            self.at(member, f'@step needs an idempotency_key, e.g. @step(idempotency_key="{name}-{{order_id}}"); '
                            "it is passed to downstream services so a retried step has its effect once")
        elif callable(key):
            return
        elif not isinstance(key, str) or not key.strip():
            self.at(member, f"idempotency_key must be a non-empty template or a callable, got {key!r}")
        else:
            found = template_problem(key, known_fields, input_type, allow_saga_id=True,
                                      fix="or pass a callable (idempotency_key=lambda saga: ...)")
            if found == NO_FIELD:
                self.at(member, (
                    f"idempotency_key {key!r} has no {{field}}, so every saga would send the same key "
                    "downstream and the service would take them all for one; include an input field or "
                    f'saga_id, e.g. "{key}-{{saga_id}}", or pass a callable '
                    "(idempotency_key=lambda saga: ...) if one key for every saga is really meant"))
            elif found:
                self.at(member, f"idempotency_key {key!r} {found}")

    def step_params(self, member: Member, ancestors: dict[str, frozenset[str]] | None) -> tuple[str, ...]:
        """The parameters of a step: each names a step it depends on."""
        name = member.name
        names: list[str] = []
        for param in list(inspect.signature(member.func).parameters.values())[1:]:
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                self.at(member, f"*{param.name} / **{param.name} are not allowed; name each earlier step "
                                "whose result the step needs")
                continue
            if param.kind is param.POSITIONAL_ONLY:
                self.at(member, f"parameter {param.name!r} is positional-only; results are passed by name")
                continue
            if param.name not in self.step_names:
                # Suggest what the parameter could name: the steps this one depends on.
                deps = ([n for n in self.step_names if n in ancestors[name]] if ancestors is not None
                        else [n for n in self.step_names if n != name])
                self.at(member, f"parameter {param.name!r} names no step; a step's parameters receive the "
                                "results of earlier steps, " + (f"by name ({', '.join(deps)})" if deps
                                                               else f"and {name} depends on none"))
            elif ancestors is not None and param.name not in ancestors[name]:
                self.at(member, f"parameter {param.name!r} names a step that {name} does not depend on; "
                                "add it to after= or remove the parameter")
            names.append(param.name)
        return tuple(names)

    # -- compensations -------------------------------------------------------------------

    def compensation_definitions(self, ancestors: dict[str, frozenset[str]] | None
                                 ) -> dict[str, CompensationDefinition]:
        """Each step's compensation, by step name."""
        found: dict[str, CompensationDefinition] = {}
        by: dict[str, Member] = {}
        for member, spec in self.compensations:
            target = spec.target
            if target not in self.step_names:
                self.at(member, f"@compensates({target!r}) names no step of {self.cls_name}; "
                                f"steps are: {', '.join(self.step_names) or '(none)'}")
                continue
            if target in by:
                self.at(member, f"step {target!r} already has the compensation {by[target].where}; "
                                "a step has at most one, so merge them")
                continue
            result_param: str | None = None
            step_params: list[str] = []
            for i, param in enumerate(list(inspect.signature(member.func).parameters.values())[1:]):
                if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                    self.at(member, f"*{param.name} / **{param.name} are not allowed in a compensation")
                elif param.name == target or (param.name not in self.step_names and i == 0):
                    result_param = param.name
                elif param.name in self.step_names and ancestors is not None and param.name in ancestors[target]:
                    step_params.append(param.name)
                else:
                    self.at(member, f"parameter {param.name!r} is neither the first parameter (which "
                                    f"receives {target}'s result) nor a step that {target} depends on")
            by[target] = member
            found[target] = CompensationDefinition(
                method_name=member.name,
                is_async=inspect.iscoroutinefunction(member.func),
                result_param=result_param,
                step_params=tuple(step_params),
                transactional=spec.transactional,
            )
        self.compensators = by
        return found

    def check_transactional(self) -> None:
        # DESIGN §9: self.db is a synchronous Session on the saga's connection.
        members: list[tuple[Member, StepSpec | CompensatesSpec]] = [*self.steps, *self.compensations]
        for member, spec in members:
            if spec.transactional and inspect.iscoroutinefunction(member.func):
                decorator = "@step" if isinstance(spec, StepSpec) else "@compensates"
                self.at(member, (
                    f"{decorator}(transactional=True) needs a sync method: self.db is a synchronous "
                    f"SQLAlchemy Session on the saga's connection; make it a plain def "
                    "(not async def), or drop transactional=True"))

    # -- the pivot (DESIGN §7) -----------------------------------------------------------

    def check_pivot(self, ancestors: dict[str, frozenset[str]], descendants: dict[str, frozenset[str]],
                    compensations: Mapping[str, CompensationDefinition]) -> str | None:
        pivots = [member for member, spec in self.steps if spec.pivot]
        if not pivots:
            return None
        first = pivots[0]
        for extra in pivots[1:]:
            self.at(extra, f"a saga has at most one pivot, and {first.where} is one already; keep "
                           "pivot=True only on the step after which nothing can be undone")
        pivot = first.name
        for target in compensations:
            member = self.compensators[target]
            if target == pivot:
                self.at(member, (
                    f"compensates the pivot {pivot!r}, which is the point of no return and is never "
                    f"compensated; remove @compensates({pivot!r}), or, if {pivot} can be undone, make a "
                    "later step the pivot"))
            elif target in descendants[pivot]:
                self.at(member, (
                    f"compensates {target!r}, which runs after the pivot {pivot!r} and so is retried "
                    f"until it succeeds, never compensated; remove @compensates({target!r}), or make a "
                    f"later step the pivot so that {target} runs before it"))
        for member, _ in self.steps:
            name = member.name
            if name != pivot and name not in ancestors[pivot] and name not in descendants[pivot]:
                self.at(member, (
                    f"runs beside the pivot {pivot!r} (neither before nor after it), so a failure of "
                    f"{name} could neither be undone with the steps before the pivot nor retried "
                    f"with those after it; order it: add {pivot!r} to its after= (retried after the "
                    f"pivot), or add {name!r} to the pivot's after= (compensatable before it)"))
        return pivot


def _checked_key(spec: StepSpec) -> KeySpec:
    assert spec.idempotency_key is not None  # a missing key is a problem reported before
    return spec.idempotency_key


def _kind(name: str, pivot: str | None, descendants: Mapping[str, frozenset[str]]) -> StepKind:
    if pivot is None:
        return "compensatable"
    if name == pivot:
        return "pivot"
    return "retriable" if name in descendants[pivot] else "compensatable"


# -- the graph ---------------------------------------------------------------------------


def _find_cycle(names: list[str], after: dict[str, tuple[str, ...]]) -> list[str] | None:
    """A dependency cycle as a list of step names (first repeated at the end), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in after.get(node, ()):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if state.get(dep) is None:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for name in names:
        if state.get(name) is None:
            found = visit(name)
            if found:
                # Report in execution order: dependencies first.
                return list(reversed(found))
    return None


def _ancestors(names: list[str], after: dict[str, tuple[str, ...]]) -> dict[str, frozenset[str]]:
    """Every step each step depends on, transitively (``after`` has no cycle)."""
    closure: dict[str, frozenset[str]] = {}

    def deps_of(node: str) -> frozenset[str]:
        if node not in closure:
            acc: set[str] = set()
            for dep in after[node]:
                acc.add(dep)
                acc |= deps_of(dep)
            closure[node] = frozenset(acc)
        return closure[node]

    for name in names:
        deps_of(name)
    return closure


def _descendants(names: list[str], ancestors: Mapping[str, frozenset[str]]) -> dict[str, frozenset[str]]:
    """Every step that depends on each step, transitively: the inverse of ``ancestors``."""
    found: dict[str, set[str]] = {name: set() for name in names}
    for name in names:
        for ancestor in ancestors[name]:
            found[ancestor].add(name)
    return {name: frozenset(found[name]) for name in names}
