"""Encoding: a Python value to plain JSON data, refusing what no backend can store."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import math
import re
import uuid
from decimal import Decimal
from typing import Any

from ..errors import SerializationError
from .annotations import (
    is_namedtuple,
    pydantic_base,
)

JSONValue = Any

__all__ = ["JSONValue", "to_json", "encode", "encode_key"]

# PostgreSQL's JSONB cannot hold U+0000, and no UTF-8 database can hold a lone
# surrogate (JSONB refuses "\ud800" with "Unicode low surrogate must follow a
# high surrogate"); both are refused on every backend alike.
_UNSTORABLE_TEXT = re.compile("[\x00\ud800-\udfff]")
_NUL_MESSAGE = ("{path} contains a NUL character (\\x00), which PostgreSQL cannot store; "
                "remove it, or encode binary data (e.g. base64) before returning it")
_SURROGATE_MESSAGE = (
    "{path} contains a lone surrogate ({char} at index {index}), which no UTF-8 database can "
    "store; it usually comes from bytes decoded with errors='surrogateescape': decode them with "
    "the right encoding, or encode binary data (e.g. base64) before returning it"
)
_INT64_MIN, _INT64_MAX = -(2 ** 63), 2 ** 63 - 1


def to_json(value: Any, *, where: str = "value") -> JSONValue:
    """Turn ``value`` into JSON-compatible Python data.

    Args:
        value: A value of a supported type (see the module docstring).
        where: What the value is, for messages (e.g. ``"result of PlaceOrder.reserve"``).

    Returns:
        Plain JSON data: ``dict`` with ``str`` keys, ``list``, ``str``, ``int``,
        ``float``, ``bool`` or ``None``.

    Raises:
        SerializationError: naming ``where`` and the path of the first value
            that has no JSON form, or text a database cannot store (NUL, lone
            surrogates), or a value that contains itself.
    """
    try:
        return encode(value, where)
    except RecursionError:
        raise SerializationError(f"{where} is nested too deeply or contains itself (a list, dict or "
                                 "dataclass that refers back to itself); JSON can store neither") from None


def encode(value: Any, path: str) -> JSONValue:
    # Order matters: bool and IntEnum are ints, StrEnum is a str, datetime is a
    # date, a NamedTuple is a tuple.
    if value is None or value is True or value is False:
        return value
    if isinstance(value, enum.Enum):
        return encode(value.value, path)
    if isinstance(value, str):
        return _check_text(value if type(value) is str else str.__str__(value), path)
    if isinstance(value, int):
        return _check_int(int(value), path)
    if isinstance(value, float):
        return _check_float(float(value), path)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return _format_duration(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise SerializationError(f"{path} is Decimal({str(value)!r}), which JSON cannot store")
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: encode(getattr(value, f.name), f"{path}.{f.name}")
                for f in dataclasses.fields(value)}
    if isinstance(value, tuple) and is_namedtuple(type(value)):
        # An object, not an array: a NamedTuple is a record, and its field
        # names keep the stored row readable and let it gain fields.
        fields: tuple[str, ...] = getattr(type(value), "_fields")
        return {name: encode(getattr(value, name), f"{path}.{name}") for name in fields}
    base = pydantic_base()
    if base is not None and isinstance(value, base):
        return _encode_pydantic(value, path)
    if isinstance(value, dict):
        out: dict[str, JSONValue] = {}
        originals: dict[str, Any] = {}
        for key, item in value.items():
            name = encode_key(key, path)
            if name in originals:
                raise SerializationError(
                    f"{path} has the keys {originals[name]!r} and {key!r}, which are both stored as the "
                    f"JSON key {name!r}; give the dict keys of one type")
            originals[name] = key
            out[name] = encode(item, f"{path}[{key!r}]")
        return out
    if isinstance(value, (list, tuple)):
        return [encode(item, f"{path}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, (set, frozenset)):
        items = [encode(item, f"{path}[{i}]") for i, item in enumerate(value)]
        try:
            return sorted(items)
        except TypeError:  # items of mixed JSON types: any order decodes to the same set
            return items
    raise SerializationError(
        f"{path} is a {type(value).__module__}.{type(value).__qualname__}, which has no JSON form; "
        "return a dataclass, pydantic model, TypedDict, Enum, datetime, UUID, Decimal, "
        "primitive, or a list/dict of those"
    )


def _check_text(text: str, path: str) -> str:
    bad = _UNSTORABLE_TEXT.search(text)
    if bad is None:
        return text
    char = bad.group()
    if char == "\x00":
        raise SerializationError(_NUL_MESSAGE.format(path=path))
    raise SerializationError(_SURROGATE_MESSAGE.format(path=path, char=f"\\u{ord(char):04x}",
                                                       index=bad.start()))


def _check_int(value: int, path: str) -> int:
    # SQLite reads a stored number beyond 64 bits back as a float, PostgreSQL
    # does not: refused on every backend alike, so that a saga behaves the same.
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise SerializationError(
            f"{path} is an int of {value.bit_length()} bits, beyond the 64-bit range every backend "
            "stores exactly; store it as a str or Decimal")
    return value


def _check_float(value: float, path: str) -> float:
    if not math.isfinite(value):
        raise SerializationError(f"{path} is {value!r}, which JSON cannot store; "
                                 "use None or a finite number")
    # PostgreSQL's JSONB and SQLite both turn -0.0 into 0.0: store that on
    # every backend, so the first run sees what a resume sees (-0.0 == 0.0).
    return 0.0 if value == 0.0 else value


def encode_key(key: Any, path: str) -> str:
    if isinstance(key, enum.Enum):
        key = key.value
    if isinstance(key, str):
        return _check_text(key if type(key) is str else str.__str__(key), f"a key of {path}")
    if isinstance(key, (int, uuid.UUID)) and not isinstance(key, bool):
        return str(key)
    raise SerializationError(f"{path} has a key {key!r} of type {type(key).__name__}; "
                             "JSON object keys must be str, int, Enum or UUID")


def _encode_pydantic(value: Any, path: str) -> JSONValue:
    model = type(value)
    # By alias: model_validate reads aliases (unless the model turns that off),
    # so a model dumped by field name would not validate back.
    by_alias = bool(model.model_config.get("validate_by_alias", True))
    try:
        data = value.model_dump(mode="json", by_alias=by_alias)
    except Exception as exc:  # pydantic raises its own error types
        raise SerializationError(f"{path}: pydantic could not dump {model.__name__}: {exc}") from exc
    _check_plain(data, path)
    # Pydantic's JSON form is pydantic's to define, and it is not always
    # symmetric (a UTC offset of +00:00:30 is dumped as +00:00): check that the
    # data validates back to the same fields, or refuse the value now rather
    # than hand a later step something else.
    try:
        same = model.model_validate(data).model_dump() == value.model_dump()
    except Exception as exc:
        raise SerializationError(f"{path}: pydantic cannot validate its own dump of {model.__name__} "
                                 f"back: {exc}") from exc
    if not same:
        raise SerializationError(
            f"{path}: pydantic's JSON form of this {model.__name__} does not validate back to the same "
            "fields, so it would not come back as it was; use field types whose JSON form is exact")
    return data


def _check_plain(data: Any, path: str) -> JSONValue:
    """Check JSON data made by someone else (pydantic) for what no backend stores."""
    if isinstance(data, str):
        return _check_text(data, path)
    if isinstance(data, float):
        return _check_float(data, path)
    if isinstance(data, int) and not isinstance(data, bool):
        return _check_int(data, path)
    if isinstance(data, dict):
        for key, item in data.items():
            _check_text(str(key), f"a key of {path}")
            _check_plain(item, f"{path}.{key}")
    elif isinstance(data, list):
        for i, item in enumerate(data):
            _check_plain(item, f"{path}[{i}]")
    return data


_DURATION = re.compile(r"(-)?P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)(?:\.(\d{1,6}))?S)?)?")


def _format_duration(value: dt.timedelta) -> str:
    """``value`` as an ISO 8601 duration, exact to the microsecond (``-P1DT2H3M4.000005S``).

    Not ``total_seconds()``: a float cannot hold every microsecond of a
    timedelta longer than a few hundred years.
    """
    if value < dt.timedelta(0):
        return "-" + _format_duration(-value)
    hours, rest = divmod(value.seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    clock = (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes else "")
    if seconds or value.microseconds:
        fraction = f".{value.microseconds:06d}".rstrip("0") if value.microseconds else ""
        clock += f"{seconds}{fraction}S"
    text = "P" + (f"{value.days}D" if value.days else "") + (f"T{clock}" if clock else "")
    return text if text != "P" else "PT0S"
