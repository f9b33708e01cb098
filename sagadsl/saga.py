"""``Saga[InputT]`` and ``SagaMeta``: a saga is a class whose steps are methods."""

from __future__ import annotations

import sys
import threading
import typing
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from .build import Member, build_definition
from .decorators import BARE_COMPENSATES_ATTR, COMPENSATES_ATTR, STEP_ATTR, display_name
from .definition import SagaDefinition
from .errors import SagaDefinitionError, SagaError
from .runtime.context import attempt_number, step_db, step_key

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

__all__ = ["Saga", "SagaMeta", "InputT"]

InputT = TypeVar("InputT")

# Every saga class by registered name, so that a worker can rebuild a saga from
# its stored row. The metaclass fills it; sagadsl/registry.py reads it. It
# lives here, not there, so that the dependency runs one way (registry -> saga).
registered_classes: dict[str, type[Saga[Any]]] = {}
_registering = threading.Lock()


def _is_marked(value: object) -> bool:
    return hasattr(value, STEP_ATTR) or hasattr(value, COMPENSATES_ATTR)


class _ClassBody(dict[str, Any]):
    """Class namespace that notices a step or compensation defined twice."""

    def __init__(self) -> None:
        super().__init__()
        self.redefined: list[str] = []

    def __setitem__(self, key: str, value: Any) -> None:
        if key in self and _is_marked(self[key]) and _is_marked(value):
            self.redefined.append(key)
        super().__setitem__(key, value)


class SagaMeta(type):
    """Builds, checks and registers the step graph when a saga class is created.

    Class keywords: ``name="orders.place"`` (default ``module:QualName``)
    registers the class under that name; ``abstract=True`` marks a base class
    without steps of its own; ``locks=("account:{src}", ...)`` gives the
    semantic lock templates (DESIGN §7; a subclass without ``locks=``
    inherits its base's).
    """

    @classmethod
    def __prepare__(mcls, cls_name: str, bases: tuple[type, ...], /, **kwargs: Any) -> dict[str, Any]:
        return _ClassBody()

    def __new__(
        mcls, cls_name: str, bases: tuple[type, ...], namespace: dict[str, Any], /,
        *, name: str | None = None, abstract: bool = False, locks: object = None, **kwargs: Any,
    ) -> SagaMeta:
        cls = super().__new__(mcls, cls_name, bases, dict(namespace), **kwargs)
        if not any(isinstance(base, SagaMeta) for base in bases):
            return cls  # the ``Saga`` root itself
        _check_bare_decorators(cls_name, namespace)
        redefined = getattr(namespace, "redefined", [])
        if redefined:
            raise SagaDefinitionError(
                f"{cls_name}.{redefined[0]}: defined twice in the class body; the second definition "
                "would silently replace the first. Give each step and compensation its own name"
            )
        input_type = _input_type(cls, bases)
        cls.__saga_input_type__ = input_type  # type: ignore[attr-defined]
        if locks is None:
            locks = getattr(cls, "__saga_locks__", ())  # a base's, inherited
        cls.__saga_locks__ = locks  # type: ignore[attr-defined]
        members = _collect(cls, cls_name)
        if not any(_is_step(member) for member in members):
            if abstract:
                setattr(cls, "definition", None)
                return cls
            raise SagaDefinitionError(
                f"{cls_name}: defines no @step methods; add at least one, or declare a base class "
                f"with class {cls_name}(Saga[...], abstract=True)"
            )
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise SagaDefinitionError(f"{cls_name}: name= must be a non-empty string, got {name!r}")
        saga_name = name or f"{cls.__module__}:{cls.__qualname__}"
        # String annotations (``from __future__ import annotations``) may name
        # types local to the function running the class statement, or to the
        # class body itself: resolve them against both, as Python code would.
        localns = {**sys._getframe(1).f_locals, **namespace}
        definition = build_definition(cls_name, saga_name, input_type, members, cls, locks=locks,
                                      localns=localns)
        setattr(cls, "definition", definition)
        setattr(cls, "saga_name", saga_name)
        _register(saga_name, cls)
        return cls

    def __init__(cls, cls_name: str, bases: tuple[type, ...], namespace: dict[str, Any], /,
                 **kwargs: Any) -> None:
        super().__init__(cls_name, bases, namespace)


def _check_bare_decorators(cls_name: str, namespace: dict[str, Any]) -> None:
    for attr, value in namespace.items():
        if hasattr(value, BARE_COMPENSATES_ATTR):
            raise SagaDefinitionError(
                f'{cls_name}.{attr}: @compensates must be called with the step it undoes, '
                f'e.g. @compensates("reserve") or @compensates(reserve)'
            )


def _input_type(cls: type, bases: tuple[type, ...]) -> Any:
    for alias in getattr(cls, "__orig_bases__", ()):
        origin = typing.get_origin(alias)
        if isinstance(origin, SagaMeta):
            args = typing.get_args(alias)
            if args and not isinstance(args[0], TypeVar):
                return args[0]
    for base in bases:
        inherited = getattr(base, "__saga_input_type__", None)
        if inherited is not None:
            return inherited
    return Any


def _is_step(member: Member) -> bool:
    return hasattr(member.func, STEP_ATTR)


def _collect(cls: type, cls_name: str) -> list[Member]:
    """Decorated members by MRO, base classes first; overrides keep their place."""
    members: dict[str, Member] = {}
    for klass in reversed(cls.__mro__):
        if not isinstance(klass, SagaMeta):
            continue
        for attr, value in vars(klass).items():
            spec = getattr(value, STEP_ATTR, None) or getattr(value, COMPENSATES_ATTR, None)
            known = members.get(attr)
            if spec is not None:
                if known is not None and _is_step(known) and not hasattr(value, STEP_ATTR):
                    raise SagaDefinitionError(
                        f"{cls_name}.{attr}: overrides the step {display_name(known.func)} with a "
                        "compensation; give the compensation its own name")
                members[attr] = Member(attr, value, spec, klass)
            elif known is not None and _is_step(known) and callable(value):
                raise SagaDefinitionError(
                    f"{cls_name}.{attr}: overrides the step {display_name(known.func)} without @step; "
                    f"decorate the override with @step(idempotency_key=...)"
                )
    return list(members.values())


def _register(name: str, cls: SagaMeta) -> None:
    """Register ``cls`` under ``name``.

    Re-registering the same module and qualified name (a reloaded module, a
    class statement run twice) replaces the old class; another class raises.
    """
    with _registering:
        existing = registered_classes.get(name)
        if existing is not None and existing is not cls and _origin(existing) != _origin(cls):
            raise SagaDefinitionError(
                f"{cls.__name__}: the saga name {name!r} is already registered by "
                f"{_origin(existing)}; pass another name: class {cls.__name__}(Saga[...], name=\"...\")"
            )
        registered_classes[name] = typing.cast("type[Saga[Any]]", cls)


def _origin(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


class Saga(Generic[InputT], metaclass=SagaMeta):
    """Base class of every saga; generic over its input type.

    Subclass it as ``class PlaceOrder(Saga[Order])`` with ``@step`` methods
    and their ``@compensates`` counterparts. The metaclass builds the step
    graph (:attr:`definition`) when the class statement runs.
    """

    #: The checked step graph, built when the class is created.
    definition: ClassVar[SagaDefinition]
    #: The name the class is registered under.
    saga_name: ClassVar[str]

    _input: InputT
    _saga_id: str

    @property
    def input(self) -> InputT:
        """The saga's input, decoded to the declared input type."""
        return self._input

    @property
    def saga_id(self) -> str:
        """The id this saga runs under."""
        return self._saga_id

    @property
    def step_key(self) -> str:
        """The running step's idempotency key: the same for every attempt and resume."""
        key = step_key.get()
        if key is None:
            raise RuntimeError(f"{type(self).__name__}.step_key is only available inside a step "
                               "or compensation")
        return key

    @property
    def attempt(self) -> int:
        """The running step's attempt, starting at 1."""
        attempt = attempt_number.get()
        if attempt is None:
            raise RuntimeError(f"{type(self).__name__}.attempt is only available inside a step "
                               "or compensation")
        return attempt

    @property
    def db(self) -> Session:
        """The SQLAlchemy ORM session of a ``transactional=True`` step or compensation.

        It runs on the saga's own connection, inside the transaction that
        also commits the step's completion (or its ``compensated`` status):
        what it writes lands exactly when the step does, and a failure, a
        timeout or a crash leaves none of it. Each attempt gets a fresh
        transaction; the session is closed when the attempt ends. Call
        ``flush()`` to see database-generated values; ``commit()`` only
        flushes, as the commit belongs to the step.
        """
        session = step_db.get()
        if session is None:
            raise SagaError(f"{type(self).__name__}.db is only available inside a step or compensation "
                            "declared with transactional=True (on a SQL storage); declare it "
                            "@step(..., transactional=True) to write to your tables with the step")
        return session  # type: ignore[no-any-return]

    @classmethod
    def _bind(cls, input: InputT, saga_id: str) -> Saga[InputT]:
        saga = cls()
        saga._input = input
        saga._saga_id = saga_id
        return saga
