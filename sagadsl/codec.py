"""JSON encoding of saga inputs and step results, decoded back to their annotated types.

Values become plain JSON (objects, arrays, strings, numbers, booleans, null);
nothing is pickled, so reading a row never runs code. Supported: ``None``,
``bool``, ``int``, ``float`` (finite), ``str``, ``list``/``tuple`` (fixed and
variadic)/``set``/``frozenset``, ``dict`` (keys of ``str``, ``int``, ``Enum``,
``UUID`` or ``Literal``), dataclasses (also generic ones), pydantic v2 models,
``TypedDict``, ``NamedTuple``, ``Enum`` (``str``, ``int``, ``float`` or
``bool`` valued), ``datetime``, ``date``, ``time``, ``timedelta``, ``UUID``,
``Decimal``, ``Optional`` and ``Union`` of those whose JSON forms can be told
apart, ``Literal``, ``NewType`` and ``Annotated`` over those, and ``Any``.

The contract (DESIGN §2.10) is symmetry: for every annotation ``T`` that
:func:`check_storable` accepts and every value ``x`` of type ``T`` that
:func:`to_json` accepts, ``from_json(to_json(x), T) == x`` and has the same
type. ``Any`` (and ``object``) keep the JSON as it is, so under them only JSON
values (``None``, ``bool``, ``int``, ``float``, ``str``, ``list``, ``dict``
with ``str`` keys) come back as they went in.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import datetime as dt
import enum
import inspect
import math
import re
import sys
import types
import typing
import uuid
import weakref
from decimal import Decimal, InvalidOperation
from typing import Any, Union

from typing_extensions import is_typeddict

from .errors import SerializationError

__all__ = ["to_json", "from_json", "check_storable", "JSONValue"]

JSONValue = Any

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
# Python's json module reads no int longer than sys.get_int_max_str_digits()
# (4300 by default since 3.11); below this many bits an int is always shorter.
_SAFE_INT_BITS = 14_000

_NONE_TYPES = (type(None), None)
_DECODE_ERRORS = (SerializationError, TypeError, ValueError, KeyError, InvalidOperation, AttributeError)


def _pydantic_base() -> type | None:
    module = sys.modules.get("pydantic")
    return getattr(module, "BaseModel", None) if module is not None else None


# -- encoding -----------------------------------------------------------------------------


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
        return _encode(value, where)
    except RecursionError:
        raise SerializationError(f"{where} is nested too deeply or contains itself (a list, dict or "
                                 "dataclass that refers back to itself); JSON can store neither") from None


def _encode(value: Any, path: str) -> JSONValue:
    # Order matters: bool and IntEnum are ints, StrEnum is a str, datetime is a
    # date, a NamedTuple is a tuple.
    if value is None or value is True or value is False:
        return value
    if isinstance(value, enum.Enum):
        return _encode(value.value, path)
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
        return {f.name: _encode(getattr(value, f.name), f"{path}.{f.name}")
                for f in dataclasses.fields(value)}
    if isinstance(value, tuple) and _is_namedtuple(type(value)):
        # An object, not an array: a NamedTuple is a record, and its field
        # names keep the stored row readable and let it gain fields.
        fields: tuple[str, ...] = getattr(type(value), "_fields")
        return {name: _encode(getattr(value, name), f"{path}.{name}") for name in fields}
    base = _pydantic_base()
    if base is not None and isinstance(value, base):
        return _encode_pydantic(value, path)
    if isinstance(value, dict):
        out: dict[str, JSONValue] = {}
        originals: dict[str, Any] = {}
        for key, item in value.items():
            name = _encode_key(key, path)
            if name in originals:
                raise SerializationError(
                    f"{path} has the keys {originals[name]!r} and {key!r}, which are both stored as the "
                    f"JSON key {name!r}; give the dict keys of one type")
            originals[name] = key
            out[name] = _encode(item, f"{path}[{key!r}]")
        return out
    if isinstance(value, (list, tuple)):
        return [_encode(item, f"{path}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, (set, frozenset)):
        items = [_encode(item, f"{path}[{i}]") for i, item in enumerate(value)]
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
    if value.bit_length() > _SAFE_INT_BITS:
        try:
            str(value)
        except ValueError:
            raise SerializationError(
                f"{path} is an int of about {int(value.bit_length() * 0.30103)} digits, more than "
                "Python's JSON reader accepts (sys.get_int_max_str_digits()); store it as a str or "
                "Decimal") from None
    return value


def _check_float(value: float, path: str) -> float:
    if not math.isfinite(value):
        raise SerializationError(f"{path} is {value!r}, which JSON cannot store; "
                                 "use None or a finite number")
    return value


def _encode_key(key: Any, path: str) -> str:
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


# -- decoding -----------------------------------------------------------------------------


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
        return _decode(data, annotation, where)
    except SerializationError:
        raise
    except RecursionError:
        raise SerializationError(f"{where}: {_short(data)} is nested too deeply to decode") from None
    except (TypeError, ValueError, KeyError, InvalidOperation, AttributeError) as exc:
        raise SerializationError(f"{where}: cannot decode {_short(data)} as "
                                 f"{_type_name(annotation)}: {exc}") from exc


def _type_name(tp: Any) -> str:
    """A short, readable name of an annotation: ``list[Line]``, ``int | None``."""
    if tp is None or tp is type(None):
        return "None"
    if tp is Any:
        return "Any"
    if tp is Ellipsis:
        return "..."
    if isinstance(tp, list):  # the parameters of Callable[[int], str]
        return f"[{', '.join(_type_name(arg) for arg in tp)}]"
    if isinstance(tp, str):
        return repr(tp)
    if isinstance(tp, typing.ForwardRef):
        return repr(tp.__forward_arg__)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Union or origin is types.UnionType:
        return " | ".join(_type_name(arg) for arg in args)
    if origin is typing.Literal:
        return f"Literal[{', '.join(repr(arg) for arg in args)}]"
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is not None:
        name = getattr(origin, "__qualname__", None) or repr(origin)
        return f"{name}[{', '.join(_type_name(arg) for arg in args)}]" if args else name
    name = getattr(tp, "__qualname__", None) or getattr(tp, "__name__", None)
    return str(name) if name else repr(tp)


def _short(data: Any) -> str:
    text = repr(data)
    return text if len(text) <= 80 else text[:77] + "..."


def _unwrap(tp: Any) -> Any:
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


def _decode(data: Any, tp: Any, path: str) -> Any:
    tp = _unwrap(tp)
    if tp is Any or tp is object:
        return data
    if tp in _NONE_TYPES:
        if data is not None:
            raise SerializationError(f"{path}: expected null, got {_short(data)}")
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
        if isinstance(origin, type) and _is_record(origin):
            return _decode_record(data, origin, path, _type_arguments(origin, typing.get_args(tp)))
        raise SerializationError(f"{path}: don't know how to decode {_type_name(tp)}; "
                                 "annotate with a supported type")
    if isinstance(tp, (str, typing.ForwardRef)):
        raise SerializationError(f"{path}: the annotation {_type_name(tp)} is an unresolved forward "
                                 "reference; define the type before the saga class")
    if not isinstance(tp, type):
        raise SerializationError(f"{path}: don't know how to decode {_type_name(tp)}; "
                                 "annotate with a supported type")
    return _decode_class(data, tp, path)


def _same_json(a: Any, b: Any) -> bool:
    """Whether two JSON values are the same, telling ``1``, ``1.0`` and ``True`` apart."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_same_json(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_json(item, b[key]) for key, item in a.items())
    return bool(a == b)


def _is_any(tp: Any) -> bool:
    tp = _unwrap(tp)
    return tp is Any or tp is object


def _decode_union(data: Any, arms: tuple[Any, ...], path: str) -> Any:
    if data is None and type(None) in arms:
        return None
    # Arms that take any JSON are tried last, whatever their place in the union.
    candidates = sorted((arm for arm in arms if arm is not type(None)), key=_is_any)
    if len(candidates) == 1:
        return _decode(data, candidates[0], path)
    # The arm whose encoding gives back exactly this data is the one the value
    # came from: "2030-01-01" is a date even if datetime is tried first.
    # check_storable refuses unions in which two arms can give the same data.
    errors: list[str] = []
    fits: list[Any] = []
    for arm in candidates:
        try:
            value = _decode(data, arm, path)
        except _DECODE_ERRORS as exc:
            errors.append(str(exc))
            continue
        try:
            if _same_json(_encode(value, path), data):
                return value
        except SerializationError:
            pass
        fits.append(value)
    if fits:
        # No exact match: a row written by older code, or a number a database
        # gave back as an int (PostgreSQL's JSONB reads 1e16 as 10000000000000000).
        return fits[0]
    raise SerializationError(f"{path}: {_short(data)} fits none of {_type_name(Union[arms])}: "
                             f"{'; '.join(errors)}")


def _decode_literal(data: Any, args: tuple[Any, ...], path: str) -> Any:
    for arg in args:
        try:
            if _same_json(_encode(arg, path), data):
                return arg
        except SerializationError:
            continue
    raise SerializationError(f"{path}: {_short(data)} is not one of {args}")


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
    tp = _unwrap(tp)
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
            if _encode_key(choice, path) == key:
                return choice
        if isinstance(tp, type) and issubclass(tp, enum.Flag):
            return tp(int(key))  # a combination of flags
        raise SerializationError(f"{path}: key {key!r} is none of {_type_name(tp)}")
    raise SerializationError(f"{path}: dict keys of type {_type_name(tp)} cannot be decoded; "
                             "use str, int, Enum, UUID or Literal keys")


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
    if issubclass(tp, (dt.datetime, dt.date, dt.time)):
        if not isinstance(data, str):
            raise SerializationError(f"{path}: expected an ISO 8601 string, got {_short(data)}")
        return _from_isoformat(tp, data)
    if issubclass(tp, dt.timedelta):
        return _parse_duration(data)
    if issubclass(tp, uuid.UUID):
        if not isinstance(data, str):
            raise SerializationError(f"{path}: expected a UUID string, got {_short(data)}")
        return tp(data)
    if issubclass(tp, Decimal):
        if isinstance(data, bool) or not isinstance(data, (str, int, float)):
            raise SerializationError(f"{path}: expected a decimal string, got {_short(data)}")
        return tp(str(data))
    if _is_record(tp):
        return _decode_record(data, tp, path, {})
    base = _pydantic_base()
    if base is not None and issubclass(tp, base):
        try:
            return tp.model_validate(data)  # type: ignore[attr-defined]
        except Exception as exc:
            raise SerializationError(
                f"{path}: pydantic rejected {_short(data)} as {tp.__qualname__}: {exc}") from exc
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


def _is_namedtuple(tp: type) -> bool:
    return issubclass(tp, tuple) and isinstance(getattr(tp, "_fields", None), tuple)


def _is_record(tp: type) -> bool:
    """Dataclasses, TypedDicts and NamedTuples: objects whose fields the codec decodes."""
    return dataclasses.is_dataclass(tp) or is_typeddict(tp) or _is_namedtuple(tp)


def _type_arguments(origin: type, args: tuple[Any, ...]) -> dict[Any, Any]:
    """``{T: int}`` for ``Box[int]`` of a generic ``Box[T]``."""
    params = getattr(origin, "__parameters__", ())
    return dict(zip(params, args))


def _substitute(hint: Any, bound: dict[Any, Any]) -> Any:
    if not bound:
        return hint
    if isinstance(hint, typing.TypeVar):
        return bound.get(hint, hint)
    params = getattr(hint, "__parameters__", ())
    if params and typing.get_origin(hint) is not None:
        return hint[tuple(bound.get(p, p) for p in params)]
    return hint


_hint_cache: weakref.WeakKeyDictionary[type, dict[str, Any]] = weakref.WeakKeyDictionary()


def _hints(tp: type) -> dict[str, Any]:
    hints = _hint_cache.get(tp)
    if hints is None:
        try:
            hints = typing.get_type_hints(tp)
        except Exception as exc:  # unresolved forward references; not cached, they may resolve later
            raise SerializationError(f"cannot resolve the annotations of {tp.__qualname__}: {exc}") from exc
        _hint_cache[tp] = hints
    return hints


def _decode_record(data: Any, tp: type, path: str, bound: dict[Any, Any]) -> Any:
    if _is_namedtuple(tp) and isinstance(data, list):
        # Rows written when NamedTuples were stored as arrays.
        data = dict(zip(tp._fields, data))  # type: ignore[attr-defined]
    if not isinstance(data, dict):
        raise SerializationError(f"{path}: expected an object for {tp.__qualname__}, got {_short(data)}")
    hints = _hints(tp)

    def field(name: str) -> Any:
        return _decode(data[name], _substitute(hints.get(name, Any), bound), f"{path}.{name}")

    if is_typeddict(tp):
        return {key: field(key) for key in data}
    if _is_namedtuple(tp):
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


# -- checking annotations -----------------------------------------------------------------


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
    text = f"{where} is {_type_name(annotation)}"
    # Name the fields on the way down and the offending part; items and arms
    # in between can be read off the type itself.
    for i, (location, part) in enumerate(links):
        if location.startswith("field ") or i == len(links) - 1:
            text += (f", which includes {_type_name(part)}" if location == "arm"
                     else f", whose {location} is {_type_name(part)}")
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
        tp = _unwrap(_substitute(tp, bound or {}))
        if tp is Any or tp is object or tp in _NONE_TYPES:
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
            clash = _union_clash(args)
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
            if isinstance(origin, type) and _is_record(origin):
                return self._record(origin, _type_arguments(origin, args))
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
        if _is_record(tp):
            return self._record(tp, {})
        base = _pydantic_base()
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
            hints = _hints(tp)
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
        elif _is_namedtuple(tp):
            names = list(tp._fields)  # type: ignore[attr-defined]
        else:
            names = list(hints)
        for name in names:
            found = self._nested(_substitute(hints.get(name, Any), bound), f"field {tp.__qualname__}.{name}")
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
    tp = _unwrap(tp)
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
                name = _encode_key(choice, "key")
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


# -- telling union arms apart -------------------------------------------------------------

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
    tp = _unwrap(tp)
    if tp is Any or tp is object:
        return [("any",)]
    if tp in _NONE_TYPES:
        return [("null",)]
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Union or origin is types.UnionType:
        return [form for arm in args for form in _forms(arm)]
    if origin is typing.Literal:
        return [("const", _encode(arg, "literal"), not isinstance(arg, enum.Enum), repr(arg)) for arg in args]
    if origin in (list, tuple, set, frozenset) or tp in (list, tuple, set, frozenset):
        return [("array",)]
    if origin is dict or tp is dict:
        return [("object", None, {})]
    if origin is not None and isinstance(origin, type) and _is_record(origin):
        return _forms(origin)
    if not isinstance(tp, type):
        return []
    for simple in (bool, int, float, str):
        if tp is simple:
            return [(simple.__name__,)]
    if issubclass(tp, enum.Flag):
        return [("flag", tp)]  # combinations of flags are values too: any int may be one
    if issubclass(tp, enum.Enum):
        return [("const", _encode(m.value, "member"), False, f"{tp.__qualname__}.{m.name}") for m in tp]
    for text in _TEXT_TYPES:  # datetime before date
        if issubclass(tp, text):
            return [("text", text)]
    if is_typeddict(tp):
        return [("object", None, {})]
    if dataclasses.is_dataclass(tp) or _is_namedtuple(tp):
        names = ([f.name for f in dataclasses.fields(tp)] if dataclasses.is_dataclass(tp)
                 else list(tp._fields))  # type: ignore[attr-defined]
        try:
            hints = _hints(tp)
        except SerializationError:
            hints = {}
        return [("object", frozenset(names), _const_fields(hints, names))]
    base = _pydantic_base()
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


def _union_clash(arms: tuple[Any, ...]) -> str | None:
    """Why two arms of a union cannot be told apart in JSON (a "which ..." text), or None."""
    distinct: list[Any] = []
    for arm in arms:  # Card and Annotated[Card, ...] are one arm
        if all(_unwrap(arm) != _unwrap(other) for other in distinct):
            distinct.append(arm)
    per_arm = [(arm, _forms(arm)) for arm in distinct]
    for i, (arm_a, forms_a) in enumerate(per_arm):
        for arm_b, forms_b in per_arm[i + 1:]:
            for a in forms_a:
                for b in forms_b:
                    found = _clash(a, b) or _clash(b, a)
                    if found:
                        why, fix = found
                        return (f"cannot be decoded unambiguously: {_type_name(arm_a)} and "
                                f"{_type_name(arm_b)} {why}; "
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
            if _same_json(value, b[1]) and a[3] != b[3] and not (plain and b[2]):
                return f"have {a[3]} and {b[3]}, both stored as {_short(value)}", None
            return None
        if kind_b == "text" and isinstance(value, str):
            try:
                if _same_json(_encode(_decode_class(value, b[1], "value"), "value"), value):
                    return (f"have {a[3]}, stored as {_short(value)}, which is also a {b[1].__qualname__}",
                            None)
            except _DECODE_ERRORS:
                return None
            return None
        simple = {bool: "bool", int: "int", float: "float", str: "str", type(None): "null"}.get(type(value))
        if not plain and simple == kind_b:
            return f"have {a[3]}, stored as {_short(value)} like a plain {kind_b}", None
        return None
    if kind_a == "object" and kind_b == "object":
        keys_a, keys_b = a[1], b[1]
        if keys_a is None or keys_b is None:
            return "are both stored as JSON objects, and one of them takes any keys", None
        if keys_a != keys_b:
            return None
        for key, values in a[2].items():
            others = b[2].get(key)
            if others is not None and not any(_same_json(x, y) for x in values for y in others):
                return None  # a discriminating field
        return f"are both stored as JSON objects with the keys {', '.join(sorted(keys_a))}", None
    return None
