"""Reading annotations the way the codec does: names for messages, aliases removed, generics bound."""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
import weakref
from typing import Any, Union

from typing_extensions import is_typeddict

from ..errors import SerializationError

__all__ = ["NONE_TYPES", "pydantic_base", "type_name", "short", "unwrap", "is_namedtuple", "is_record",
           "type_arguments", "substitute", "field_hints"]

NONE_TYPES = (type(None), None)


def pydantic_base() -> type | None:
    """``pydantic.BaseModel`` if pydantic is imported (the codec never imports it itself)."""
    module = sys.modules.get("pydantic")
    return getattr(module, "BaseModel", None) if module is not None else None


def type_name(tp: Any) -> str:
    """A short, readable name of an annotation: ``list[Line]``, ``int | None``."""
    if tp is None or tp is type(None):
        return "None"
    if tp is Any:
        return "Any"
    if tp is Ellipsis:
        return "..."
    if isinstance(tp, list):  # the parameters of Callable[[int], str]
        return f"[{', '.join(type_name(arg) for arg in tp)}]"
    if isinstance(tp, str):
        return repr(tp)
    if isinstance(tp, typing.ForwardRef):
        return repr(tp.__forward_arg__)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Union or origin is types.UnionType:
        return " | ".join(type_name(arg) for arg in args)
    if origin is typing.Literal:
        return f"Literal[{', '.join(repr(arg) for arg in args)}]"
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is not None:
        name = getattr(origin, "__qualname__", None) or repr(origin)
        return f"{name}[{', '.join(type_name(arg) for arg in args)}]" if args else name
    name = getattr(tp, "__qualname__", None) or getattr(tp, "__name__", None)
    return str(name) if name else repr(tp)


def short(data: Any) -> str:
    """``repr(data)`` cut to 80 characters, for messages."""
    text = repr(data)
    return text if len(text) <= 80 else text[:77] + "..."


def unwrap(tp: Any) -> Any:
    """The annotation the codec works with: ``Annotated``, ``NewType``, ``TypeVar``, aliases removed."""
    while True:
        if typing.get_origin(tp) is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif callable(tp) and hasattr(tp, "__supertype__"):  # NewType
            tp = tp.__supertype__
        elif isinstance(tp, typing.TypeVar):
            tp = tp.__bound__ if tp.__bound__ is not None else Any
        elif type(tp).__name__ == "TypeAliasType" and not getattr(tp, "__type_params__", ()):
            tp = tp.__value__
        else:
            return tp


def is_namedtuple(tp: type) -> bool:
    """Whether ``tp`` is a ``NamedTuple`` class."""
    return issubclass(tp, tuple) and isinstance(getattr(tp, "_fields", None), tuple)


def is_record(tp: type) -> bool:
    """Dataclasses, TypedDicts and NamedTuples: objects whose fields the codec decodes."""
    return dataclasses.is_dataclass(tp) or is_typeddict(tp) or is_namedtuple(tp)


def type_arguments(origin: type, args: tuple[Any, ...]) -> dict[Any, Any]:
    """``{T: int}`` for ``Box[int]`` of a generic ``Box[T]``."""
    params = getattr(origin, "__parameters__", ())
    return dict(zip(params, args))


def substitute(hint: Any, bound: dict[Any, Any]) -> Any:
    """``hint`` with the type variables in ``bound`` replaced (``list[T]`` -> ``list[int]``)."""
    if not bound:
        return hint
    if isinstance(hint, typing.TypeVar):
        return bound.get(hint, hint)
    params = getattr(hint, "__parameters__", ())
    if params and typing.get_origin(hint) is not None:
        return hint[tuple(bound.get(p, p) for p in params)]
    return hint


_hint_cache: weakref.WeakKeyDictionary[type, dict[str, Any]] = weakref.WeakKeyDictionary()


def field_hints(tp: type) -> dict[str, Any]:
    """The resolved field annotations of a record type, cached per class.

    Raises:
        SerializationError: if they cannot be resolved (not cached: they may resolve later).
    """
    hints = _hint_cache.get(tp)
    if hints is None:
        try:
            hints = typing.get_type_hints(tp)
        except Exception as exc:  # unresolved forward references; not cached, they may resolve later
            raise SerializationError(f"cannot resolve the annotations of {tp.__qualname__}: {exc}") from exc
        _hint_cache[tp] = hints
    return hints
