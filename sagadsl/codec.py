"""JSON encoding of saga inputs and step results, decoded back to their annotated types.

Values become plain JSON (objects, arrays, strings, numbers, booleans, null);
nothing is pickled, so reading a row never runs code. Supported: ``None``,
``bool``, ``int``, ``float`` (finite), ``str``, ``list``/``tuple``/``set``/
``frozenset``, ``dict`` (keys of ``str``, ``int``, ``Enum``, ``UUID``),
dataclasses, pydantic v2 models, ``TypedDict``, ``Enum``, ``datetime``,
``date``, ``time``, ``timedelta``, ``UUID``, ``Decimal``, ``Optional`` and
``Union`` of those, ``Literal`` and ``Any``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import math
import sys
import types
import typing
import uuid
from decimal import Decimal, InvalidOperation
from typing import Any, Union

from typing_extensions import is_typeddict

from .errors import SerializationError

__all__ = ["to_json", "from_json", "JSONValue"]

JSONValue = Any
# PostgreSQL's JSONB cannot hold U+0000; refused on every backend alike.
_NUL_MESSAGE = ("{path} contains a NUL character (\\x00), which PostgreSQL cannot store; "
                "remove it, or encode binary data (e.g. base64) before returning it")
_Scalar = (str, int, bool, type(None))


def _pydantic_base() -> type | None:
    module = sys.modules.get("pydantic")
    return getattr(module, "BaseModel", None) if module is not None else None


def to_json(value: Any, *, where: str = "value") -> JSONValue:
    """Turn ``value`` into JSON-compatible Python data.

    Raises:
        SerializationError: naming ``where`` and the path of the first value
            that has no JSON form.
    """
    return _encode(value, where)


def _encode(value: Any, path: str) -> JSONValue:
    if isinstance(value, _Scalar):
        if isinstance(value, enum.Enum):
            return _encode(value.value, path)
        if isinstance(value, str) and "\x00" in value:
            raise SerializationError(_NUL_MESSAGE.format(path=path))
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SerializationError(f"{path} is {value!r}, which JSON cannot store; "
                                     "use None or a finite number")
        return value
    if isinstance(value, enum.Enum):
        return _encode(value.value, path)
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise SerializationError(f"{path} is Decimal({str(value)!r}), which JSON cannot store")
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _encode(getattr(value, f.name), f"{path}.{f.name}")
                for f in dataclasses.fields(value)}
    base = _pydantic_base()
    if base is not None and isinstance(value, base):
        try:
            return value.model_dump(mode="json")  # type: ignore[attr-defined]
        except Exception as exc:  # pydantic raises its own error types
            raise SerializationError(f"{path}: pydantic could not dump {type(value).__name__}: {exc}") from exc
    if isinstance(value, dict):
        out: dict[str, JSONValue] = {}
        for key, item in value.items():
            out[_encode_key(key, path)] = _encode(item, f"{path}[{key!r}]")
        return out
    if isinstance(value, (list, tuple)):
        return [_encode(item, f"{path}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, (set, frozenset)):
        items = [_encode(item, f"{path}[{i}]") for i, item in enumerate(value)]
        try:
            return sorted(items)
        except TypeError:
            return items
    raise SerializationError(
        f"{path} is a {type(value).__module__}.{type(value).__qualname__}, which has no JSON form; "
        "return a dataclass, pydantic model, TypedDict, Enum, datetime, UUID, Decimal, "
        "primitive, or a list/dict of those"
    )


def _encode_key(key: Any, path: str) -> str:
    if isinstance(key, enum.Enum):
        key = key.value
    if isinstance(key, str):
        if "\x00" in key:
            raise SerializationError(_NUL_MESSAGE.format(path=f"a key of {path}"))
        return key
    if isinstance(key, (int, uuid.UUID)) and not isinstance(key, bool):
        return str(key)
    raise SerializationError(f"{path} has a key {key!r} of type {type(key).__name__}; "
                             "JSON object keys must be str, int, Enum or UUID")


def from_json(data: JSONValue, annotation: Any, *, where: str = "value") -> Any:
    """Decode JSON data produced by :func:`to_json` into ``annotation``.

    Raises:
        SerializationError: if the data does not fit the annotated type.
    """
    try:
        return _decode(data, annotation, where)
    except SerializationError:
        raise
    except (TypeError, ValueError, KeyError, InvalidOperation) as exc:
        raise SerializationError(f"{where}: cannot decode {_short(data)} as "
                                 f"{_type_name(annotation)}: {exc}") from exc


def _type_name(tp: Any) -> str:
    return getattr(tp, "__qualname__", None) or repr(tp)


def _short(data: Any) -> str:
    text = repr(data)
    return text if len(text) <= 80 else text[:77] + "..."


_NONE_TYPES = (type(None), None)


def _decode(data: Any, tp: Any, path: str) -> Any:
    if tp is Any or tp is object or tp is typing.Any:
        return data
    if tp in _NONE_TYPES:
        if data is not None:
            raise SerializationError(f"{path}: expected null, got {_short(data)}")
        return None
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _decode(data, typing.get_args(tp)[0], path)
    if origin is Union or (sys.version_info >= (3, 10) and origin is types.UnionType):
        return _decode_union(data, typing.get_args(tp), path)
    if origin is typing.Literal:
        if data not in typing.get_args(tp):
            raise SerializationError(f"{path}: {_short(data)} is not one of {typing.get_args(tp)}")
        return data
    if origin in (list, tuple, set, frozenset) or tp in (list, tuple, set, frozenset):
        return _decode_sequence(data, tp, origin or tp, path)
    if origin is dict or tp is dict:
        return _decode_mapping(data, tp, path)
    if origin is not None:
        # An abstract collection or a generic alias we do not model: keep the JSON.
        return data
    if not isinstance(tp, type):
        return data
    return _decode_class(data, tp, path)


def _decode_union(data: Any, arms: tuple[Any, ...], path: str) -> Any:
    if data is None and type(None) in arms:
        return None
    errors: list[str] = []
    for arm in arms:
        if arm is type(None):
            continue
        try:
            return _decode(data, arm, path)
        except (SerializationError, TypeError, ValueError, KeyError, InvalidOperation) as exc:
            errors.append(str(exc))
    raise SerializationError(f"{path}: {_short(data)} fits none of {arms}: {'; '.join(errors)}")


def _decode_sequence(data: Any, tp: Any, container: type, path: str) -> Any:
    if not isinstance(data, list):
        raise SerializationError(f"{path}: expected an array, got {_short(data)}")
    args = typing.get_args(tp)
    if container is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
        if len(args) != len(data):
            raise SerializationError(f"{path}: expected {len(args)} items, got {len(data)}")
        return tuple(_decode(item, arg, f"{path}[{i}]") for i, (item, arg) in enumerate(zip(data, args)))
    item_tp = args[0] if args else Any
    items = [_decode(item, item_tp, f"{path}[{i}]") for i, item in enumerate(data)]
    return items if container is list else container(items)


def _decode_mapping(data: Any, tp: Any, path: str) -> Any:
    if not isinstance(data, dict):
        raise SerializationError(f"{path}: expected an object, got {_short(data)}")
    args = typing.get_args(tp)
    key_tp, value_tp = args if args else (Any, Any)
    return {_decode_key(key, key_tp, path): _decode(value, value_tp, f"{path}[{key!r}]")
            for key, value in data.items()}


def _decode_key(key: str, tp: Any, path: str) -> Any:
    if tp in (str, Any):
        return key
    if tp is int:
        return int(key)
    if tp is uuid.UUID:
        return uuid.UUID(key)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        for member in tp:
            if str(member.value) == key:
                return member
        raise SerializationError(f"{path}: key {key!r} is no member of {tp.__qualname__}")
    return key


def _decode_class(data: Any, tp: type, path: str) -> Any:
    if tp is bool:
        if not isinstance(data, bool):
            raise SerializationError(f"{path}: expected a boolean, got {_short(data)}")
        return data
    if tp is int:
        if not isinstance(data, int) or isinstance(data, bool):
            raise SerializationError(f"{path}: expected an integer, got {_short(data)}")
        return data
    if tp is float:
        if not isinstance(data, (int, float)) or isinstance(data, bool):
            raise SerializationError(f"{path}: expected a number, got {_short(data)}")
        return float(data)
    if tp is str:
        if not isinstance(data, str):
            raise SerializationError(f"{path}: expected a string, got {_short(data)}")
        return data
    if issubclass(tp, enum.Enum):
        return tp(data)
    if issubclass(tp, dt.datetime):
        return dt.datetime.fromisoformat(data)
    if issubclass(tp, dt.date):
        return dt.date.fromisoformat(data)
    if issubclass(tp, dt.time):
        return dt.time.fromisoformat(data)
    if issubclass(tp, dt.timedelta):
        return dt.timedelta(seconds=data)
    if issubclass(tp, uuid.UUID):
        return uuid.UUID(data)
    if issubclass(tp, Decimal):
        return Decimal(str(data))
    if dataclasses.is_dataclass(tp):
        return _decode_dataclass(data, tp, path)
    if is_typeddict(tp):
        return _decode_typeddict(data, tp, path)
    base = _pydantic_base()
    if base is not None and issubclass(tp, base):
        try:
            return tp.model_validate(data)  # type: ignore[attr-defined]
        except Exception as exc:
            raise SerializationError(f"{path}: pydantic rejected {_short(data)} as {tp.__qualname__}: {exc}") from exc
    if tp in (list, dict, tuple, set, frozenset):
        return tp(data)
    if isinstance(data, tp):
        return data
    raise SerializationError(f"{path}: don't know how to decode {tp.__qualname__}; "
                             "annotate with a supported type")


def _hints(tp: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(tp)
    except Exception as exc:  # unresolved forward references
        raise SerializationError(f"cannot resolve the annotations of {tp.__qualname__}: {exc}") from exc


def _decode_dataclass(data: Any, tp: type, path: str) -> Any:
    if not isinstance(data, dict):
        raise SerializationError(f"{path}: expected an object for {tp.__qualname__}, got {_short(data)}")
    hints = _hints(tp)
    kwargs: dict[str, Any] = {}
    later: dict[str, Any] = {}
    for f in dataclasses.fields(tp):
        if f.name not in data:
            continue
        value = _decode(data[f.name], hints.get(f.name, Any), f"{path}.{f.name}")
        if f.init:
            kwargs[f.name] = value
        else:
            later[f.name] = value
    obj = tp(**kwargs)
    for name, value in later.items():
        object.__setattr__(obj, name, value)
    return obj


def _decode_typeddict(data: Any, tp: type, path: str) -> Any:
    if not isinstance(data, dict):
        raise SerializationError(f"{path}: expected an object for {tp.__qualname__}, got {_short(data)}")
    hints = _hints(tp)
    return {key: _decode(value, hints.get(key, Any), f"{path}.{key}") for key, value in data.items()}
