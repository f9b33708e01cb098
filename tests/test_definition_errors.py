"""Every mistake in a saga class statement fails at class creation (DESIGN §1).

Each test writes the faulty class statement inside ``pytest.raises`` and
asserts the exact message: it names ``Class.method``, says what is wrong and
how to fix it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from sagadsl import Saga, SagaDefinitionError, compensates, step


@dataclass
class Order:
    order_id: str
    cents: int


def raised(info: pytest.ExceptionInfo[SagaDefinitionError]) -> str:
    assert info.value.code == "DEFINITION_ERROR"
    return str(info.value)


def test_compensation_for_an_unknown_step() -> None:
    with pytest.raises(SagaDefinitionError) as info:
        class Bad(Saga[Order]):
            @step(idempotency_key="reserve-{order_id}")
            def reserve(self) -> None: ...

            @compensates("resrve")
            def release(self) -> None: ...

    assert raised(info) == "Bad.release: @compensates('resrve') names no step of Bad; steps are: reserve"


def test_two_compensations_for_one_step() -> None:
    with pytest.raises(SagaDefinitionError) as info:
        class Bad(Saga[Order]):
            @step(idempotency_key="reserve-{order_id}")
            def reserve(self) -> None: ...

            @compensates(reserve)
            def release(self) -> None: ...

            @compensates("reserve")
            def release_again(self) -> None: ...

    assert raised(info) == ("Bad.release_again: step 'reserve' already has the compensation "
                            "Bad.release; a step has at most one, so merge them")


def test_missing_step_idempotency_key() -> None:
    with pytest.raises(SagaDefinitionError) as info:
        class Bad(Saga[Order]):
            @step()
            def reserve(self) -> None: ...

    assert raised(info) == (
        'Bad.reserve: @step needs an idempotency_key, e.g. @step(idempotency_key="reserve-{order_id}"); '
        "it is passed to downstream services so a retried step has its effect once")


@pytest.mark.parametrize("key", ["", "   "])
def test_empty_step_idempotency_key(key: str) -> None:
    with pytest.raises(SagaDefinitionError) as info:
        class Bad(Saga[Order]):
            @step(idempotency_key=key)
            def reserve(self) -> None: ...

    assert raised(info) == (
        f"Bad.reserve: idempotency_key must be a non-empty template or a callable, got {key!r}")


def test_template_field_the_input_type_lacks() -> None:
    with pytest.raises(SagaDefinitionError) as info:
        class Bad(Saga[Order]):
            @step(idempotency_key="reserve-{order}-{sku}")
            def reserve(self) -> None: ...

    assert raised(info) == (
        "Bad.reserve: idempotency_key 'reserve-{order}-{sku}' uses 'order', 'sku', which the input "
        "type Order does not have; use one of: cents, order_id, saga_id")


def test_template_that_is_not_a_format_string() -> None:
    with pytest.raises(SagaDefinitionError) as info:
        class Bad(Saga[Order]):
            @step(idempotency_key="reserve-{order_id")
            def reserve(self) -> None: ...

    assert raised(info) == ("Bad.reserve: idempotency_key 'reserve-{order_id' is not a valid format "
                            "template (expected '}' before end of string)")


def test_parameter_that_names_no_step() -> None:
    with pytest.raises(SagaDefinitionError) as info:
        class Bad(Saga[Order]):
            @step(idempotency_key="reserve-{order_id}")
            def reserve(self) -> str: return ""

            @step(idempotency_key="charge-{order_id}")
            def charge(self, reservation: str) -> None: ...

    assert raised(info) == (
        "Bad.charge: parameter 'reservation' names no step; a step's parameters receive the results "
        "of earlier steps, by name (reserve)")


def test_parameter_naming_a_later_step() -> None:
    with pytest.raises(SagaDefinitionError) as info:
        class Bad(Saga[Order]):
            @step(idempotency_key="reserve-{order_id}")
            def reserve(self, charge: int) -> None: ...

            @step(idempotency_key="charge-{order_id}")
            def charge(self) -> int: return 0

    assert raised(info) == (
        "Bad.reserve: parameter 'charge' names a step that reserve does not depend on; "
        "add it to after= or remove the parameter")


def test_parameter_naming_a_step_that_is_not_a_dependency() -> None:
    with pytest.raises(SagaDefinitionError) as info:
        class Bad(Saga[Order]):
            @step(idempotency_key="reserve-{order_id}")
            def reserve(self) -> str: return ""

            @step(idempotency_key="charge-{order_id}", after=())
            def charge(self, reserve: str) -> None: ...

    assert raised(info) == (
        "Bad.charge: parameter 'reserve' names a step that charge does not depend on; "
        "add it to after= or remove the parameter")


def test_variadic_parameters() -> None:
    with pytest.raises(SagaDefinitionError) as info:
        class Bad(Saga[Order]):
            @step(idempotency_key="reserve-{order_id}")
            def reserve(self, **results: Any) -> None: ...

    assert raised(info) == ("Bad.reserve: *results / **results are not allowed; name each earlier "
                            "step whose result the step needs")


def test_compensation_parameter_that_is_neither_result_nor_dependency() -> None:
    with pytest.raises(SagaDefinitionError) as info:
        class Bad(Saga[Order]):
            @step(idempotency_key="reserve-{order_id}")
            def reserve(self) -> str: return ""

            @step(idempotency_key="charge-{order_id}")
            def charge(self) -> str: return ""

            @compensates(reserve)
            def release(self, reservation: str, charge: str) -> None: ...

    assert raised(info) == (
        "Bad.release: parameter 'charge' is neither the first parameter (which receives reserve's "
        "result) nor a step that reserve depends on")


def test_step_defined_twice() -> None:
    with pytest.raises(SagaDefinitionError) as info:
        class Bad(Saga[Order]):
            @step(idempotency_key="reserve-{order_id}")
            def reserve(self) -> None: ...

            @step(idempotency_key="reserve-again-{order_id}")  # type: ignore[no-redef]
            def reserve(self) -> None: ...

    assert raised(info) == (
        "Bad.reserve: defined twice in the class body; the second definition would silently replace "
        "the first. Give each step and compensation its own name")


def test_dependency_cycle() -> None:
    with pytest.raises(SagaDefinitionError) as info:
        class Bad(Saga[Order]):
            @step(idempotency_key="a-{order_id}", after="c")
            def a(self) -> None: ...

            @step(idempotency_key="b-{order_id}", after="a")
            def b(self) -> None: ...

            @step(idempotency_key="c-{order_id}", after="b")
            def c(self) -> None: ...

    assert raised(info) == ("Bad: the steps a -> b -> c -> a depend on each other in a cycle; "
                            "remove one of these after= dependencies")


def test_step_after_itself() -> None:
    with pytest.raises(SagaDefinitionError) as info:
        class Bad(Saga[Order]):
            @step(idempotency_key="a-{order_id}", after="a")
            def a(self) -> None: ...

    assert raised(info) == "Bad.a: a step cannot run after itself; remove 'a' from after="


def test_after_names_an_unknown_step() -> None:
    with pytest.raises(SagaDefinitionError) as info:
        class Bad(Saga[Order]):
            @step(idempotency_key="a-{order_id}")
            def a(self) -> None: ...

            @step(idempotency_key="b-{order_id}", after="x")
            def b(self) -> None: ...

    assert raised(info) == "Bad.b: after= names 'x', which is no step of Bad; the other steps are: a"


def test_step_without_parentheses() -> None:
    with pytest.raises(SagaDefinitionError) as info:
        class Bad(Saga[Order]):
            @step
            def reserve(self) -> None: ...  # type: ignore[misc]

    assert raised(info) == ('Bad.reserve: @step must be called with an idempotency key, e.g. '
                            '@step(idempotency_key="reserve-{order_id}")')


def test_compensates_without_parentheses() -> None:
    with pytest.raises(SagaDefinitionError) as info:
        class Bad(Saga[Order]):
            @step(idempotency_key="reserve-{order_id}")
            def reserve(self) -> None: ...

            @compensates
            def release(self) -> None: ...  # type: ignore[misc]

    assert raised(info) == ('Bad.release: @compensates must be called with the step it undoes, '
                            'e.g. @compensates("reserve") or @compensates(reserve)')


def test_saga_name_already_registered_by_another_class() -> None:
    class First(Saga[Order], name="tests.definition_errors.taken"):
        @step(idempotency_key="a-{order_id}")
        def a(self) -> None: ...

    with pytest.raises(SagaDefinitionError) as info:
        class Second(Saga[Order], name="tests.definition_errors.taken"):
            @step(idempotency_key="a-{order_id}")
            def a(self) -> None: ...

    assert raised(info) == (
        "Second: the saga name 'tests.definition_errors.taken' is already registered by "
        f"{__name__}:test_saga_name_already_registered_by_another_class.<locals>.First; "
        'pass another name: class Second(Saga[...], name="...")')


def test_saga_without_steps() -> None:
    with pytest.raises(SagaDefinitionError) as info:
        class Bad(Saga[Order]):
            def helper(self) -> None: ...

    assert raised(info) == ("Bad: defines no @step methods; add at least one, or declare a base "
                            "class with class Bad(Saga[...], abstract=True)")


def test_step_with_a_reserved_name() -> None:
    with pytest.raises(SagaDefinitionError) as info:
        class Bad(Saga[Order]):
            @step(idempotency_key="input-{order_id}")
            def input(self) -> None: ...  # type: ignore[override]

    assert raised(info) == ("Bad.input: a step cannot be called 'input' because the saga instance "
                            "uses that name (self.input); rename the step")


def test_method_that_is_both_step_and_compensation() -> None:
    with pytest.raises(SagaDefinitionError) as info:
        class Bad(Saga[Order]):
            @step(idempotency_key="a-{order_id}")
            def a(self) -> None: ...

            @compensates("a")
            @step(idempotency_key="b-{order_id}")
            def b(self) -> None: ...

    assert raised(info) == ("Bad.b: a method cannot be both @step and @compensates; write the "
                            "compensation as its own method")


def test_override_of_a_step_without_step_decorator() -> None:
    class Base(Saga[Order], abstract=True):
        @step(idempotency_key="a-{order_id}")
        def a(self) -> None: ...

    with pytest.raises(SagaDefinitionError) as info:
        class Bad(Base):
            def a(self) -> None: ...

    assert raised(info) == ("Bad.a: overrides the step Base.a without @step; decorate the override "
                            "with @step(idempotency_key=...)")


def test_every_problem_is_reported_together_in_declaration_order() -> None:
    # Written so that the checks, run one after the other, find them in the
    # opposite order: keys are checked before parameters, parameters before
    # compensations.
    with pytest.raises(SagaDefinitionError) as info:
        class Bad(Saga[Order], name="n" * 256):
            @step(idempotency_key="a-{order_id}")
            def a(self, nothing: int) -> None: ...

            @compensates("zzz")
            def undo(self) -> None: ...

            @step(idempotency_key="")
            def b(self) -> None: ...

    assert raised(info).splitlines() == [
        f"Bad: the saga name {'n' * 40 + '...'!r} is 256 characters long, and the database stores at "
        'most 255; pass a shorter one: class Bad(Saga[...], name="...")',
        "Bad.a: parameter 'nothing' names no step; a step's parameters receive the results of "
        "earlier steps, and a depends on none",
        "Bad.undo: @compensates('zzz') names no step of Bad; steps are: a, b",
        "Bad.b: idempotency_key must be a non-empty template or a callable, got ''",
    ]


def test_an_inherited_compensation_is_named_by_the_class_that_defines_it() -> None:
    class Base(Saga[Order], abstract=True):
        @step(idempotency_key="reserve-{order_id}")
        def reserve(self) -> None: ...

        @compensates(reserve)
        def release(self) -> None: ...

    with pytest.raises(SagaDefinitionError) as info:
        class Bad(Base):
            @compensates("reserve")
            def release_again(self) -> None: ...

    assert raised(info) == ("Bad.release_again: step 'reserve' already has the compensation "
                            "Base.release; a step has at most one, so merge them")


@pytest.mark.parametrize("timeout", [0, -1.0, True, "5"])
def test_step_timeout_must_be_positive_seconds(timeout: Any) -> None:
    with pytest.raises(SagaDefinitionError) as info:
        class Bad(Saga[Order]):
            @step(idempotency_key="a-{order_id}", timeout=timeout)
            def a(self) -> None: ...

    assert raised(info) == f"Bad.a: timeout= must be a number of seconds > 0, got {timeout!r}"


def test_step_retry_that_is_not_a_policy() -> None:
    with pytest.raises(SagaDefinitionError) as info:
        class Bad(Saga[Order]):
            @step(idempotency_key="a-{order_id}", retry=3)  # type: ignore[call-overload]
            def a(self) -> None: ...

    assert raised(info) == ("Bad.a: retry= must be a RetryPolicy, e.g. retry=RetryPolicy(max_attempts=3), "
                            "got 3")


def test_compensates_without_a_step() -> None:
    with pytest.raises(SagaDefinitionError) as info:
        class Bad(Saga[Order]):
            @step(idempotency_key="reserve-{order_id}")
            def reserve(self) -> None: ...

            @compensates()  # type: ignore[call-overload]
            def release(self) -> None: ...

    assert raised(info) == ('Bad.release: @compensates() needs the step it undoes, e.g. '
                            '@compensates("reserve") or @compensates(reserve)')


def test_step_key_template_with_attribute_access() -> None:
    with pytest.raises(SagaDefinitionError) as info:
        class Bad(Saga[Order]):
            @step(idempotency_key="reserve-{order_id.__class__}")
            def reserve(self) -> None: ...

    assert raised(info) == (
        "Bad.reserve: idempotency_key 'reserve-{order_id.__class__}' uses {order_id.__class__}; a template "
        "names input fields only, without attribute access, indexing or positional fields: write "
        "{order_id}, or pass a callable (idempotency_key=lambda saga: ...)")


@pytest.mark.parametrize(("template", "field"), [
    ("r-{order_id[0]}", "{order_id[0]}"),
    ("r-{}", "{}"),
    ("r-{order_id:{cents.real}}", "{order_id:{cents.real}}"),
])
def test_step_key_template_with_indexing_or_positional_fields(template: str, field: str) -> None:
    with pytest.raises(SagaDefinitionError) as info:
        class Bad(Saga[Order]):
            @step(idempotency_key=template)
            def reserve(self) -> None: ...

    plain = "{field}" if field == "{}" else "{order_id}"
    assert raised(info) == (
        f"Bad.reserve: idempotency_key {template!r} uses {field}; a template names input fields only, "
        f"without attribute access, indexing or positional fields: write {plain}, or pass a callable "
        "(idempotency_key=lambda saga: ...)")


def test_saga_name_with_a_nul_character() -> None:
    with pytest.raises(SagaDefinitionError) as info:
        class Bad(Saga[Order], name="orders\x00place"):
            @step(idempotency_key="a-{order_id}")
            def a(self) -> None: ...

    assert raised(info) == (
        "Bad: the saga name 'orders\\x00place' contains '\\x00', which the database cannot store "
        "(PostgreSQL refuses NUL characters, and no UTF-8 database stores a lone surrogate); "
        "remove it from name=")


def test_a_valid_class_builds_its_definition() -> None:
    class Good(Saga[Order], name="tests.definition_errors.good"):
        @step(idempotency_key="reserve-{order_id}")
        def reserve(self) -> str: return ""

        @compensates(reserve)
        def release(self, reservation: str) -> None: ...

        @step(idempotency_key=lambda saga: f"charge-{saga.saga_id}")
        async def charge(self, reserve: str) -> int: return 0

    definition = Good.definition
    assert definition.name == "tests.definition_errors.good"
    assert definition.step_names == ("reserve", "charge")
    assert [s.after for s in definition.steps] == [(), ("reserve",)]
    assert [s.is_async for s in definition.steps] == [False, True]
    assert definition.step("charge").params == ("reserve",)
    compensation = definition.step("reserve").compensation
    assert compensation is not None
    assert (compensation.method_name, compensation.result_param) == ("release", "reservation")
    assert definition.step("charge").compensation is None
    assert len(definition.fingerprint) == 64


# -- keys the same for every saga, names the database cannot hold -------------------------


def test_step_key_template_without_any_field() -> None:
    with pytest.raises(SagaDefinitionError) as info:
        class Bad(Saga[Order]):
            @step(idempotency_key="reserve")
            def reserve(self) -> None: ...

    assert raised(info) == (
        "Bad.reserve: idempotency_key 'reserve' has no {field}, so every saga would send the same key "
        "downstream and the service would take them all for one; include an input field or saga_id, "
        'e.g. "reserve-{saga_id}", or pass a callable (idempotency_key=lambda saga: ...) if one key for '
        "every saga is really meant")


def test_one_key_for_every_saga_is_allowed_as_a_callable() -> None:
    class Nightly(Saga[Order], name="tests.definition_errors.nightly"):
        @step(idempotency_key=lambda saga: "nightly-report")
        def report(self) -> None: ...

    assert Nightly.definition.step_names == ("report",)


def test_saga_name_longer_than_the_column() -> None:
    with pytest.raises(SagaDefinitionError) as info:
        class Bad(Saga[Order], name="n" * 256):
            @step(idempotency_key="a-{order_id}")
            def a(self) -> None: ...

    assert raised(info) == (
        f"Bad: the saga name {'n' * 40 + '...'!r} is 256 characters long, and the database stores at "
        'most 255; pass a shorter one: class Bad(Saga[...], name="...")')


def test_saga_name_of_exactly_the_column_length_is_allowed() -> None:
    class Long(Saga[Order], name="tests." + "n" * 249):
        @step(idempotency_key="a-{order_id}")
        def a(self) -> None: ...

    assert len(Long.saga_name) == 255


# -- inputs and results the codec cannot store (DESIGN §2.10) ------------------------------


class Opaque:
    """A plain class: the codec could store none of its instances."""


def test_step_returning_a_type_the_codec_cannot_store() -> None:
    with pytest.raises(SagaDefinitionError) as info:
        class Bad(Saga[Order]):
            @step(idempotency_key="reserve-{order_id}")
            def reserve(self) -> bytes: return b""

    assert raised(info) == ("Bad.reserve: the return type is bytes, which has no JSON form; use str "
                            "(e.g. base64 text) instead")


def test_step_returning_a_plain_class() -> None:
    with pytest.raises(SagaDefinitionError) as info:
        class Bad(Saga[Order]):
            @step(idempotency_key="reserve-{order_id}")
            def reserve(self) -> list[Opaque]: return []

    assert raised(info) == (
        "Bad.reserve: the return type is list[Opaque], whose item type is Opaque, which is a plain class "
        "the codec cannot rebuild from JSON; make it a dataclass, a pydantic model, a TypedDict or a "
        "NamedTuple")


def test_step_returning_a_type_defined_after_the_class() -> None:
    with pytest.raises(SagaDefinitionError) as info:
        class Bad(Saga[Order]):
            @step(idempotency_key="reserve-{order_id}")
            def reserve(self) -> Later: ...

    @dataclass
    class Later:
        id: str

    assert raised(info) == (
        "Bad.reserve: the return type is 'Later', which cannot be resolved (NameError: name 'Later' is not "
        "defined); define the type before the saga class (at module level, or earlier in the same function)")


def test_saga_input_type_the_codec_cannot_store() -> None:
    with pytest.raises(SagaDefinitionError) as info:
        class Bad(Saga[Opaque]):
            @step(idempotency_key="reserve-{saga_id}")
            def reserve(self) -> None: ...

    assert raised(info) == (
        "Bad: the input type is Opaque, which is a plain class the codec cannot rebuild from JSON; make it "
        "a dataclass, a pydantic model, a TypedDict or a NamedTuple")


def test_step_returning_an_ambiguous_union() -> None:
    with pytest.raises(SagaDefinitionError) as info:
        class Bad(Saga[Order]):
            @step(idempotency_key="reserve-{order_id}")
            def reserve(self) -> int | float: return 0

    assert raised(info) == (
        "Bad.reserve: the return type is int | float, which cannot be decoded unambiguously: int and float "
        "are both stored as JSON numbers, and PostgreSQL reads 1e16 back as 10000000000000000; annotate "
        "float (an int comes back as a float) or int")


def test_every_type_problem_is_reported_with_the_others() -> None:
    with pytest.raises(SagaDefinitionError) as info:
        class Bad(Saga[Opaque], name="x" * 300):
            @step(idempotency_key="a")
            def a(self) -> bytes: return b""

            @step(idempotency_key="b-{saga_id}")
            def b(self) -> set[Opaque]: return set()

    assert [line.split(":")[0] for line in raised(info).splitlines()] == ["Bad", "Bad", "Bad.a", "Bad.a",
                                                                          "Bad.b"]


def test_a_result_type_local_to_the_function_is_resolved_when_the_class_is_created() -> None:
    # This module uses ``from __future__ import annotations``: the annotation is the string "Hold".
    @dataclass
    class Hold:
        hold_id: str

    class Good(Saga[Order], name="tests.definition_errors.local_result"):
        @step(idempotency_key="hold-{order_id}")
        def hold(self) -> Hold: return Hold("h")

        @step(idempotency_key="many-{order_id}")
        def many(self) -> dict[str, list[Hold]]: return {}

    assert Good.definition.step("hold").return_type() is Hold
    assert Good.definition.step("many").return_type() == dict[str, list[Hold]]


def test_a_result_type_defined_in_the_class_body_is_resolved() -> None:
    class Good(Saga[Order], name="tests.definition_errors.nested_result"):
        @dataclass
        class Receipt:
            number: int

        @step(idempotency_key="r-{order_id}")
        def receipt(self) -> Receipt: return Good.Receipt(1)

    assert Good.definition.step("receipt").return_type() is Good.Receipt


# -- the pivot (DESIGN §7) -----------------------------------------------------------------


def test_more_than_one_pivot() -> None:
    with pytest.raises(SagaDefinitionError) as info:
        class Bad(Saga[Order]):
            @step(idempotency_key="charge-{order_id}", pivot=True)
            def charge(self) -> None: ...

            @step(idempotency_key="confirm-{order_id}", pivot=True)
            def confirm(self) -> None: ...

    assert raised(info) == ("Bad.confirm: a saga has at most one pivot, and Bad.charge is one already; "
                            "keep pivot=True only on the step after which nothing can be undone")


def test_a_compensation_on_the_pivot() -> None:
    with pytest.raises(SagaDefinitionError) as info:
        class Bad(Saga[Order]):
            @step(idempotency_key="charge-{order_id}", pivot=True)
            def charge(self) -> None: ...

            @compensates(charge)
            def refund(self) -> None: ...

    assert raised(info) == (
        "Bad.refund: compensates the pivot 'charge', which is the point of no return and is never "
        "compensated; remove @compensates('charge'), or, if charge can be undone, make a later step "
        "the pivot")


def test_a_compensation_on_a_step_after_the_pivot() -> None:
    with pytest.raises(SagaDefinitionError) as info:
        class Bad(Saga[Order]):
            @step(idempotency_key="charge-{order_id}", pivot=True)
            def charge(self) -> None: ...

            @step(idempotency_key="ship-{order_id}")
            def ship(self) -> None: ...

            @compensates(ship)
            def cancel_shipment(self) -> None: ...

    assert raised(info) == (
        "Bad.cancel_shipment: compensates 'ship', which runs after the pivot 'charge' and so is retried "
        "until it succeeds, never compensated; remove @compensates('ship'), or make a later step the "
        "pivot so that ship runs before it")


def test_a_step_beside_the_pivot() -> None:
    with pytest.raises(SagaDefinitionError) as info:
        class Bad(Saga[Order]):
            @step(idempotency_key="reserve-{order_id}")
            def reserve(self) -> None: ...

            @step(idempotency_key="charge-{order_id}", pivot=True)
            def charge(self) -> None: ...

            @step(idempotency_key="audit-{order_id}", after=reserve)
            def audit(self) -> None: ...

    assert raised(info) == (
        "Bad.audit: runs beside the pivot 'charge' (neither before nor after it), so a failure of audit "
        "could neither be undone with the steps before the pivot nor retried with those after it; order "
        "it: add 'charge' to its after= (retried after the pivot), or add 'audit' to the pivot's after= "
        "(compensatable before it)")


def test_pivot_must_be_a_bool() -> None:
    with pytest.raises(SagaDefinitionError) as info:
        class Bad(Saga[Order]):
            @step(idempotency_key="charge-{order_id}", pivot="yes")  # type: ignore[call-overload]
            def charge(self) -> None: ...

    assert raised(info) == "Bad.charge: pivot= must be True or False, got 'yes'"


# -- semantic locks (DESIGN §7) ------------------------------------------------------------


@dataclass
class Transfer:
    src: str
    dst: str
    cents: int


def test_locks_given_as_a_list() -> None:
    with pytest.raises(SagaDefinitionError) as info:
        class Bad(Saga[Transfer], locks=["account:{src}"]):
            @step(idempotency_key="move-{src}")
            def move(self) -> None: ...

    assert raised(info) == ("Bad: locks= must be a tuple, not a list (a definition is frozen); write "
                            "locks=('account:{src}',)")


def test_locks_given_as_a_bare_string() -> None:
    with pytest.raises(SagaDefinitionError) as info:
        class Bad(Saga[Transfer], locks="account:{src}"):
            @step(idempotency_key="move-{src}")
            def move(self) -> None: ...

    assert raised(info) == ("Bad: locks= is the single string 'account:{src}', which would be read as one "
                            "template per character; pass a tuple, e.g. locks=('account:{src}',)")


def test_locks_given_as_something_else() -> None:
    with pytest.raises(SagaDefinitionError) as info:
        class Bad(Saga[Transfer], locks={"account:{src}"}):
            @step(idempotency_key="move-{src}")
            def move(self) -> None: ...

    assert raised(info) == ('Bad: locks= must be a tuple of key templates, e.g. locks=("account:{src}", '
                            "\"account:{dst}\"), got set {'account:{src}'}")


def test_a_lock_that_is_no_template() -> None:
    with pytest.raises(SagaDefinitionError) as info:
        class Bad(Saga[Transfer], locks=("account:{src}", 7, "")):
            @step(idempotency_key="move-{src}")
            def move(self) -> None: ...

    assert raised(info).splitlines() == [
        'Bad: locks= holds 7, which is no key template; give non-empty strings, e.g. '
        'locks=("account:{src}", "account:{dst}")',
        "Bad: locks= holds '', which is no key template; give non-empty strings, e.g. "
        'locks=("account:{src}", "account:{dst}")',
    ]


def test_a_lock_template_without_any_field() -> None:
    with pytest.raises(SagaDefinitionError) as info:
        class Bad(Saga[Transfer], locks=("accounts",)):
            @step(idempotency_key="move-{src}")
            def move(self) -> None: ...

    assert raised(info) == (
        "Bad: locks= template 'accounts' has no {field}, so every Bad would take the same lock and none "
        'could run beside another; include an input field, e.g. locks=("account:{src}", "account:{dst}")')


def test_a_lock_template_field_the_input_type_lacks() -> None:
    with pytest.raises(SagaDefinitionError) as info:
        class Bad(Saga[Transfer], locks=("account:{source}", "run:{saga_id}")):
            @step(idempotency_key="move-{src}")
            def move(self) -> None: ...

    assert raised(info).splitlines() == [
        "Bad: locks= template 'account:{source}' uses 'source', which the input type Transfer does not "
        "have; use one of: cents, dst, src",
        "Bad: locks= template 'run:{saga_id}' uses 'saga_id', which the input type Transfer does not "
        "have; use one of: cents, dst, src",
    ]


@pytest.mark.parametrize(("template", "field", "plain"), [
    ("account:{src.id}", "{src.id}", "{src}"),
    ("account:{dst[0]}", "{dst[0]}", "{dst}"),
])
def test_a_lock_template_with_attribute_access_or_indexing(template: str, field: str, plain: str) -> None:
    with pytest.raises(SagaDefinitionError) as info:
        class Bad(Saga[Transfer], locks=(template,)):
            @step(idempotency_key="move-{src}")
            def move(self) -> None: ...

    assert raised(info) == (
        f"Bad: locks= template {template!r} uses {field}; a template names input fields only, without "
        f"attribute access, indexing or positional fields: write {plain}, or give the input a field with "
        "the value the lock needs")


# -- transactional steps (DESIGN §9) -------------------------------------------------------


def test_an_async_transactional_step() -> None:
    with pytest.raises(SagaDefinitionError) as info:
        class Bad(Saga[Order]):
            @step(idempotency_key="insert-{order_id}", transactional=True)
            async def insert(self) -> None: ...

    assert raised(info) == (
        "Bad.insert: @step(transactional=True) needs a sync method: self.db is a synchronous SQLAlchemy "
        "Session on the saga's connection; make it a plain def (not async def), or drop transactional=True")


def test_an_async_transactional_compensation() -> None:
    with pytest.raises(SagaDefinitionError) as info:
        class Bad(Saga[Order]):
            @step(idempotency_key="insert-{order_id}")
            def insert(self) -> None: ...

            @compensates(insert, transactional=True)
            async def delete(self) -> None: ...

    assert raised(info) == (
        "Bad.delete: @compensates(transactional=True) needs a sync method: self.db is a synchronous "
        "SQLAlchemy Session on the saga's connection; make it a plain def (not async def), or drop "
        "transactional=True")


def test_a_step_cannot_be_called_db() -> None:
    with pytest.raises(SagaDefinitionError) as info:
        class Bad(Saga[Order]):
            @step(idempotency_key="db-{order_id}")
            def db(self) -> None: ...

    assert raised(info) == ("Bad.db: a step cannot be called 'db' because the saga instance uses that "
                            "name (self.db); rename the step")
