"""Inputs and results as JSON, decoded back to their annotated types (DESIGN §2.8)."""

from __future__ import annotations

import datetime as dt
import enum
import json
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal, Optional, TypedDict, Union

import pytest

from sagadsl import Saga, SagaEngine, SerializationError, from_json, step, to_json


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
