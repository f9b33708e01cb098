"""Decoding: JSON data back to the annotated type, arm by arm for unions."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import re
import types
import typing
import uuid
from decimal import Decimal, InvalidOperation
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
    substitute,
    type_arguments,
    type_name,
    unwrap,
)
from .encode import JSONValue, encode, encode_key

__all__ = ["from_json", "decode", "decode_class", "same_json", "DECODE_ERRORS"]

DECODE_ERRORS = (SerializationError, TypeError, ValueError, KeyError, InvalidOperation, AttributeError)


def from_json(data: JSONValue, annotation: Any, *, where: str = "value") -> Any:
    """Decode JSON data produced by :func:`to_json` into ``annotation``.

    Args:
        data: JSON data, as :func:`to_json` made it (or as a database gave it back).
        annotation: The type to rebuild, e.g. a step's return annotation.
        where: What the value is, for messages.

    Returns:
        A value of type ``annotation``.

    Raises:
        SerializationError: if the data does not fit the annotated type.
    """
    try:
        return decode(data, annotation, where)
    except SerializationError:
        raise
    except RecursionError:
        raise SerializationError(f"{where}: {short(data)} is nested too deeply to decode") from None
    except (TypeError, ValueError, KeyError, InvalidOperation, AttributeError) as exc:
        raise SerializationError(f"{where}: cannot decode {short(data)} as "
                                 f"{type_name(annotation)}: {exc}") from exc


def decode(data: Any, tp: Any, path: str) -> Any:
    tp = unwrap(tp)
    if tp is Any or tp is object:
        return data
    if tp in NONE_TYPES:
        if data is not None:
            raise SerializationError(f"{path}: expected null, got {short(data)}")
        return None
    origin = typing.get_origin(tp)
    if origin is Union or origin is types.UnionType:
        return _decode_union(data, typing.get_args(tp), path)
    if origin is typing.Literal:
        return _decode_literal(data, typing.get_args(tp), path)
    if origin in (list, tuple, set, frozenset) or tp in (list, tuple, set, frozenset):
        return _decode_sequence(data, tp, origin or tp, path)
    if origin is dict or tp is dict:
        return _decode_mapping(data, tp, path)
    if origin is not None:
        if isinstance(origin, type) and is_record(origin):
            return _decode_record(data, origin, path, type_arguments(origin, typing.get_args(tp)))
        raise SerializationError(f"{path}: don't know how to decode {type_name(tp)}; "
                                 "annotate with a supported type")
    if isinstance(tp, (str, typing.ForwardRef)):
        raise SerializationError(f"{path}: the annotation {type_name(tp)} is an unresolved forward "
                                 "reference; define the type before the saga class")
    if not isinstance(tp, type):
        raise SerializationError(f"{path}: don't know how to decode {type_name(tp)}; "
                                 "annotate with a supported type")
    return decode_class(data, tp, path)


def same_json(a: Any, b: Any) -> bool:
    """Whether two JSON values are the same, telling ``1``, ``1.0`` and ``True`` apart."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_json(item, b[key]) for key, item in a.items())
    return bool(a == b)


def _is_any(tp: Any) -> bool:
    tp = unwrap(tp)
    return tp is Any or tp is object


def _decode_union(data: Any, arms: tuple[Any, ...], path: str) -> Any:
    if data is None and type(None) in arms:
        return None
    # Arms that take any JSON are tried last, whatever their place in the union.
    candidates = sorted((arm for arm in arms if arm is not type(None)), key=_is_any)
    if len(candidates) == 1:
        return decode(data, candidates[0], path)
    # The arm whose encoding gives back exactly this data is the one the value
    # came from: "2030-01-01" is a date even if datetime is tried first.
    # check_storable refuses unions in which two arms can give the same data.
    errors: list[str] = []
    fits: list[Any] = []
    for arm in candidates:
        try:
            value = decode(data, arm, path)
        except DECODE_ERRORS as exc:
            errors.append(str(exc))
            continue
        try:
            if same_json(encode(value, path), data):
                return value
        except SerializationError:
            pass
        fits.append(value)
    if fits:
        # No exact match: a row written by older code, or a number a database
        # gave back as an int (PostgreSQL's JSONB reads 1e16 as 10000000000000000).
        return fits[0]
    raise SerializationError(f"{path}: {short(data)} fits none of {type_name(Union[arms])}: "
                             f"{'; '.join(errors)}")


def _decode_literal(data: Any, args: tuple[Any, ...], path: str) -> Any:
    for arg in args:
        try:
            if same_json(encode(arg, path), data):
                return arg
        except SerializationError:
            continue
    raise SerializationError(f"{path}: {short(data)} is not one of {args}")


def _decode_sequence(data: Any, tp: Any, container: type, path: str) -> Any:
    if not isinstance(data, list):
        raise SerializationError(f"{path}: expected an array, got {short(data)}")
    args = typing.get_args(tp)
    if container is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
        if len(args) != len(data):
            raise SerializationError(f"{path}: expected {len(args)} items, got {len(data)}")
        return tuple(decode(item, arg, f"{path}[{i}]") for i, (item, arg) in enumerate(zip(data, args)))
    item_tp = args[0] if args else Any
    items = [decode(item, item_tp, f"{path}[{i}]") for i, item in enumerate(data)]
    return items if container is list else container(items)


def _decode_mapping(data: Any, tp: Any, path: str) -> Any:
    if not isinstance(data, dict):
        raise SerializationError(f"{path}: expected an object, got {short(data)}")
    args = typing.get_args(tp)
    key_tp, value_tp = args if args else (Any, Any)
    return {_decode_key(key, key_tp, path): decode(value, value_tp, f"{path}[{key!r}]")
            for key, value in data.items()}


def _decode_key(key: str, tp: Any, path: str) -> Any:
    tp = unwrap(tp)
    if tp is str or tp is Any or tp is object:
        return key
    if tp is int:
        return int(key)
    if isinstance(tp, type) and issubclass(tp, uuid.UUID):
        return tp(key)
    choices: Any = None
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        choices = list(tp)
    elif typing.get_origin(tp) is typing.Literal:
        choices = typing.get_args(tp)
    if choices is not None:
        for choice in choices:
            if encode_key(choice, path) == key:
                return choice
        if isinstance(tp, type) and issubclass(tp, enum.Flag):
            return tp(int(key))  # a combination of flags
        raise SerializationError(f"{path}: key {key!r} is none of {type_name(tp)}")
    raise SerializationError(f"{path}: dict keys of type {type_name(tp)} cannot be decoded; "
                             "use str, int, Enum, UUID or Literal keys")


def decode_class(data: Any, tp: type, path: str) -> Any:
    if tp is bool:
        if not isinstance(data, bool):
            raise SerializationError(f"{path}: expected a boolean, got {short(data)}")
        return data
    if tp is int:
        if not isinstance(data, int) or isinstance(data, bool):
            raise SerializationError(f"{path}: expected an integer, got {short(data)}")
        return data
    if tp is float:
        if not isinstance(data, (int, float)) or isinstance(data, bool):
            raise SerializationError(f"{path}: expected a number, got {short(data)}")
        return float(data)
    if tp is str:
        if not isinstance(data, str):
            raise SerializationError(f"{path}: expected a string, got {short(data)}")
        return data
    if issubclass(tp, enum.Enum):
        return tp(data)
    if issubclass(tp, (dt.datetime, dt.date, dt.time)):
        if not isinstance(data, str):
            raise SerializationError(f"{path}: expected an ISO 8601 string, got {short(data)}")
        return _from_isoformat(tp, data)
    if issubclass(tp, dt.timedelta):
        return _parse_duration(data)
    if issubclass(tp, uuid.UUID):
        if not isinstance(data, str):
            raise SerializationError(f"{path}: expected a UUID string, got {short(data)}")
        return tp(data)
    if issubclass(tp, Decimal):
        if isinstance(data, bool) or not isinstance(data, (str, int, float)):
            raise SerializationError(f"{path}: expected a decimal string, got {short(data)}")
        return tp(str(data))
    if is_record(tp):
        return _decode_record(data, tp, path, {})
    base = pydantic_base()
    if base is not None and issubclass(tp, base):
        try:
            return tp.model_validate(data)  # type: ignore[attr-defined]
        except Exception as exc:
            raise SerializationError(
                f"{path}: pydantic rejected {short(data)} as {tp.__qualname__}: {exc}") from exc
    raise SerializationError(f"{path}: don't know how to decode {tp.__qualname__}; "
                             "annotate with a supported type")


# CPython reads a UTC offset of less than a second ("+00:00:00.000001") as UTC.
_SUBSECOND_OFFSET = re.compile(r"([+-])00:00:00\.(\d{6})$")


def _from_isoformat(tp: Any, text: str) -> Any:
    value = tp.fromisoformat(text)
    match = _SUBSECOND_OFFSET.search(text) if getattr(value, "tzinfo", None) is not None else None
    if match is not None:
        micros = int(match.group(2)) * (-1 if match.group(1) == "-" else 1)
        value = value.replace(tzinfo=dt.timezone(dt.timedelta(microseconds=micros)))
    return value


def _decode_record(data: Any, tp: type, path: str, bound: dict[Any, Any]) -> Any:
    if is_namedtuple(tp) and isinstance(data, list):
        # Rows written when NamedTuples were stored as arrays.
        data = dict(zip(tp._fields, data))  # type: ignore[attr-defined]
    if not isinstance(data, dict):
        raise SerializationError(f"{path}: expected an object for {tp.__qualname__}, got {short(data)}")
    hints = field_hints(tp)

    def field(name: str) -> Any:
        return decode(data[name], substitute(hints.get(name, Any), bound), f"{path}.{name}")

    if is_typeddict(tp):
        return {key: field(key) for key in data}
    if is_namedtuple(tp):
        return tp(**{name: field(name) for name in tp._fields if name in data})  # type: ignore[attr-defined]
    kwargs: dict[str, Any] = {}
    later: dict[str, Any] = {}
    for f in dataclasses.fields(tp):
        if f.name in data:
            (kwargs if f.init else later)[f.name] = field(f.name)
    obj = tp(**kwargs)
    for name, value in later.items():
        object.__setattr__(obj, name, value)  # also for frozen dataclasses
    return obj


_DURATION = re.compile(r"(-)?P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)(?:\.(\d{1,6}))?S)?)?")


def _parse_duration(data: Any) -> dt.timedelta:
    if isinstance(data, (int, float)) and not isinstance(data, bool):
        return dt.timedelta(seconds=data)  # rows written before durations were ISO 8601 text
    if not isinstance(data, str):
        raise TypeError(f"expected an ISO 8601 duration string, got {type(data).__name__}")
    match = _DURATION.fullmatch(data)
    if match is None or data.lstrip("-") == "P" or data.endswith("T"):
        raise ValueError(f"{data!r} is not an ISO 8601 duration such as 'P1DT2H3M4.5S'")
    sign, days, hours, minutes, seconds, fraction = match.groups()
    value = dt.timedelta(days=int(days or 0), hours=int(hours or 0), minutes=int(minutes or 0),
                         seconds=int(seconds or 0), microseconds=int((fraction or "0").ljust(6, "0")))
    return -value if sign else value
