"""Checking an annotation at class creation: can the codec store its values and decode them back?"""

from __future__ import annotations

import collections.abc
import dataclasses
import datetime as dt
import enum
import inspect
import math
import types
import typing
import uuid
from decimal import Decimal
from typing import Any, Union

from ..errors import SerializationError
from .annotations import (
    NONE_TYPES,
    field_hints,
    is_namedtuple,
    is_record,
    pydantic_base,
    substitute,
    type_arguments,
    type_name,
    unwrap,
)
from .encode import encode_key
from .unions import union_clash

__all__ = ["check_storable"]

def check_storable(annotation: Any, *, where: str) -> None:
    """Check that the codec can store values of ``annotation`` and decode them back.

    Allowed are the types listed in the module docstring, nested in any way,
    and ``Any``, ``object`` and ``None``. Refused, among others: plain classes
    (not a dataclass, pydantic model, TypedDict, NamedTuple or Enum),
    ``bytes``, callables and classes, ``dict`` keys other than ``str``,
    ``int``, ``Enum``, ``UUID`` or ``Literal``, abstract collections such as
    ``Sequence`` (which concrete type to rebuild?), unresolved forward
    references, and unions whose arms a stored value cannot be told apart by
    (``str | Decimal``, ``int | float``, ``list[int] | list[str]``).

    Args:
        annotation: The annotation to check (resolved: a type, not a string).
        where: The subject of the message, e.g. ``"PlaceOrder.reserve: the
            return type"``.

    Raises:
        SerializationError: ``"{where} is {type}, which ...; {what to use instead}"``,
            naming the innermost offending part of a nested type.
    """
    problem = _Checker().problem(annotation)
    if problem is None:
        return
    links, reason = problem
    text = f"{where} is {type_name(annotation)}"
    # Name the fields on the way down and the offending part; items and arms
    # in between can be read off the type itself.
    for i, (location, part) in enumerate(links):
        if location.startswith("field ") or i == len(links) - 1:
            text += (f", which includes {type_name(part)}" if location == "arm"
                     else f", whose {location} is {type_name(part)}")
    raise SerializationError(f"{text}, which {reason}")


#: A problem found in an annotation: the way down to the offending part, as
#: (location, type) links ("field Invoice.lines", "item type", "key type",
#: "arm"; none for the annotation itself), and a "which ..." text saying why
#: and what to use instead.
_Problem = tuple[list[tuple[str, Any]], str]

_ABSTRACT: dict[Any, str] = {
    **{abc: "list[...] or tuple[..., ...]" for abc in (
        collections.abc.Sequence, collections.abc.MutableSequence, collections.abc.Iterable,
        collections.abc.Collection, collections.abc.Iterator, collections.abc.Reversible,
        collections.abc.Container)},
    **{abc: "dict[...]" for abc in (collections.abc.Mapping, collections.abc.MutableMapping)},
    **{abc: "set[...] or frozenset[...]" for abc in (collections.abc.Set, collections.abc.MutableSet)},
}
_PLAIN = ("is a plain class the codec cannot rebuild from JSON; make it a dataclass, a pydantic "
          "model, a TypedDict or a NamedTuple")


class _Checker:
    """Walks an annotation the way the decoder would, reporting the first problem."""

    def __init__(self) -> None:
        self.seen: set[tuple[type, tuple[tuple[Any, Any], ...]]] = set()

    def problem(self, tp: Any, bound: dict[Any, Any] | None = None) -> _Problem | None:
        tp = unwrap(substitute(tp, bound or {}))
        if tp is Any or tp is object or tp in NONE_TYPES:
            return None
        if isinstance(tp, (str, typing.ForwardRef)):
            return ([], "is a forward reference that cannot be resolved; define the type before "
                        "the saga class (at module level, or earlier in the same function)")
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin is Union or origin is types.UnionType:
            for arm in args:
                found = self._nested(arm, "arm")
                if found:
                    return found
            clash = union_clash(args)
            return ([], clash) if clash else None
        if origin is typing.Literal:
            for arg in args:
                if isinstance(arg, enum.Enum):
                    found = self._nested(type(arg), "arm")
                    if found:
                        return found
                elif not (arg is None or isinstance(arg, (str, int))):
                    return ([], f"has the value {arg!r}, which has no JSON form; use str, int, "
                                "bool, None or Enum members")
            return None
        if origin in (list, tuple, set, frozenset):
            for i, arg in enumerate(args):
                if arg is Ellipsis:
                    continue
                location = f"item {i}" if origin is tuple and Ellipsis not in args else "item type"
                found = self._nested(arg, location)
                if found:
                    return found
            return None
        if origin is dict:
            key_problem = _key_problem(args[0]) if args else None
            if key_problem:
                return ([("key type", args[0])], key_problem)
            return self._nested(args[1], "value type") if args else None
        if origin is not None:
            if isinstance(origin, type) and is_record(origin):
                return self._record(origin, type_arguments(origin, args))
            return ([], _unsupported(origin))
        if not isinstance(tp, type):
            return ([], "is not a type the codec knows; annotate with a supported type")
        return self._class(tp)

    def _nested(self, tp: Any, location: str) -> _Problem | None:
        found = self.problem(tp)
        return ([(location, tp), *found[0]], found[1]) if found else None

    def _class(self, tp: type) -> _Problem | None:
        if tp in (bool, int, float, str, list, tuple, set, frozenset, dict, uuid.UUID, Decimal,
                  dt.datetime, dt.date, dt.time, dt.timedelta):
            return None
        if issubclass(tp, enum.Enum):
            odd = [m for m in tp if isinstance(m.value, float) and not math.isfinite(m.value)
                   or not isinstance(m.value, (str, int, float))]
            if odd:
                return ([], f"has the member {odd[0]!r}, whose value is no str, int, float or bool; "
                            "the codec stores an Enum as its value, so give the members such values")
            return None
        if issubclass(tp, (dt.date, dt.time, dt.timedelta, uuid.UUID, Decimal)):
            return None
        if is_record(tp):
            return self._record(tp, {})
        base = pydantic_base()
        if base is not None and issubclass(tp, base):
            if getattr(tp, "__pydantic_complete__", True) is False:
                return ([], "is a pydantic model that is not fully defined; call "
                            f"{tp.__qualname__}.model_rebuild() before the saga class")
            return None
        return ([], _unsupported(tp))

    def _record(self, tp: type, bound: dict[Any, Any]) -> _Problem | None:
        key = (tp, tuple(bound.items()))
        if key in self.seen:
            return None  # a recursive type: its fields are being checked already
        self.seen.add(key)
        try:
            hints = field_hints(tp)
        except SerializationError as exc:
            cause = exc.__cause__ or exc
            return ([], f"has annotations that cannot be resolved ({cause}); define the types "
                        "it uses before the saga class")
        if dataclasses.is_dataclass(tp):
            names = [f.name for f in dataclasses.fields(tp)]
            fields = {f.name for f in dataclasses.fields(tp)}
            for name, param in inspect.signature(tp).parameters.items():
                if name not in fields and param.default is param.empty:
                    return ([], f"has the init-only parameter {name!r} without a default, which "
                                "is not stored and so cannot be passed when decoding; give it a default")
        elif is_namedtuple(tp):
            names = list(tp._fields)  # type: ignore[attr-defined]
        else:
            names = list(hints)
        for name in names:
            found = self._nested(substitute(hints.get(name, Any), bound), f"field {tp.__qualname__}.{name}")
            if found:
                return found
        return None


def _unsupported(tp: Any) -> str:
    if tp in (bytes, bytearray, memoryview):
        return "has no JSON form; use str (e.g. base64 text) instead"
    if tp is collections.abc.Callable or tp is type:
        return "is code, not data; store a name and look it up instead"
    if tp in _ABSTRACT:
        return f"does not say which collection to rebuild; use {_ABSTRACT[tp]}"
    if isinstance(tp, type) and issubclass(tp, (list, tuple, dict, set, frozenset, collections.deque)):
        return "is a collection the codec does not rebuild; use list, tuple, dict, set or frozenset"
    if isinstance(tp, type):
        return _PLAIN
    return "is not a type the codec knows; annotate with a supported type"


def _key_problem(tp: Any) -> str | None:
    tp = unwrap(tp)
    if tp in (str, int, Any, object) or (isinstance(tp, type) and issubclass(tp, uuid.UUID)):
        return None
    choices: list[Any] | None = None
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        choices = list(tp)
    elif typing.get_origin(tp) is typing.Literal:
        choices = list(typing.get_args(tp))
    if choices is not None:
        names: dict[str, Any] = {}
        for choice in choices:
            try:
                name = encode_key(choice, "key")
            except SerializationError:
                return (f"has the key {choice!r}, which JSON cannot store; JSON object keys must be "
                        "str, int, Enum or UUID")
            if name in names:
                return (f"has the keys {names[name]!r} and {choice!r}, which are both stored as the "
                        f"JSON key {name!r}; give the members values that differ as text")
            names[name] = choice
        return None
    return ("cannot be a JSON object key; use str, int, Enum, UUID or Literal keys, or a list of "
            "(key, value) pairs")
