"""Telling union arms apart: which arms' JSON forms could be mistaken for each other."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import types
import typing
import uuid
from decimal import Decimal
from typing import Any, Union

from typing_extensions import is_typeddict

from ..errors import SerializationError
from .annotations import (
    NONE_TYPES,
    field_hints,
    is_namedtuple,
    is_record,
    pydantic_base,
    short,
    type_name,
    unwrap,
)
from .decode import DECODE_ERRORS, decode_class, same_json
from .encode import encode

__all__ = ["union_clash"]

# What the JSON of a value may look like: ("any",), ("null",), ("bool",),
# ("int",), ("float",), ("str",) (any string), ("flag", type) (an int that is
# a combination of flags), ("text", type) (a string in the
# format of Decimal, UUID, datetime, ...: these formats never overlap),
# ("const", json, plain, label) (an Enum member or Literal value; plain for a
# Literal of a plain value, which decodes to the same thing as its base type),
# ("array",) and ("object", keys | None, {key: const values}) (None: any keys).
_Form = tuple[Any, ...]
_TEXT_TYPES = (dt.datetime, dt.date, dt.time, dt.timedelta, uuid.UUID, Decimal)


def _forms(tp: Any) -> list[_Form]:
    tp = unwrap(tp)
    if tp is Any or tp is object:
        return [("any",)]
    if tp in NONE_TYPES:
        return [("null",)]
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Union or origin is types.UnionType:
        return [form for arm in args for form in _forms(arm)]
    if origin is typing.Literal:
        return [("const", encode(arg, "literal"), not isinstance(arg, enum.Enum), repr(arg)) for arg in args]
    if origin in (list, tuple, set, frozenset) or tp in (list, tuple, set, frozenset):
        return [("array",)]
    if origin is dict or tp is dict:
        return [("object", None, {})]
    if origin is not None and isinstance(origin, type) and is_record(origin):
        return _forms(origin)
    if not isinstance(tp, type):
        return []
    for simple in (bool, int, float, str):
        if tp is simple:
            return [(simple.__name__,)]
    if issubclass(tp, enum.Flag):
        return [("flag", tp)]  # combinations of flags are values too: any int may be one
    if issubclass(tp, enum.Enum):
        return [("const", encode(m.value, "member"), False, f"{tp.__qualname__}.{m.name}") for m in tp]
    for text in _TEXT_TYPES:  # datetime before date
        if issubclass(tp, text):
            return [("text", text)]
    if is_typeddict(tp):
        return [("object", None, {})]
    if dataclasses.is_dataclass(tp) or is_namedtuple(tp):
        names = ([f.name for f in dataclasses.fields(tp)] if dataclasses.is_dataclass(tp)
                 else list(tp._fields))  # type: ignore[attr-defined]
        try:
            hints = field_hints(tp)
        except SerializationError:
            hints = {}
        return [("object", frozenset(names), _const_fields(hints, names))]
    base = pydantic_base()
    if base is not None and issubclass(tp, base):
        by_alias = bool(tp.model_config.get("validate_by_alias", True))  # type: ignore[attr-defined]
        keys = {(f.alias if by_alias and f.alias else name)
                for name, f in tp.model_fields.items() if not f.exclude}  # type: ignore[attr-defined]
        keys |= set(getattr(tp, "model_computed_fields", {}))
        return [("object", frozenset(keys), {})]
    return []


def _const_fields(hints: dict[str, Any], names: list[str]) -> dict[str, list[Any]]:
    """Fields whose every value is an Enum member or Literal: they tell records apart."""
    out: dict[str, list[Any]] = {}
    for name in names:
        forms = _forms(hints.get(name, Any))
        if forms and all(form[0] == "const" for form in forms):
            out[name] = [form[1] for form in forms]
    return out


def union_clash(arms: tuple[Any, ...]) -> str | None:
    """Why two arms of a union cannot be told apart in JSON (a "which ..." text), or None."""
    distinct: list[Any] = []
    for arm in arms:  # Card and Annotated[Card, ...] are one arm
        if all(unwrap(arm) != unwrap(other) for other in distinct):
            distinct.append(arm)
    per_arm = [(arm, _forms(arm)) for arm in distinct]
    for i, (arm_a, forms_a) in enumerate(per_arm):
        for arm_b, forms_b in per_arm[i + 1:]:
            for a in forms_a:
                for b in forms_b:
                    found = _clash(a, b) or _clash(b, a)
                    if found:
                        why, fix = found
                        return (f"cannot be decoded unambiguously: {type_name(arm_a)} and "
                                f"{type_name(arm_b)} {why}; "
                                + (fix or "keep one of them, or make each a dataclass with a field "
                                          "that tells them apart (e.g. kind: Literal[...])"))
    return None


def _clash(a: _Form, b: _Form) -> tuple[str, str | None] | None:
    """Why forms ``a`` and ``b`` of two arms look alike, and a fix if there is a better one."""
    kind_a, kind_b = a[0], b[0]
    if kind_a == "any":
        # Under Any only JSON values come back; one that looks like the other
        # arm's JSON would come back as that arm's type.
        if kind_b in ("text", "array", "object") or (kind_b == "const" and not b[2]):
            return ("overlap: a value stored under Any that looks like the other's JSON would come back "
                    "as the other type", "annotate Any alone, or leave Any out")
        return None
    if kind_b == "any":
        return None
    if kind_a == "flag" and (kind_b in ("int", "flag")
                             or (kind_b == "const" and type(b[1]) is int)):
        return "are both stored as JSON integers", None
    if kind_a == kind_b and kind_a in ("null", "bool", "int", "float", "str", "array"):
        word = {"str": "string", "int": "integer", "float": "number"}.get(kind_a, kind_a)
        return (f"are both stored as a JSON {word}" + (" (an empty one fits either)" if kind_a == "array" else ""),
                None)
    if (kind_a, kind_b) == ("int", "float"):
        return ("are both stored as JSON numbers, and PostgreSQL reads 1e16 back as 10000000000000000",
                "annotate float (an int comes back as a float) or int")
    if kind_a == "text" and kind_b == "text" and a[1] is b[1]:
        return "are both stored as the same kind of JSON string", None
    if (kind_a, kind_b) == ("str", "text"):
        return "are both stored as JSON strings", None
    if kind_a == "const":
        value, plain = a[1], a[2]
        if kind_b == "const":
            if same_json(value, b[1]) and a[3] != b[3] and not (plain and b[2]):
                return f"have {a[3]} and {b[3]}, both stored as {short(value)}", None
            return None
        if kind_b == "text" and isinstance(value, str):
            try:
                if same_json(encode(decode_class(value, b[1], "value"), "value"), value):
                    return (f"have {a[3]}, stored as {short(value)}, which is also a {b[1].__qualname__}",
                            None)
            except DECODE_ERRORS:
                return None
            return None
        simple = {bool: "bool", int: "int", float: "float", str: "str", type(None): "null"}.get(type(value))
        if not plain and simple == kind_b:
            return f"have {a[3]}, stored as {short(value)} like a plain {kind_b}", None
        return None
    if kind_a == "object" and kind_b == "object":
        keys_a, keys_b = a[1], b[1]
        if keys_a is None or keys_b is None:
            return "are both stored as JSON objects, and one of them takes any keys", None
        if keys_a != keys_b:
            return None
        for key, values in a[2].items():
            others = b[2].get(key)
            if others is not None and not any(same_json(x, y) for x in values for y in others):
                return None  # a discriminating field
        return f"are both stored as JSON objects with the keys {', '.join(sorted(keys_a))}", None
    return None
