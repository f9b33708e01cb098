"""``Saga.definition``: the step graph as data, as a fingerprint, and drawn (issue 6)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sagadsl import Saga, compensates, step


@dataclass
class Trip:
    trip_id: str


def book_trip(name: str, *, hotel_after: tuple[Any, ...] = ("authorize",),
              rename_refund: bool = False, hotel_result: str = "h") -> type[Saga[Trip]]:
    """Run the same class statement under ``name``: a diamond with compensations.

    ``authorize`` -> ``book_flight`` and ``book_hotel`` -> ``capture``; the
    keyword arguments change one thing each.
    """

    class BookTrip(Saga[Trip], name=name):
        @step(idempotency_key="auth-{trip_id}")
        def authorize(self) -> str:
            return "a"

        @compensates(authorize)
        def void_authorization(self, authorization: str) -> None:
            pass

        @step(idempotency_key="flight-{trip_id}", after=(authorize,))
        async def book_flight(self) -> str:
            return "f"

        @compensates(book_flight)
        async def cancel_flight(self, flight: str) -> None:
            pass

        @step(idempotency_key="hotel-{trip_id}", after=hotel_after)
        def book_hotel(self, authorize: str) -> str:
            return hotel_result

        if rename_refund:
            @compensates(book_hotel)
            def release_room(self, hotel: str) -> None:
                pass
        else:
            @compensates(book_hotel)
            def cancel_hotel(self, hotel: str) -> None:
                pass

        @step(idempotency_key="capture-{trip_id}", after=(book_flight, book_hotel))
        def capture(self, book_flight: str, book_hotel: str) -> str:
            return book_flight + book_hotel

    return BookTrip


BookTrip = book_trip("travel.book")


# -- introspection --------------------------------------------------------------


def test_definition_lists_steps_in_declaration_order() -> None:
    definition = BookTrip.definition

    assert definition.name == "travel.book"
    assert definition.class_name == "BookTrip"
    assert definition.input_type is Trip
    assert definition.step_names == ("authorize", "book_flight", "book_hotel", "capture")
    assert [s.position for s in definition.steps] == [0, 1, 2, 3]
    assert [s.is_async for s in definition.steps] == [False, True, False, False]


def test_definition_gives_each_steps_dependencies_and_dependents() -> None:
    definition = BookTrip.definition

    assert {s.name: s.after for s in definition.steps} == {
        "authorize": (),
        "book_flight": ("authorize",),
        "book_hotel": ("authorize",),
        "capture": ("book_flight", "book_hotel"),
    }
    assert definition.dependents("authorize") == ("book_flight", "book_hotel")
    assert definition.dependents("capture") == ()
    assert not definition.is_linear


def test_definition_names_each_steps_compensation() -> None:
    definition = BookTrip.definition

    compensations = {s.name: s.compensation.method_name if s.compensation else None
                     for s in definition.steps}
    assert compensations == {"authorize": "void_authorization", "book_flight": "cancel_flight",
                             "book_hotel": "cancel_hotel", "capture": None}
    flight = definition.step("book_flight").compensation
    assert flight is not None and flight.is_async and flight.result_param == "flight"


def test_definition_records_which_results_a_step_receives() -> None:
    definition = BookTrip.definition

    assert definition.step("book_hotel").params == ("authorize",)
    assert definition.step("capture").params == ("book_flight", "book_hotel")


# -- the fingerprint ----------------------------------------------------------------


def test_fingerprint_is_the_same_for_identical_class_statements() -> None:
    again = book_trip("travel.book.again")

    assert again.definition.fingerprint == BookTrip.definition.fingerprint
    assert len(BookTrip.definition.fingerprint) == 64


def test_fingerprint_ignores_step_bodies() -> None:
    changed = book_trip("travel.book.new_body", hotel_result="another hotel")

    assert changed.definition.fingerprint == BookTrip.definition.fingerprint


def test_fingerprint_changes_with_a_new_dependency() -> None:
    changed = book_trip("travel.book.new_dependency", hotel_after=("authorize", "book_flight"))

    assert changed.definition.step("book_hotel").after == ("authorize", "book_flight")
    assert changed.definition.fingerprint != BookTrip.definition.fingerprint


def test_fingerprint_changes_with_a_renamed_compensation() -> None:
    changed = book_trip("travel.book.renamed_refund", rename_refund=True)

    assert changed.definition.fingerprint != BookTrip.definition.fingerprint


# -- drawings -----------------------------------------------------------------------


def test_to_text_lists_one_line_per_step() -> None:
    assert BookTrip.definition.to_text() == """\
travel.book (BookTrip)
  1. authorize [sync]  undo: void_authorization
  2. book_flight [async] after authorize  undo: cancel_flight
  3. book_hotel [sync] after authorize  undo: cancel_hotel
  4. capture [sync] after book_flight, book_hotel"""


def test_to_mermaid_draws_dependencies_and_compensations() -> None:
    assert BookTrip.definition.to_mermaid() == """\
flowchart TD
    step_authorize["authorize"]
    undo_authorize(["void_authorization"])
    step_authorize -. compensated by .-> undo_authorize
    step_book_flight["book_flight"]
    step_authorize --> step_book_flight
    undo_book_flight(["cancel_flight"])
    step_book_flight -. compensated by .-> undo_book_flight
    step_book_hotel["book_hotel"]
    step_authorize --> step_book_hotel
    undo_book_hotel(["cancel_hotel"])
    step_book_hotel -. compensated by .-> undo_book_hotel
    step_capture["capture"]
    step_book_flight --> step_capture
    step_book_hotel --> step_capture"""


def test_to_dot_draws_dependencies_and_compensations() -> None:
    assert BookTrip.definition.to_dot() == """\
digraph "travel.book" {
    rankdir=TB;
    "authorize" [shape=box];
    "void_authorization" [shape=ellipse, style=dashed];
    "authorize" -> "void_authorization" [style=dashed, label="undo"];
    "book_flight" [shape=box];
    "authorize" -> "book_flight";
    "cancel_flight" [shape=ellipse, style=dashed];
    "book_flight" -> "cancel_flight" [style=dashed, label="undo"];
    "book_hotel" [shape=box];
    "authorize" -> "book_hotel";
    "cancel_hotel" [shape=ellipse, style=dashed];
    "book_hotel" -> "cancel_hotel" [style=dashed, label="undo"];
    "capture" [shape=box];
    "book_flight" -> "capture";
    "book_hotel" -> "capture";
}"""


def test_mermaid_node_ids_cannot_clash_with_mermaid_keywords() -> None:
    class Pipeline(Saga[Trip], name="tests.graph_render.keywords"):
        @step(idempotency_key="start-{trip_id}")
        def start(self) -> None:
            pass

        @step(idempotency_key="end-{trip_id}")
        def end(self) -> None:
            pass

    assert Pipeline.definition.to_mermaid() == """\
flowchart TD
    step_start["start"]
    step_end["end"]
    step_start --> step_end"""


def test_to_dot_escapes_quotes_in_the_saga_name() -> None:
    class Quoted(Saga[Trip], name='tests.graph_render."quoted"'):
        @step(idempotency_key="only-{trip_id}")
        def only(self) -> None:
            pass

    first_line = Quoted.definition.to_dot().splitlines()[0]
    assert first_line == 'digraph "tests.graph_render.\\"quoted\\"" {'


# -- step kinds and locks in the drawings (DESIGN §7) ----------------------------------------


class Checkout(Saga[Trip], name="tests.graph_render.checkout", locks=("trip:{trip_id}",)):
    @step(idempotency_key="reserve-{trip_id}")
    def reserve(self) -> None:
        pass

    @compensates(reserve)
    def release(self) -> None:
        pass

    @step(idempotency_key="charge-{trip_id}", pivot=True)
    def charge(self) -> None:
        pass

    @step(idempotency_key="ship-{trip_id}")
    async def ship(self) -> None:
        pass


def test_to_text_marks_the_pivot_and_the_retriable_steps_and_lists_the_locks() -> None:
    assert Checkout.definition.to_text() == """\
tests.graph_render.checkout (Checkout)
  locks: trip:{trip_id}
  1. reserve [sync]  undo: release
  2. charge [sync, pivot] after reserve
  3. ship [async, retriable] after charge"""


def test_to_mermaid_draws_the_pivot_as_a_hexagon_and_retriable_steps_rounded() -> None:
    assert Checkout.definition.to_mermaid() == """\
flowchart TD
    step_reserve["reserve"]
    undo_reserve(["release"])
    step_reserve -. compensated by .-> undo_reserve
    step_charge{{"charge (pivot)"}}:::pivot
    step_reserve --> step_charge
    step_ship("ship (retriable)"):::retriable
    step_charge --> step_ship
    classDef pivot stroke-width:3px
    classDef retriable stroke-dasharray:4 2"""


def test_to_dot_draws_the_pivot_as_a_hexagon_and_retriable_steps_rounded() -> None:
    assert Checkout.definition.to_dot() == """\
digraph "tests.graph_render.checkout" {
    rankdir=TB;
    "reserve" [shape=box];
    "release" [shape=ellipse, style=dashed];
    "reserve" -> "release" [style=dashed, label="undo"];
    "charge" [shape=hexagon, label="charge (pivot)"];
    "reserve" -> "charge";
    "ship" [shape=box, style=rounded, label="ship (retriable)"];
    "charge" -> "ship";
}"""


def test_the_graph_module_draws_the_same() -> None:
    from sagadsl import graph

    definition = Checkout.definition
    assert (graph.to_text(definition), graph.to_mermaid(definition), graph.to_dot(definition)) == (
        definition.to_text(), definition.to_mermaid(), definition.to_dot())
