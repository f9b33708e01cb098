"""Resolving a saga class's annotations when its class statement runs.

String annotations (``from __future__ import annotations``) are evaluated
against the module and the names visible where the class statement runs, so
that a type defined next to the saga class in a function resolves as it would
in Python code; the input type's field names are what key templates may use.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Mapping

from typing_extensions import is_typeddict

__all__ = ["Unresolved", "resolve", "annotation_text", "input_fields"]


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


class Unresolved(Exception):
    """An annotation names something that does not exist (yet)."""


def resolve(annotation: Any, globalns: dict[str, Any], localns: Mapping[str, Any]) -> Any:
    """``annotation`` evaluated (strings and forward references inside it too).

    ``localns`` holds the names visible where the class statement runs (the
    enclosing function's locals and the class body), so that a result type
    defined next to the saga class in a function resolves as it would in
    Python code.

    Raises:
        Unresolved: naming the missing name.
    """
    holder = types.SimpleNamespace(__annotations__={"value": annotation})
    try:
        return typing.get_type_hints(holder, globalns=globalns, localns=dict(localns))["value"]
    except Exception as exc:  # NameError, or a SyntaxError in a string annotation
        raise Unresolved(f"{type(exc).__name__}: {exc}") from exc


def annotation_text(annotation: Any) -> str:
    """An annotation as the user wrote it, for messages."""
    if isinstance(annotation, str):
        return repr(annotation)
    if isinstance(annotation, typing.ForwardRef):
        return repr(annotation.__forward_arg__)
    return getattr(annotation, "__qualname__", None) or repr(annotation)
