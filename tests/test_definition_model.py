"""``Saga.definition`` as data: the graph closures, step kinds, locks and transactional flags.

What the class build derives is computed once and kept in the frozen
definition (DESIGN §1, §7, §9); the runtime reads it and never recomputes it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import pytest

from sagadsl import IdempotencyRequiredError, Saga, compensates, step
from sagadsl.keys import render_locks


@dataclass
class Order:
    order_id: str


@dataclass
class Transfer:
    src: str
    dst: str | None
    cents: int


# -- the graph, computed once --------------------------------------------------------------


class Diamond(Saga[Order], name="tests.definition_model.diamond"):
    @step(idempotency_key="a-{order_id}")
    def a(self) -> None: ...

    @step(idempotency_key="b-{order_id}", after=a)
    def b(self) -> None: ...

    @step(idempotency_key="c-{order_id}", after=a)
    def c(self) -> None: ...

    @step(idempotency_key="d-{order_id}", after=(b, c))
    def d(self) -> None: ...


def test_ancestors_are_every_step_a_step_depends_on_transitively() -> None:
    assert dict(Diamond.definition.ancestors) == {
        "a": frozenset(), "b": {"a"}, "c": {"a"}, "d": {"a", "b", "c"}}


def test_descendants_are_every_step_that_depends_on_a_step_transitively() -> None:
    assert dict(Diamond.definition.descendants) == {
        "a": {"b", "c", "d"}, "b": {"d"}, "c": {"d"}, "d": frozenset()}


def test_dependents_are_the_direct_ones() -> None:
    assert Diamond.definition.dependents("a") == ("b", "c")
    assert Diamond.definition.dependents("d") == ()


def test_the_definition_and_its_closures_are_read_only() -> None:
    definition = Diamond.definition

    with pytest.raises(dataclasses.FrozenInstanceError):
        definition.descendants = {}  # type: ignore[misc]
    with pytest.raises(TypeError):
        definition.ancestors["a"] = frozenset({"d"})  # type: ignore[index]


# -- step kinds around the pivot (DESIGN §7) -----------------------------------------------


class Checkout(Saga[Order], name="tests.definition_model.checkout"):
    @step(idempotency_key="reserve-{order_id}")
    def reserve(self) -> None: ...

    @compensates(reserve)
    def release(self) -> None: ...

    @step(idempotency_key="validate-{order_id}", after=())
    def validate(self) -> None: ...

    @step(idempotency_key="charge-{order_id}", after=(reserve, validate), pivot=True)
    def charge(self) -> None: ...

    @step(idempotency_key="ship-{order_id}")
    def ship(self) -> None: ...

    @step(idempotency_key="email-{order_id}", after=charge)
    def email(self) -> None: ...


def test_steps_before_the_pivot_are_compensatable_and_after_it_retriable() -> None:
    definition = Checkout.definition

    assert definition.pivot == "charge"
    assert {s.name: s.kind for s in definition.steps} == {
        "reserve": "compensatable", "validate": "compensatable", "charge": "pivot",
        "ship": "retriable", "email": "retriable"}


def test_every_step_of_a_saga_without_a_pivot_is_compensatable() -> None:
    assert Diamond.definition.pivot is None
    assert {s.kind for s in Diamond.definition.steps} == {"compensatable"}


def test_the_pivot_is_part_of_the_fingerprint_and_nothing_else_changes_for_sagas_without_one() -> None:
    class Plain(Saga[Order], name="tests.definition_model.plain"):
        @step(idempotency_key="charge-{order_id}")
        def charge(self) -> None: ...

    class Pivoted(Saga[Order], name="tests.definition_model.pivoted"):
        @step(idempotency_key="charge-{order_id}", pivot=True)
        def charge(self) -> None: ...

    assert Plain.definition.shape() == [{"name": "charge", "after": [], "compensation": None}]
    assert Pivoted.definition.shape() == [{"name": "charge", "after": [], "compensation": None,
                                           "pivot": True}]
    assert Plain.definition.fingerprint != Pivoted.definition.fingerprint


# -- semantic locks (DESIGN §7) ------------------------------------------------------------


class Move(Saga[Transfer], name="tests.definition_model.move",
           locks=("account:{src}", "account:{dst}", "account:{src}")):
    @step(idempotency_key="move-{src}")
    def move(self) -> None: ...


def test_lock_templates_are_kept_as_written_without_repeats() -> None:
    assert Move.definition.locks == ("account:{src}", "account:{dst}")


def test_a_saga_without_locks_has_none() -> None:
    assert Diamond.definition.locks == ()


def test_render_locks_renders_sorts_and_removes_duplicates() -> None:
    saga = Move._bind(Transfer("b-2", "a-1", 5), "t-1")
    same = Move._bind(Transfer("a-1", "a-1", 5), "t-2")

    assert render_locks(Move.definition, saga) == ("account:a-1", "account:b-2")
    assert render_locks(Move.definition, same) == ("account:a-1",)


@pytest.mark.parametrize("dst", [None, "  "])
def test_render_locks_refuses_an_empty_field(dst: Any) -> None:
    saga = Move._bind(Transfer("a-1", dst, 5), "t-1")

    with pytest.raises(IdempotencyRequiredError) as info:
        render_locks(Move.definition, saga)

    assert str(info.value) == (
        f"Move: the lock 'account:{{dst}}' uses the input field 'dst', which is {dst!r}; a key part "
        "that is empty would let different sagas share a key, so give the field a value or key on "
        "another field")
    assert info.value.saga_id == "t-1"


def test_render_locks_names_a_field_missing_from_an_untyped_input() -> None:
    class Loose(Saga[dict[str, Any]], name="tests.definition_model.loose", locks=("account:{src}",)):
        @step(idempotency_key="move-{saga_id}")
        def move(self) -> None: ...

    with pytest.raises(IdempotencyRequiredError) as info:
        render_locks(Loose.definition, Loose._bind({"dst": "x"}, "t-1"))

    assert str(info.value) == ("Loose: the lock 'account:{src}' cannot be rendered from the input "
                               "(KeyError: 'src'); give the input that field or change the template")


def test_a_subclass_inherits_its_bases_locks() -> None:
    class Base(Saga[Transfer], abstract=True, locks=("account:{src}",)):
        pass

    class Child(Base, name="tests.definition_model.child"):
        @step(idempotency_key="move-{src}")
        def move(self) -> None: ...

    assert Child.definition.locks == ("account:{src}",)


# -- transactional steps (DESIGN §9) -------------------------------------------------------


def test_transactional_steps_and_compensations_are_marked() -> None:
    class Outbox(Saga[Order], name="tests.definition_model.outbox"):
        @step(idempotency_key="insert-{order_id}", transactional=True)
        def insert(self) -> None: ...

        @compensates(insert, transactional=True)
        def delete(self) -> None: ...

        @step(idempotency_key="notify-{order_id}")
        def notify(self) -> None: ...

        @compensates(notify)
        def unnotify(self) -> None: ...

    definition = Outbox.definition
    insert, notify = definition.step("insert"), definition.step("notify")
    assert (insert.transactional, notify.transactional) == (True, False)
    assert insert.compensation is not None and insert.compensation.transactional
    assert notify.compensation is not None and not notify.compensation.transactional
    assert definition.has_transactional


def test_a_transactional_compensation_alone_makes_the_saga_transactional() -> None:
    class Undo(Saga[Order], name="tests.definition_model.undo"):
        @step(idempotency_key="insert-{order_id}")
        def insert(self) -> None: ...

        @compensates(insert, transactional=True)
        def delete(self) -> None: ...

    assert not Undo.definition.step("insert").transactional
    assert Undo.definition.has_transactional


def test_a_saga_without_transactional_members_is_not_transactional() -> None:
    assert not Diamond.definition.has_transactional


# -- key rendering -------------------------------------------------------------------------


def test_a_step_renders_its_own_key() -> None:
    saga = Checkout._bind(Order("o-1"), "s-1")

    assert Checkout.definition.step("charge").render_key(saga) == "charge-o-1"
