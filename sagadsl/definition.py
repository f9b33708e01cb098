"""The step graph of a saga class: built and checked when the class is created."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import string
import sys
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from typing_extensions import is_typeddict

from .codec import check_storable
from .decorators import CompensatesSpec, KeySpec, StepSpec
from .errors import SagaDefinitionError, SerializationError
from .policies import CompensationPolicy, RetryPolicy

__all__ = ["StepDefinition", "CompensationDefinition", "SagaDefinition", "build_definition"]

#: Names a step may not take because the saga instance already uses them.
RESERVED_NAMES = frozenset({"input", "saga_id", "step_key", "attempt", "definition", "saga_name"})

#: The longest registered saga name: ``sagadsl_workflows.saga_name`` is a
#: ``String(255)`` (sagadsl/storage/models.py), and PostgreSQL refuses longer text.
MAX_SAGA_NAME_LENGTH = 255


@dataclass(frozen=True)
class CompensationDefinition:
    """The compensation of one step."""

    method_name: str
    is_async: bool
    #: Parameter receiving the compensated step's own result, if any.
    result_param: str | None
    #: Parameters named after dependencies of the step, receiving their results.
    step_params: tuple[str, ...]


@dataclass(frozen=True)
class StepDefinition:
    """One step: its position, dependencies, policies and compensation."""

    name: str
    position: int
    is_async: bool
    idempotency_key: KeySpec
    key_fields: tuple[str, ...]
    retry: RetryPolicy
    timeout: float | None
    compensation_policy: CompensationPolicy
    after: tuple[str, ...]
    params: tuple[str, ...]
    compensation: CompensationDefinition | None = None
    owner: type | None = field(default=None, compare=False, repr=False)
    #: The return annotation, resolved and checked when the class was created.
    result_type: Any = field(default=Any, compare=False, repr=False)

    def render_key(self, saga: Any) -> str:
        """This step's idempotency key for ``saga`` (template or callable)."""
        from .errors import IdempotencyRequiredError

        where = f"{_owner_name(self.owner)}.{self.name}"
        spec = self.idempotency_key
        try:
            key = spec(saga) if callable(spec) else spec.format_map(_TemplateFields(saga, where, spec))
        except (KeyError, AttributeError, IndexError) as exc:
            raise IdempotencyRequiredError(
                f"{where}: the idempotency key {spec!r} cannot be rendered from the input "
                f"({type(exc).__name__}: {exc}); give the input that field or change the template",
                saga_id=saga.saga_id,
            ) from exc
        if not isinstance(key, str) or not key.strip():
            raise IdempotencyRequiredError(
                f"{where}: the idempotency key rendered as {key!r}; it must be a non-empty string",
                saga_id=saga.saga_id,
            )
        return key

    def return_type(self) -> Any:
        """The step method's return annotation, resolved (``Any`` if absent)."""
        return self.result_type


class _TemplateFields(Mapping[str, Any]):
    """Input fields (attributes or keys) and ``saga_id``, for key templates.

    A field that is None or empty is refused: ``"refund-{payment_id}"`` with
    no payment id would give many sagas the same key downstream.
    """

    def __init__(self, saga: Any, where: str, template: str) -> None:
        self._saga = saga
        self._where = where
        self._template = template

    def __getitem__(self, name: str) -> Any:
        from .errors import IdempotencyRequiredError

        if name == "saga_id":
            return self._saga.saga_id
        value = self._saga.input
        if isinstance(value, Mapping):
            field_value = value[name]
        else:
            try:
                field_value = getattr(value, name)
            except AttributeError:
                raise KeyError(name) from None
        if field_value is None or (isinstance(field_value, str) and not field_value.strip()):
            raise IdempotencyRequiredError(
                f"{self._where}: the idempotency key {self._template!r} uses the input field {name!r}, "
                f"which is {field_value!r}; a key part that is empty would let different sagas share "
                "a key, so give the field a value or key on another field",
                saga_id=self._saga.saga_id,
            )
        return field_value

    def __iter__(self) -> Any:
        return iter(())

    def __len__(self) -> int:
        return 0


def _owner_name(owner: type | None) -> str:
    return owner.__name__ if owner is not None else "<saga>"


class _Unresolved(Exception):
    """An annotation names something that does not exist (yet)."""


def _resolve(annotation: Any, globalns: dict[str, Any], localns: Mapping[str, Any]) -> Any:
    """``annotation`` evaluated (strings and forward references inside it too).

    ``localns`` holds the names visible where the class statement runs (the
    enclosing function's locals and the class body), so that a result type
    defined next to the saga class in a function resolves as it would in
    Python code.

    Raises:
        _Unresolved: naming the missing name.
    """
    holder = types.SimpleNamespace(__annotations__={"value": annotation})
    try:
        return typing.get_type_hints(holder, globalns=globalns, localns=dict(localns))["value"]
    except Exception as exc:  # NameError, or a SyntaxError in a string annotation
        raise _Unresolved(f"{type(exc).__name__}: {exc}") from exc


@dataclass(frozen=True)
class SagaDefinition:
    """The checked step graph of a saga class, stored as ``SagaCls.definition``.

    Attributes:
        name: The registered saga name.
        class_name: The class's ``__qualname__``.
        input_type: The ``T`` of ``Saga[T]`` (``Any`` if not given).
        steps: Steps in declaration order.
        fingerprint: A hash of step names, order, dependencies and
            compensations; stored with each saga to detect incompatible changes.
    """

    name: str
    class_name: str
    input_type: Any
    steps: tuple[StepDefinition, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {s.name: s for s in self.steps})
        dependents: dict[str, list[str]] = {s.name: [] for s in self.steps}
        for s in self.steps:
            for dep in s.after:
                dependents[dep].append(s.name)
        object.__setattr__(self, "_dependents", {k: tuple(v) for k, v in dependents.items()})

    def step(self, name: str) -> StepDefinition:
        """The step called ``name``; ``KeyError`` if there is none."""
        by_name: dict[str, StepDefinition] = self._by_name  # type: ignore[attr-defined]
        return by_name[name]

    def has_step(self, name: str) -> bool:
        """Whether the saga has a step called ``name``."""
        return name in self._by_name  # type: ignore[attr-defined]

    def dependents(self, name: str) -> tuple[str, ...]:
        """Steps that list ``name`` among their direct dependencies."""
        deps: dict[str, tuple[str, ...]] = self._dependents  # type: ignore[attr-defined]
        return deps[name]

    @functools.cached_property
    def fingerprint(self) -> str:
        """A hash of step names, order, dependencies and compensations."""
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
        """The graph as JSON data: what the fingerprint is computed from."""
        return [
            {"name": s.name, "after": list(s.after),
             "compensation": s.compensation.method_name if s.compensation else None}
            for s in self.steps
        ]

    def to_mermaid(self) -> str:
        """The graph as a Mermaid flowchart, compensations as dotted edges.

        Node ids are prefixed (``step_``, ``undo_``) because Mermaid reserves
        some words a step may be called, such as ``end``.
        """
        lines = ["flowchart TD"]
        for s in self.steps:
            lines.append(f'    step_{s.name}["{s.name}"]')
            for dep in s.after:
                lines.append(f"    step_{dep} --> step_{s.name}")
            if s.compensation:
                lines.append(f'    undo_{s.name}(["{s.compensation.method_name}"])')
                lines.append(f"    step_{s.name} -. compensated by .-> undo_{s.name}")
        return "\n".join(lines)

    def to_dot(self) -> str:
        """The graph in Graphviz DOT, compensations as dashed edges."""
        quoted = self.name.replace("\\", "\\\\").replace('"', '\\"')
        lines = [f'digraph "{quoted}" {{', "    rankdir=TB;"]
        for s in self.steps:
            lines.append(f'    "{s.name}" [shape=box];')
            for dep in s.after:
                lines.append(f'    "{dep}" -> "{s.name}";')
            if s.compensation:
                lines.append(f'    "{s.compensation.method_name}" [shape=ellipse, style=dashed];')
                lines.append(f'    "{s.name}" -> "{s.compensation.method_name}" [style=dashed, label="undo"];')
        lines.append("}")
        return "\n".join(lines)

    def to_text(self) -> str:
        """The graph as indented plain text, one line per step."""
        lines = [f"{self.name} ({self.class_name})"]
        for s in self.steps:
            after = f" after {', '.join(s.after)}" if s.after else ""
            undo = f"  undo: {s.compensation.method_name}" if s.compensation else ""
            mode = "async" if s.is_async else "sync"
            lines.append(f"  {s.position + 1}. {s.name} [{mode}]{after}{undo}")
        return "\n".join(lines)


def fingerprint_of(shape: list[dict[str, Any]]) -> str:
    """A stable hash of a graph shape."""
    blob = json.dumps(shape, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def input_fields(input_type: Any) -> frozenset[str] | None:
    """Field names of an input type, or None when they cannot be known."""
    if input_type is Any or input_type is None or isinstance(input_type, typing.TypeVar):
        return None
    if dataclasses.is_dataclass(input_type) and isinstance(input_type, type):
        return frozenset(f.name for f in dataclasses.fields(input_type))
    model_fields = getattr(input_type, "model_fields", None)
    if isinstance(model_fields, dict):
        return frozenset(model_fields)
    if is_typeddict(input_type):
        return frozenset(getattr(input_type, "__annotations__", {}))
    namedtuple_fields = getattr(input_type, "_fields", None)
    if isinstance(input_type, type) and isinstance(namedtuple_fields, tuple):
        return frozenset(namedtuple_fields)
    return None


def template_fields(template: str) -> tuple[str, ...]:
    """The top-level field names a ``str.format`` template refers to."""
    names: list[str] = []
    for _, field_name, _, _ in string.Formatter().parse(template):
        if field_name is None:
            continue
        root = field_name.split(".", 1)[0].split("[", 1)[0]
        names.append(root)
    return tuple(names)


def build_definition(
    cls_name: str,
    saga_name: str,
    input_type: Any,
    steps: list[tuple[str, Callable[..., Any], StepSpec]],
    compensations: list[tuple[str, Callable[..., Any], CompensatesSpec]],
    owner: type,
    localns: Mapping[str, Any] | None = None,
) -> SagaDefinition:
    """Check the collected members and build the step graph.

    Every problem found is reported together, in declaration order, in one
    :class:`SagaDefinitionError`.

    Args:
        cls_name: The class's name, for messages.
        saga_name: The name the class registers under.
        input_type: The ``T`` of ``Saga[T]`` (``Any`` if not given).
        steps: ``(name, function, spec)`` of each step, in declaration order.
        compensations: ``(name, function, spec)`` of each compensation.
        owner: The class being created.
        localns: Names visible where the class statement runs, used to
            resolve string annotations (``from __future__ import annotations``).
    """
    problems: list[str] = []
    step_names = [name for name, _, _ in steps]
    namespace: Mapping[str, Any] = localns or {}

    if len(saga_name) > MAX_SAGA_NAME_LENGTH:
        problems.append(
            f"{cls_name}: the saga name {saga_name[:40] + '...'!r} is {len(saga_name)} characters long, "
            f"and the database stores at most {MAX_SAGA_NAME_LENGTH}; pass a shorter one: "
            f'class {cls_name}(Saga[...], name="...")')

    # The input type and every result are stored as JSON: refuse now what the
    # codec could not store or decode, rather than at the first run (DESIGN §2.10).
    input_type = _checked_type(input_type, f"{cls_name}: the input type",
                               getattr(sys.modules.get(owner.__module__), "__dict__", {}), namespace,
                               problems)
    known_fields = input_fields(input_type)

    for name, _, _ in steps:
        if name in RESERVED_NAMES:
            problems.append(f"{cls_name}.{name}: a step cannot be called {name!r} because the saga "
                            f"instance uses that name (self.{name}); rename the step")

    # Dependencies: explicit ``after=`` or the step declared before.
    after: dict[str, tuple[str, ...]] = {}
    for i, (name, _, spec) in enumerate(steps):
        if spec.after is None:
            after[name] = (step_names[i - 1],) if i else ()
            continue
        deps: list[str] = []
        for dep in spec.after:
            if dep == name:
                problems.append(f"{cls_name}.{name}: a step cannot run after itself; remove {dep!r} from after=")
            elif dep not in step_names:
                problems.append(f"{cls_name}.{name}: after= names {dep!r}, which is no step of {cls_name}; "
                                f"steps are: {', '.join(step_names)}")
            elif dep not in deps:
                deps.append(dep)
        after[name] = tuple(deps)

    cycle = _find_cycle(step_names, after)
    if cycle:
        problems.append(f"{cls_name}: the steps {' -> '.join(cycle)} depend on each other in a cycle; "
                        "remove one of these after= dependencies")

    closure = {} if cycle else _transitive(step_names, after)

    # Idempotency keys.
    key_fields: dict[str, tuple[str, ...]] = {}
    for name, _, spec in steps:
        key = spec.idempotency_key
        where = f"{cls_name}.{name}"
        if key is None:
            problems.append(f'{where}: @step needs an idempotency_key, e.g. @step(idempotency_key="{name}-{{order_id}}"); '
                            "it is passed to downstream services so a retried step has its effect once")
            continue
        if callable(key):
            key_fields[name] = ()
            continue
        if not isinstance(key, str) or not key.strip():
            problems.append(f"{where}: idempotency_key must be a non-empty template or a callable, got {key!r}")
            continue
        try:
            fields_used = template_fields(key)
        except ValueError as exc:
            problems.append(f"{where}: idempotency_key {key!r} is not a valid format template ({exc})")
            continue
        key_fields[name] = fields_used
        if not fields_used:
            problems.append(
                f"{where}: idempotency_key {key!r} has no {{field}}, so every saga would send the same "
                f"key downstream and the service would take them all for one; include an input field "
                f'or saga_id, e.g. "{key}-{{saga_id}}", or pass a callable '
                "(idempotency_key=lambda saga: ...) if one key for every saga is really meant")
            continue
        if known_fields is not None:
            missing = [f for f in fields_used if f not in known_fields and f != "saga_id"]
            if missing:
                problems.append(
                    f"{where}: idempotency_key {key!r} uses {', '.join(repr(m) for m in missing)}, which "
                    f"{_type_label(input_type)} does not have; use one of: "
                    f"{', '.join(sorted(known_fields | {'saga_id'}))}"
                )

    result_types: dict[str, Any] = {}
    for name, func, _ in steps:
        annotation = inspect.unwrap(func).__annotations__.get("return", Any)
        result_types[name] = _checked_type(annotation, f"{cls_name}.{name}: the return type",
                                           getattr(inspect.unwrap(func), "__globals__", {}), namespace,
                                           problems)

    # Parameters: each names a step this one depends on.
    params: dict[str, tuple[str, ...]] = {}
    for name, func, _ in steps:
        where = f"{cls_name}.{name}"
        names: list[str] = []
        for param in list(inspect.signature(func).parameters.values())[1:]:
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                problems.append(f"{where}: *{param.name} / **{param.name} are not allowed; name each "
                                "earlier step whose result the step needs")
                continue
            if param.kind is param.POSITIONAL_ONLY:
                problems.append(f"{where}: parameter {param.name!r} is positional-only; results are passed by name")
                continue
            if param.name not in step_names:
                problems.append(f"{where}: parameter {param.name!r} names no step; a step's parameters receive "
                                f"the results of earlier steps, by name ({', '.join(step_names)})")
            elif not cycle and param.name not in closure[name]:
                problems.append(f"{where}: parameter {param.name!r} names a step that {name} does not depend on; "
                                f"add it to after= or remove the parameter")
            names.append(param.name)
        params[name] = tuple(names)

    # Compensations.
    comp_for: dict[str, CompensationDefinition] = {}
    comp_owner: dict[str, str] = {}
    for method_name, func, comp_spec in compensations:
        where = f"{cls_name}.{method_name}"
        target = comp_spec.target
        if target not in step_names:
            problems.append(f"{where}: @compensates({target!r}) names no step of {cls_name}; "
                            f"steps are: {', '.join(step_names) or '(none)'}")
            continue
        if target in comp_owner:
            problems.append(f"{where}: step {target!r} already has the compensation "
                            f"{cls_name}.{comp_owner[target]}; a step has at most one, so merge them")
            continue
        result_param: str | None = None
        comp_params: list[str] = []
        for i, param in enumerate(list(inspect.signature(func).parameters.values())[1:]):
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                problems.append(f"{where}: *{param.name} / **{param.name} are not allowed in a compensation")
            elif param.name == target or (param.name not in step_names and i == 0):
                result_param = param.name
            elif param.name in step_names and not cycle and param.name in closure[target]:
                comp_params.append(param.name)
            else:
                problems.append(
                    f"{where}: parameter {param.name!r} is neither the first parameter (which receives "
                    f"{target}'s result) nor a step that {target} depends on"
                )
        comp_owner[target] = method_name
        comp_for[target] = CompensationDefinition(
            method_name=method_name,
            is_async=inspect.iscoroutinefunction(func),
            result_param=result_param,
            step_params=tuple(comp_params),
        )

    if problems:
        raise SagaDefinitionError("\n".join(problems) if len(problems) > 1 else problems[0])

    definitions = tuple(
        StepDefinition(
            name=name,
            position=i,
            is_async=inspect.iscoroutinefunction(func),
            idempotency_key=spec.idempotency_key,  # type: ignore[arg-type]
            key_fields=key_fields.get(name, ()),
            retry=spec.retry,
            timeout=spec.timeout,
            compensation_policy=spec.compensation,
            after=after[name],
            params=params[name],
            compensation=comp_for.get(name),
            owner=owner,
            result_type=result_types[name],
        )
        for i, (name, func, spec) in enumerate(steps)
    )
    return SagaDefinition(name=saga_name, class_name=cls_name, input_type=input_type, steps=definitions)


def _checked_type(annotation: Any, where: str, globalns: dict[str, Any], localns: Mapping[str, Any],
                  problems: list[str]) -> Any:
    """``annotation`` resolved, or ``Any`` with a problem added if it cannot be resolved or stored."""
    try:
        resolved = _resolve(annotation, globalns, localns)
    except _Unresolved as exc:
        problems.append(f"{where} is {_annotation_text(annotation)}, which cannot be resolved ({exc}); "
                        "define the type before the saga class (at module level, or earlier in the "
                        "same function)")
        return Any
    try:
        check_storable(resolved, where=where)
    except SerializationError as exc:
        problems.append(str(exc))
        return Any
    return resolved


def _annotation_text(annotation: Any) -> str:
    if isinstance(annotation, str):
        return repr(annotation)
    if isinstance(annotation, typing.ForwardRef):
        return repr(annotation.__forward_arg__)
    return getattr(annotation, "__qualname__", None) or repr(annotation)


def _type_label(tp: Any) -> str:
    return f"the input type {getattr(tp, '__qualname__', repr(tp))}"


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


def _transitive(names: list[str], after: dict[str, tuple[str, ...]]) -> dict[str, frozenset[str]]:
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
