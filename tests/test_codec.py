"""Inputs and results as JSON, decoded back to their annotated types (DESIGN §2.8)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import (Annotated, Any, Callable, Generic, Literal, NamedTuple, NewType, Optional, Sequence,
                    TypedDict, TypeVar, Union)

import pytest
from sqlalchemy import create_engine, text

from sagadsl import Saga, SagaEngine, SerializationError, from_json, step, to_json
from sagadsl.codec import check_storable

from .conftest import require_postgres


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Priority(enum.IntEnum):
    LOW = 1
    HIGH = 2


@dataclass
class Line:
    sku: str
    price: Decimal
    tags: list[str] = field(default_factory=list)


@dataclass
class Invoice:
    id: uuid.UUID
    issued: dt.datetime
    due: dt.date
    lines: list[Line]
    color: Color
    priority: Priority
    note: Optional[str] = None
    extra: dict[str, int] = field(default_factory=dict)


class Address(TypedDict):
    street: str
    zip: int


INVOICE = Invoice(
    id=uuid.UUID("00000000-0000-0000-0000-0000000000aa"),
    issued=dt.datetime(2030, 3, 4, 5, 6, 7, 890123, tzinfo=dt.timezone(dt.timedelta(hours=2))),
    due=dt.date(2030, 4, 1),
    lines=[Line("a", Decimal("0.10"), ["x"]), Line("b", Decimal("1E+3"))],
    color=Color.BLUE,
    priority=Priority.HIGH,
    extra={"n": 3},
)


def roundtrip(value: Any, annotation: Any) -> Any:
    # Through real JSON text, as the storage keeps it.
    return from_json(json.loads(json.dumps(to_json(value))), annotation)


@pytest.mark.parametrize(("value", "annotation"), [
    (INVOICE, Invoice),
    (Decimal("12.3400"), Decimal),
    (uuid.UUID(int=5), uuid.UUID),
    (dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc), dt.datetime),
    (dt.date(2030, 1, 1), dt.date),
    (dt.time(12, 30, 1), dt.time),
    (dt.timedelta(hours=1, microseconds=5), dt.timedelta),
    (Color.RED, Color),
    (Priority.LOW, Priority),
    ({"street": "Main", "zip": 12345}, Address),
    ([Line("a", Decimal("1"))], list[Line]),
    ({Color.RED: [1, 2]}, dict[Color, list[int]]),
    ({uuid.UUID(int=1): Decimal("2")}, dict[uuid.UUID, Decimal]),
    ((1, "a", Decimal("3")), tuple[int, str, Decimal]),
    (frozenset({1, 2}), frozenset[int]),
    (None, Optional[Invoice]),
    (INVOICE, Optional[Invoice]),
    (Decimal("5"), Union[int, Decimal]),
    ("blue", Literal["red", "blue"]),
    ({"any": [1, "x", None]}, Any),
    (True, bool), (7, int), (1.5, float), ("s", str),
])
def test_values_round_trip_to_their_annotated_type(value: Any, annotation: Any) -> None:
    decoded = roundtrip(value, annotation)

    assert decoded == value
    assert type(decoded) is type(value)


def test_nested_values_keep_their_types() -> None:
    decoded = roundtrip(INVOICE, Invoice)

    assert isinstance(decoded.lines[0], Line) and type(decoded.lines[0].price) is Decimal
    assert decoded.issued.utcoffset() == dt.timedelta(hours=2)
    assert decoded.color is Color.BLUE and decoded.priority is Priority.HIGH


def test_encoding_is_plain_json() -> None:
    assert to_json(INVOICE) == {
        "id": "00000000-0000-0000-0000-0000000000aa",
        "issued": "2030-03-04T05:06:07.890123+02:00",
        "due": "2030-04-01",
        "lines": [{"sku": "a", "price": "0.10", "tags": ["x"]}, {"sku": "b", "price": "1E+3", "tags": []}],
        "color": "blue",
        "priority": 2,
        "note": None,
        "extra": {"n": 3},
    }


def test_pydantic_models_round_trip() -> None:
    pydantic = pytest.importorskip("pydantic")

    class Customer(pydantic.BaseModel):  # type: ignore[name-defined,misc]
        name: str
        joined: dt.date

    value = Customer(name="Ada", joined=dt.date(2030, 1, 1))

    assert to_json(value) == {"name": "Ada", "joined": "2030-01-01"}
    assert roundtrip(value, Customer) == value


class Opaque:
    pass


@pytest.mark.parametrize(("value", "message"), [
    (Opaque(), "value is a tests.test_codec.Opaque, which has no JSON form; return a dataclass, "
               "pydantic model, TypedDict, Enum, datetime, UUID, Decimal, primitive, or a list/dict of those"),
    ({"k": [1, {2}, lambda: 0]}, "value['k'][2] is a builtins.function, which has no JSON form"),
    (float("nan"), "value is nan, which JSON cannot store; use None or a finite number"),
    (Decimal("Infinity"), "value is Decimal('Infinity'), which JSON cannot store"),
    ({(1, 2): "tuple key"}, "value has a key (1, 2) of type tuple; JSON object keys must be str, int, "
                            "Enum or UUID"),
])
def test_values_without_a_json_form_are_refused(value: Any, message: str) -> None:
    with pytest.raises(SerializationError) as info:
        to_json(value)

    assert str(info.value).startswith(message)


@pytest.mark.parametrize(("data", "annotation", "message"), [
    ("12", int, "value: expected an integer, got '12'"),
    ({"sku": "a"}, Line, "value: cannot decode {'sku': 'a'} as Line: "),
    ("green", Color, "value: cannot decode 'green' as Color: 'green' is not a valid Color"),
    ([1, 2], tuple[int, int, int], "value: expected 3 items, got 2"),
    ("x", Literal["a", "b"], "value: 'x' is not one of ('a', 'b')"),
    ({"__class__": "os.system"}, Opaque, "value: don't know how to decode Opaque"),
])
def test_data_that_does_not_fit_the_type_is_refused(data: Any, annotation: Any, message: str) -> None:
    with pytest.raises(SerializationError) as info:
        from_json(data, annotation)

    assert str(info.value).startswith(message)


@dataclass
class Quote:
    quote_id: str


class Pricing(Saga[Quote], name="tests.codec.pricing"):
    @step(idempotency_key="price-{quote_id}")
    def price(self) -> Invoice:
        return INVOICE

    @step(idempotency_key="total-{quote_id}")
    def total(self, price: Invoice) -> Decimal:
        return sum((line.price for line in price.lines), Decimal(0))


def test_stored_results_are_json_and_come_back_typed(engine: SagaEngine) -> None:
    first = engine.run(Pricing, Quote("q1"), saga_id="q1", idempotency_key="k1")
    stored = engine.run(Pricing, Quote("q1"), saga_id="q1", idempotency_key="k1")  # from the rows

    record = engine.get("q1")
    assert record is not None
    assert record.input == {"quote_id": "q1"}
    assert record.steps[1].result == "1000.10"
    assert stored.results == first.results == {"price": INVOICE, "total": Decimal("1000.10")}
    assert type(stored.results["total"]) is Decimal


# -- symmetry: what to_json accepts comes back equal and of the same type (DESIGN §2.10) ----


class Point(NamedTuple):
    x: int
    label: str = "origin"


@dataclass
class Card:
    last4: str


@dataclass
class Transfer:
    iban: str


@dataclass
class Refund:
    kind: Literal["refund"]
    cents: int


@dataclass
class Charge:
    kind: Literal["charge"]
    cents: int


T = TypeVar("T")


@dataclass
class Page(Generic[T]):
    items: list[T]
    next: Optional[str] = None


@dataclass(frozen=True)
class Frozen:
    a: int
    b: int = field(init=False, default=0)


UserId = NewType("UserId", int)


class Access(enum.IntFlag):
    READ = 1
    WRITE = 2


def test_a_namedtuple_is_stored_as_an_object_and_comes_back_as_itself() -> None:
    assert to_json(Point(1, "a")) == {"x": 1, "label": "a"}
    decoded = roundtrip(Point(1, "a"), Point)

    assert decoded == Point(1, "a") and type(decoded) is Point


def test_a_namedtuple_stored_as_an_array_by_older_versions_still_decodes() -> None:
    assert from_json([3, "b"], Point) == Point(3, "b")


@pytest.mark.parametrize(("value", "annotation"), [
    (dt.date(2030, 1, 1), Union[dt.datetime, dt.date]),
    (dt.datetime(2030, 1, 1), Union[dt.date, dt.datetime]),
    (1, Union[bool, int]),
    (True, Union[int, bool]),
    (1.0, Union[str, float]),
    (Card("4242"), Union[Transfer, Card]),
    (Charge("charge", 5), Union[Refund, Charge]),
    (Color.RED, Literal[Color.BLUE, Color.RED]),
    (dt.timedelta(seconds=3), Union[float, dt.timedelta]),
])
def test_a_union_decodes_to_the_arm_the_value_came_from(value: Any, annotation: Any) -> None:
    decoded = roundtrip(value, annotation)

    assert decoded == value and type(decoded) is type(value)


@pytest.mark.parametrize("value", [
    dt.timedelta.max, dt.timedelta.min, dt.timedelta(microseconds=-1),
    dt.timedelta(days=999_999, microseconds=1), dt.timedelta(0), dt.timedelta(hours=1, seconds=2.5),
])
def test_a_timedelta_comes_back_to_the_microsecond(value: dt.timedelta) -> None:
    assert roundtrip(value, dt.timedelta) == value


def test_a_timedelta_is_stored_as_an_iso_8601_duration() -> None:
    assert to_json(dt.timedelta(days=1, hours=2, minutes=3, seconds=4, microseconds=500)) == "P1DT2H3M4.0005S"
    assert to_json(-dt.timedelta(minutes=1)) == "-PT1M"


def test_a_timedelta_stored_as_seconds_by_older_versions_still_decodes() -> None:
    assert from_json(3600.5, dt.timedelta) == dt.timedelta(hours=1, milliseconds=500)


@pytest.mark.parametrize("value", [Decimal("1E+2"), Decimal("-0"), Decimal("3.14159265358979323846264338327950288"),
                                   Decimal("0E-30")])
def test_a_decimal_keeps_its_exact_digits_and_sign(value: Decimal) -> None:
    decoded = roundtrip(value, Decimal)

    assert str(decoded) == str(value)


@pytest.mark.parametrize("offset", [dt.timedelta(microseconds=1), dt.timedelta(microseconds=-250),
                                    dt.timedelta(seconds=30), dt.timedelta(hours=-5, minutes=-30)])
def test_an_aware_datetime_keeps_its_exact_utc_offset(offset: dt.timedelta) -> None:
    value = dt.datetime(2030, 1, 1, 12, tzinfo=dt.timezone(offset))

    decoded = roundtrip(value, dt.datetime)

    assert decoded == value and decoded.utcoffset() == offset


def test_a_generic_dataclass_decodes_its_type_argument() -> None:
    value = Page([Card("1"), Card("2")], next="p2")

    assert roundtrip(value, Page[Card]) == value


def test_a_frozen_dataclass_with_an_init_false_field_comes_back() -> None:
    value = Frozen(1)
    object.__setattr__(value, "b", 7)

    assert roundtrip(value, Frozen) == value and roundtrip(value, Frozen).b == 7


@pytest.mark.parametrize(("value", "annotation"), [
    (UserId(5), UserId),
    (5, Annotated[int, "cents"]),
    ({"a": 1}, dict[Literal["a", "b"], int]),
    ({Priority.LOW: "x"}, dict[Priority, str]),
    ({Access.READ | Access.WRITE: "rw"}, dict[Access, str]),
])
def test_newtype_annotated_and_literal_keys_round_trip(value: Any, annotation: Any) -> None:
    decoded = roundtrip(value, annotation)

    assert decoded == value and type(decoded) is type(value)


def test_data_for_an_abstract_collection_is_refused_rather_than_returned_raw() -> None:
    with pytest.raises(SerializationError) as info:
        from_json([{"last4": "1"}], Sequence[Card])

    assert str(info.value) == "value: don't know how to decode Sequence[Card]; annotate with a supported type"


def test_a_pydantic_model_with_an_alias_round_trips() -> None:
    pydantic = pytest.importorskip("pydantic")

    class Account(pydantic.BaseModel):  # type: ignore[name-defined,misc]
        account_id: str = pydantic.Field(alias="accountId")

    value = Account(accountId="a-1")

    assert to_json(value) == {"accountId": "a-1"}
    assert roundtrip(value, Account) == value


@pytest.mark.parametrize(("field_value", "message"), [
    (float("inf"), "value.x is inf, which JSON cannot store; use None or a finite number"),
    ("a\x00", "value.x contains a NUL character (\\x00), which PostgreSQL cannot store"),
])
def test_what_a_pydantic_model_dumps_is_checked_like_any_value(field_value: Any, message: str) -> None:
    pydantic = pytest.importorskip("pydantic")

    class Reading(pydantic.BaseModel):  # type: ignore[name-defined,misc]
        x: Union[float, str]

    with pytest.raises(SerializationError) as info:
        to_json(Reading(x=field_value))

    assert str(info.value).startswith(message)


def test_a_pydantic_model_whose_json_form_is_not_exact_is_refused() -> None:
    pydantic = pytest.importorskip("pydantic")

    class Stamp(pydantic.BaseModel):  # type: ignore[name-defined,misc]
        at: dt.datetime

    odd = dt.timezone(dt.timedelta(seconds=30))  # pydantic dumps whole minutes of an offset only

    with pytest.raises(SerializationError) as info:
        to_json(Stamp(at=dt.datetime(2030, 1, 1, tzinfo=odd)))

    assert str(info.value) == (
        "value: pydantic's JSON form of this Stamp does not validate back to the same fields, so it would "
        "not come back as it was; use field types whose JSON form is exact")


# -- text and numbers a database cannot store ------------------------------------------------

SURROGATE = ("contains a lone surrogate (\\ud800 at index 1), which no UTF-8 database can store; it usually "
             "comes from bytes decoded with errors='surrogateescape': decode them with the right encoding, "
             "or encode binary data (e.g. base64) before returning it")


@pytest.mark.parametrize(("value", "path"), [
    ("a\ud800", "value"),
    ({"notes": ["ok", "a\ud800"]}, "value['notes'][1]"),
    (Card("a\ud800"), "value.last4"),
    ({"a\ud800": 1}, "a key of value"),
])
def test_a_lone_surrogate_is_refused_like_nul_naming_its_path(value: Any, path: str) -> None:
    with pytest.raises(SerializationError) as info:
        to_json(value)

    assert str(info.value) == f"{path} {SURROGATE}"


def test_a_nul_in_a_dict_key_is_refused() -> None:
    with pytest.raises(SerializationError) as info:
        to_json({"k\x00": 1})

    assert str(info.value).startswith("a key of value contains a NUL character")


def test_keys_that_would_collide_in_json_are_refused() -> None:
    with pytest.raises(SerializationError) as info:
        to_json({1: "int", "1": "str"})

    assert str(info.value) == ("value has the keys 1 and '1', which are both stored as the JSON key '1'; "
                               "give the dict keys of one type")


@pytest.mark.parametrize("n", [2**63, -(2**63) - 1, 10**5000], ids=["2**63", "-2**63-1", "10**5000"])
def test_an_int_beyond_64_bits_is_refused_on_every_backend(n: int) -> None:
    with pytest.raises(SerializationError) as info:
        to_json({"n": n})

    assert str(info.value).startswith(f"value['n'] is an int of {n.bit_length()} bits, beyond the 64-bit "
                                      "range every backend stores exactly; store it as a str or Decimal")


@pytest.mark.parametrize("n", [2**63 - 1, -(2**63)])
def test_the_64_bit_bounds_are_stored(n: int) -> None:
    assert from_json(to_json(n), int) == n


def test_negative_zero_is_stored_as_zero_as_every_database_reads_it_back() -> None:
    stored = to_json(-0.0)
    assert stored == 0.0 and str(stored) == "0.0"


def test_a_list_that_contains_itself_is_refused() -> None:
    loop: list[Any] = []
    loop.append(loop)

    with pytest.raises(SerializationError) as info:
        to_json(loop)

    assert str(info.value).startswith("value is nested too deeply or contains itself")


# -- check_storable: annotations the codec can and cannot store ------------------------------


class Mixed(enum.Enum):
    POINT = (1, 2)


class Unknown:
    pass


@dataclass
class Signed:
    body: str
    secret: dataclasses.InitVar[str]

    def __post_init__(self, secret: str) -> None:
        self.body = self.body.strip()


@pytest.mark.parametrize("annotation", [
    None, Any, object, int, Optional[Invoice], list[Line], dict[str, list[Line]], tuple[int, ...],
    tuple[int, str], dict[Color, int], dict[uuid.UUID, Decimal], frozenset[Priority], Address, Point,
    Page[Card], Union[Refund, Charge], Union[Card, Transfer], Union[dt.date, dt.datetime],
    Union[int, str, None], Literal["a", 1], Literal[Color.RED], UserId, Annotated[str, "x"],
    Union[Decimal, uuid.UUID], Union[Literal[1], int], T,
])
def test_supported_annotations_are_storable(annotation: Any) -> None:
    check_storable(annotation, where="the result")


@pytest.mark.parametrize(("annotation", "message"), [
    (bytes, "is bytes, which has no JSON form; use str (e.g. base64 text) instead"),
    (Unknown, "is Unknown, which is a plain class the codec cannot rebuild from JSON; make it a dataclass, "
              "a pydantic model, a TypedDict or a NamedTuple"),
    (list[Unknown], "is list[Unknown], whose item type is Unknown, which is a plain class the codec"),
    (Callable[[int], str], "is Callable[[int], str], which is code, not data; store a name and look it up "
                           "instead"),
    (type[Line], "is type[Line], which is code, not data"),
    (dict[tuple[int, int], str], "is dict[tuple[int, int], str], whose key type is tuple[int, int], which "
                                 "cannot be a JSON object key; use str, int, Enum, UUID or Literal keys, or "
                                 "a list of (key, value) pairs"),
    (dict[Decimal, str], "is dict[Decimal, str], whose key type is Decimal, which cannot be a JSON object key"),
    ("Missing", "is 'Missing', which is a forward reference that cannot be resolved; define the type before "
                "the saga class (at module level, or earlier in the same function)"),
    (Sequence[int], "is Sequence[int], which does not say which collection to rebuild; use list[...] or "
                    "tuple[..., ...]"),
    (Mixed, "is Mixed, which has the member <Mixed.POINT: (1, 2)>, whose value is no str, int, float or bool; "
            "the codec stores an Enum as its value, so give the members such values"),
    (Union[str, Decimal], "is str | Decimal, which cannot be decoded unambiguously: str and Decimal are both "
                          "stored as JSON strings; keep one of them, or make each a dataclass with a field "
                          "that tells them apart (e.g. kind: Literal[...])"),
    (Union[int, float], "is int | float, which cannot be decoded unambiguously: int and float are both stored "
                        "as JSON numbers, and PostgreSQL reads 1e16 back as 10000000000000000; annotate float "
                        "(an int comes back as a float) or int"),
    (Union[list[int], set[str]], "is list[int] | set[str], which cannot be decoded unambiguously: list[int] "
                                 "and set[str] are both stored as a JSON array (an empty one fits either)"),
    (Union[Priority, int], "is Priority | int, which cannot be decoded unambiguously: Priority and int have "
                           "Priority.LOW, stored as 1 like a plain int"),
    (Union[Card, dict[str, str]], "is Card | dict[str, str], which cannot be decoded unambiguously: Card and "
                                  "dict[str, str] are both stored as JSON objects, and one of them takes any keys"),
    (Union[Any, Decimal], "is Any | Decimal, which cannot be decoded unambiguously: Any and Decimal overlap: "
                          "a value stored under Any that looks like the other's JSON would come back as the "
                          "other type; annotate Any alone, or leave Any out"),
    (Signed, "is Signed, which has the init-only parameter 'secret' without a default, which is not stored "
             "and so cannot be passed when decoding; give it a default"),
    (Union[Card, Annotated[Card, "again"]], None),
    (Optional[Union[Line, Page[Line]]], None),
    (Union[Invoice, bytes], "is Invoice | bytes, which includes bytes, which has no JSON form"),
])
def test_unsupported_annotations_are_refused_saying_what_to_use(annotation: Any, message: str | None) -> None:
    if message is None:  # the same arm twice, or arms with different keys: fine
        check_storable(annotation, where="the result")
        return
    with pytest.raises(SerializationError) as info:
        check_storable(annotation, where="the result")

    assert str(info.value).startswith(f"the result {message}")


@dataclass
class Wallet:
    owner: str
    coins: dict[tuple[int, int], int]


def test_a_nested_problem_names_the_field() -> None:
    with pytest.raises(SerializationError) as info:
        check_storable(Optional[list[Wallet]], where="X.y: the return type")

    assert str(info.value) == (
        "X.y: the return type is list[Wallet] | None, whose field Wallet.coins is dict[tuple[int, int], int], "
        "whose key type is tuple[int, int], which cannot be a JSON object key; use str, int, Enum, UUID or "
        "Literal keys, or a list of (key, value) pairs")


@pytest.mark.postgres
@pytest.mark.parametrize(("value", "annotation"), [
    (1e16, float),
    (1.5e300, float),
    (1e16, Union[float, str]),
    (Card("4242"), Union[Transfer, Card]),
    ({"b": 1, "a": 2}, dict[str, int]),
    (Point(1, "a"), Point),
    (dt.timedelta.max, dt.timedelta),
    (Decimal("1E+2"), Decimal),
    (dt.datetime(2030, 1, 1, tzinfo=dt.timezone(dt.timedelta(microseconds=1))), dt.datetime),
])
def test_values_come_back_the_same_through_postgresql_jsonb(value: Any, annotation: Any) -> None:
    # JSONB rewrites what it stores: 1e16 comes back as 10000000000000000, keys are reordered.
    db = create_engine(require_postgres())
    try:
        with db.connect() as conn:
            stored = conn.execute(text("SELECT CAST(:doc AS jsonb)"), {"doc": json.dumps(to_json(value))}).scalar()
    finally:
        db.dispose()
    decoded = from_json(stored, annotation)

    assert decoded == value and type(decoded) is type(value)
