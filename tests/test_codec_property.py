"""Every value the codec accepts decodes back to itself (DESIGN §2.10), for any supported type.

Hypothesis draws an annotation (built recursively: dataclasses, NamedTuples,
TypedDicts, pydantic models, generic aliases, unions, optionals, enums,
literals, datetimes, decimals, UUIDs, ...) and then a value of it. Either
:func:`check_storable` refuses the annotation, or the value survives
``to_json`` → JSON text → ``from_json`` equal to itself, with every part of
the same type as before.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import enum
import itertools
import json
import math
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any, Generic, Literal, NamedTuple, NewType, Optional, TypeVar, Union

import pydantic
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from typing_extensions import TypedDict

from sagadsl import SerializationError, from_json, to_json
from sagadsl.codec import check_storable

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Tone(str, enum.Enum):
    WARM = "warm"
    COLD = "cold"


class Mixed(enum.Enum):
    ONE = 1
    TWO = "2"
    HALF = 0.5


class Perm(enum.IntFlag):
    READ = 1
    WRITE = 2


T = TypeVar("T")


@dataclass
class Box(Generic[T]):
    item: T
    items: list[T]


Cents = NewType("Cents", int)


@dataclass(frozen=True)
class Case:
    """An annotation and a strategy for its values."""

    annotation: Any
    values: st.SearchStrategy[Any]
    hashable: bool = False
    #: Usable as a dict key type.
    key: bool = False


#: Text any backend stores: no NUL, no lone surrogates (refused; tested below).
TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"))
#: Every backend stores 64-bit ints exactly; wider ones are refused.
INTS = st.integers(-(2**63), 2**63 - 1)


def _json_values() -> st.SearchStrategy[Any]:
    scalars = st.none() | st.booleans() | INTS | st.floats(allow_nan=False, allow_infinity=False) | TEXT
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                        | st.dictionaries(TEXT, inner, max_size=3), max_leaves=6)


_OFFSETS = st.timedeltas(min_value=-dt.timedelta(hours=23, minutes=59), max_value=dt.timedelta(hours=23, minutes=59))
_ZONES = st.none() | _OFFSETS.map(dt.timezone)

LEAVES = [
    Case(type(None), st.none(), hashable=True),
    Case(bool, st.booleans(), hashable=True),
    Case(int, INTS, hashable=True, key=True),
    Case(float, st.floats(allow_nan=False, allow_infinity=False), hashable=True),
    Case(str, TEXT, hashable=True, key=True),
    Case(Decimal, st.decimals(allow_nan=False, allow_infinity=False)
         | st.sampled_from([Decimal("1E+2"), Decimal("-0"), Decimal("0E-7"),
                            Decimal("3.141592653589793238462643383279502884197")]), hashable=True),
    Case(uuid.UUID, st.uuids(), hashable=True, key=True),
    Case(dt.datetime, st.datetimes(timezones=_ZONES), hashable=True),
    Case(dt.date, st.dates(), hashable=True),
    Case(dt.time, st.times(timezones=_ZONES), hashable=True),
    Case(dt.timedelta, st.timedeltas(), hashable=True),
    Case(Color, st.sampled_from(Color), hashable=True, key=True),
    Case(Level, st.sampled_from(Level), hashable=True, key=True),
    Case(Tone, st.sampled_from(Tone), hashable=True, key=True),
    Case(Mixed, st.sampled_from(Mixed), hashable=True),
    Case(Perm, st.sampled_from([Perm.READ, Perm.WRITE, Perm.READ | Perm.WRITE]), hashable=True, key=True),
    Case(Literal["a", "b"], st.sampled_from(["a", "b"]), hashable=True, key=True),
    Case(Literal[1, True, None, Color.RED], st.sampled_from([1, True, None, Color.RED]), hashable=True),
    Case(Cents, INTS.map(Cents), hashable=True, key=True),
    Case(Annotated[str, "note"], TEXT, hashable=True, key=True),
    Case(Any, _json_values()),
]

_names = itertools.count()


def _name(prefix: str) -> str:
    return f"{prefix}{next(_names)}"


def list_of(c: Case) -> Case:
    return Case(list[c.annotation], st.lists(c.values, max_size=3))


def variadic_tuple_of(c: Case) -> Case:
    return Case(tuple[c.annotation, ...], st.lists(c.values, max_size=3).map(tuple), hashable=c.hashable)


def fixed_tuple_of(cs: list[Case]) -> Case:
    return Case(tuple[tuple(c.annotation for c in cs)], st.tuples(*(c.values for c in cs)),
                hashable=all(c.hashable for c in cs))


def set_of(c: Case, frozen: bool) -> Case:
    if not c.hashable:
        return list_of(c)
    values = st.frozensets(c.values, max_size=3)
    if frozen:
        return Case(frozenset[c.annotation], values, hashable=True)
    return Case(set[c.annotation], values.map(set))


def dict_of(key: Case, value: Case) -> Case:
    if not key.key:
        key = LEAVES[4]  # str
    return Case(dict[key.annotation, value.annotation], st.dictionaries(key.values, value.values, max_size=3))


def optional_of(c: Case) -> Case:
    return Case(Optional[c.annotation], st.none() | c.values, hashable=c.hashable)


def union_of(cs: list[Case]) -> Case:
    return Case(Union[tuple(c.annotation for c in cs)], st.one_of(*(c.values for c in cs)),
                hashable=all(c.hashable for c in cs))


def generic_box_of(c: Case) -> Case:
    return Case(Box[c.annotation], st.builds(Box, c.values, st.lists(c.values, max_size=2)))


@st.composite
def dataclass_of(draw: st.DrawFn, children: st.SearchStrategy[Case]) -> Case:
    cs = draw(st.lists(children, min_size=1, max_size=4))
    frozen = draw(st.booleans())
    with_default = draw(st.booleans())
    specs: list[Any] = [(f"f{i}", c.annotation) for i, c in enumerate(cs)]
    if with_default:
        default = draw(cs[-1].values)
        specs[-1] = (f"f{len(cs) - 1}", cs[-1].annotation,
                     dataclasses.field(default_factory=lambda: copy.deepcopy(default)))
    specs.append(("hidden", int, dataclasses.field(init=False, default=0)))
    cls = dataclasses.make_dataclass(_name("Record"), specs, frozen=frozen)
    required = cs[:-1] if with_default else cs
    build = st.builds(cls, *(c.values for c in required))
    if with_default:
        build = st.builds(cls, *(c.values for c in required), cs[-1].values) | build

    def hide(pair: tuple[Any, int]) -> Any:
        obj, hidden = pair
        object.__setattr__(obj, "hidden", hidden)
        return obj

    return Case(cls, st.tuples(build, INTS).map(hide))


def namedtuple_of(cs: list[Case]) -> Case:
    cls = NamedTuple(_name("Row"), [(f"f{i}", c.annotation) for i, c in enumerate(cs)])  # type: ignore[misc]
    return Case(cls, st.builds(cls, *(c.values for c in cs)), hashable=all(c.hashable for c in cs))


def typeddict_of(cs: list[Case], total: bool) -> Case:
    fields = {f"f{i}": c.annotation for i, c in enumerate(cs)}
    cls = TypedDict(_name("Doc"), fields, total=total)  # type: ignore[operator]
    strategies = {f"f{i}": c.values for i, c in enumerate(cs)}
    values = st.fixed_dictionaries(strategies) if total else st.fixed_dictionaries({}, optional=strategies)
    return Case(cls, values)


# Pydantic dumps only whole minutes of a UTC offset (to_json refuses the rest).
_MINUTE_ZONES = st.none() | st.integers(-23 * 60 - 59, 23 * 60 + 59).map(
    lambda minutes: dt.timezone(dt.timedelta(minutes=minutes)))
_PYDANTIC_LEAVES = [c for c in LEAVES if c.annotation in (bool, int, str, Decimal, uuid.UUID, dt.date,
                                                          dt.timedelta, Color, Level)]
_PYDANTIC_LEAVES.append(Case(dt.datetime, st.datetimes(timezones=_MINUTE_ZONES), hashable=True))


@st.composite
def pydantic_model(draw: st.DrawFn) -> Case:
    """A pydantic model over plain fields (some aliased): pydantic itself rebuilds what is inside."""
    cs = draw(st.lists(st.sampled_from(_PYDANTIC_LEAVES), min_size=1, max_size=4))
    aliased = draw(st.booleans())
    fields: dict[str, Any] = {
        f"f{i}": (c.annotation, pydantic.Field(alias=f"F{i}") if aliased else ...) for i, c in enumerate(cs)}
    model = pydantic.create_model(_name("Model"), **fields)
    key = "F" if aliased else "f"
    values = st.fixed_dictionaries({f"{key}{i}": c.values for i, c in enumerate(cs)}).map(
        lambda data: model.model_validate(data))
    return Case(model, values)


def extend(children: st.SearchStrategy[Case]) -> st.SearchStrategy[Case]:
    some = st.lists(children, min_size=1, max_size=3)
    return st.one_of(
        children.map(list_of),
        children.map(variadic_tuple_of),
        some.map(fixed_tuple_of),
        st.builds(set_of, children, st.booleans()),
        st.builds(dict_of, children, children),
        children.map(optional_of),
        st.lists(children, min_size=2, max_size=3).map(union_of),
        children.map(generic_box_of),
        dataclass_of(children),
        some.map(namedtuple_of),
        st.builds(typeddict_of, some, st.booleans()),
    )


CASES = st.recursive(st.sampled_from(LEAVES) | pydantic_model(), extend, max_leaves=8)


def same(a: Any, b: Any) -> bool:
    """Equal, and every part of the same type (``1`` is not ``1.0``, ``Decimal('1.0')`` not ``'1'``)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, Decimal):
        return str(a) == str(b)
    if isinstance(a, (dt.datetime, dt.time)):
        return a == b and a.isoformat() == b.isoformat()
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return len(a) == len(b) and all(
            any(same(key, other) and same(item, b[other]) for other in b if other == key)
            for key, item in a.items())
    if isinstance(a, (set, frozenset)):
        return a == b and all(any(same(x, y) for y in b if y == x) for x in a)
    if dataclasses.is_dataclass(a):
        return all(same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    if isinstance(a, pydantic.BaseModel):
        return a == b and same(dict(a), dict(b))
    return bool(a == b)


def through_storage(value: Any, annotation: Any) -> Any:
    """Encode, write as JSON text (as every backend keeps it), read back, decode."""
    text = json.dumps(to_json(value, where="value"), allow_nan=False)
    return from_json(json.loads(text), annotation, where="value")


@SETTINGS
@given(st.data())
def test_every_storable_value_comes_back_equal_and_of_the_same_type(data: st.DataObject) -> None:
    case = data.draw(CASES, label="case")
    try:
        check_storable(case.annotation, where="the annotation")
    except SerializationError as exc:
        event("refused by check_storable")
        assert str(exc).startswith("the annotation is ")
        return
    value = data.draw(case.values, label="value")
    decoded = through_storage(value, case.annotation)
    assert same(decoded, value), f"{value!r} came back as {decoded!r}"


_FINE_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=5)
#: Unions are where the decoder must choose: draw many, of leaves and small records.
UNIONS = st.lists(st.recursive(st.sampled_from(LEAVES), extend, max_leaves=2), min_size=2, max_size=4).map(union_of)


@SETTINGS
@given(st.data())
def test_a_union_that_is_storable_decodes_each_value_to_the_arm_it_came_from(data: st.DataObject) -> None:
    case = data.draw(UNIONS, label="case")
    try:
        check_storable(case.annotation, where="the annotation")
    except SerializationError as exc:
        event("refused by check_storable")
        assert "cannot be decoded unambiguously" in str(exc) or "which includes" in str(exc)
        return
    value = data.draw(case.values, label="value")
    decoded = through_storage(value, case.annotation)
    assert same(decoded, value), f"{value!r} came back as {decoded!r}"


_BAD_CHARS = st.sampled_from(["\x00", "\ud800", "\udbff", "\udc00", "\udfff"])


@SETTINGS
@given(_FINE_TEXT, _BAD_CHARS, _FINE_TEXT, st.sampled_from(["value", "key", "field"]))
def test_text_a_database_cannot_store_is_refused_wherever_it_sits(
        before: str, bad: str, after: str, place: str) -> None:
    text = before + bad + after
    value: Any = {"value": [text], "key": {text: 1}, "field": Box(text, [])}[place]
    try:
        to_json(value)
    except SerializationError as exc:
        assert ("NUL character" if bad == "\x00" else "lone surrogate") in str(exc)
    else:
        raise AssertionError(f"{value!r} was accepted")

