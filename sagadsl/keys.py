"""Key templates: parsed when a class is created, rendered from a running saga's input.

A template is a ``str.format`` string over the input's fields (and, for a
step's idempotency key, ``saga_id``): ``"charge-{order_id}"``,
``"account:{src}"``. Only plain field names are allowed; attribute access
and indexing (``{order_id.__class__}``, ``{lines[0]}``) would let a template
reach any attribute of the input, and are refused when the class is created
(sagadsl/build.py). A field that is None or empty is refused when the key is
rendered: it would let different sagas share a key.
"""

from __future__ import annotations

import re
import string
from typing import Any, Mapping, Protocol

from .decorators import KeySpec
from .errors import IdempotencyRequiredError

__all__ = ["template_fields", "template_problem", "NO_FIELD", "render_key", "render_locks",
           "LockedDefinition"]


def template_fields(template: str) -> tuple[tuple[str, str], ...]:
    """The replacement fields of ``template``: ``(field name, format spec)`` in order.

    The field name is given as written (``"order_id"``, or ``"order_id.x"`` for
    the attribute access that the class build refuses).

    Raises:
        ValueError: if ``template`` is not a valid format string.
    """
    return tuple((name, spec or "") for _, name, spec, _ in string.Formatter().parse(template)
                 if name is not None)


#: What :func:`template_problem` says of a template with no field at all;
#: the callers word that one themselves.
NO_FIELD = "has no field"


def template_problem(template: str, known_fields: frozenset[str] | None, input_type: Any, *,
                     allow_saga_id: bool, fix: str) -> str | None:
    """What is wrong with a key template (the end of a message), :data:`NO_FIELD`, or None.

    Args:
        template: The template as written.
        known_fields: The input type's field names, or None if they cannot be known.
        input_type: The input type, for the message.
        allow_saga_id: Whether ``{saga_id}`` may be used (step keys: yes; locks: no).
        fix: The alternative to suggest for attribute access, e.g. "or pass a callable (...)".
    """
    try:
        fields = template_fields(template)
    except ValueError as exc:
        return f"is not a valid format template ({exc})"
    if not fields:
        return NO_FIELD
    for name, spec in fields:
        if not name.isidentifier() or "{" in spec:
            root = re.split(r"[.\[]", name, maxsplit=1)[0]
            plain = f"{{{root}}}" if root.isidentifier() else "{field}"
            return (f"uses {{{name}{':' + spec if spec else ''}}}; a template names input fields only, "
                    f"without attribute access, indexing or positional fields: write {plain}, {fix}")
    if known_fields is None:
        return None
    allowed = known_fields | {"saga_id"} if allow_saga_id else known_fields
    missing = [name for name, _ in fields if name not in allowed]
    if not missing:
        return None
    return (f"uses {', '.join(repr(m) for m in missing)}, which the input type "
            f"{getattr(input_type, '__qualname__', repr(input_type))} does not have; use one of: "
            f"{', '.join(sorted(allowed))}")


def render_key(spec: KeySpec, saga: Any, *, where: str) -> str:
    """A step's idempotency key for ``saga``: its template rendered, or its callable called.

    Args:
        spec: The template or callable given to ``@step(idempotency_key=...)``.
        saga: The saga instance (its ``input`` and ``saga_id``).
        where: ``Class.step``, for messages.

    Raises:
        IdempotencyRequiredError: if a field is missing, None or empty, or the
            callable returns no non-empty string.
    """
    key = spec(saga) if callable(spec) else _render(spec, saga, where, "idempotency key", saga_id=True)
    if not isinstance(key, str) or not key.strip():
        raise IdempotencyRequiredError(
            f"{where}: the idempotency key rendered as {key!r}; it must be a non-empty string",
            saga_id=saga.saga_id,
        )
    return key


class LockedDefinition(Protocol):
    """What :func:`render_locks` reads of a :class:`~sagadsl.SagaDefinition`."""

    @property
    def class_name(self) -> str: ...

    @property
    def locks(self) -> tuple[str, ...]: ...


def render_locks(definition: LockedDefinition, saga: Any) -> tuple[str, ...]:
    """The semantic lock keys of ``saga``: its class's ``locks=`` templates rendered.

    Args:
        definition: The saga class's definition (``SagaCls.definition``).
        saga: The saga instance whose input the templates are rendered from.

    Returns:
        The keys sorted and without duplicates (two templates may render to
        one key, e.g. a transfer from an account to itself), so that every
        saga takes its keys in the same order.

    Raises:
        IdempotencyRequiredError: naming the class and the template, if a
            field is missing from the input, None or empty.
    """
    return tuple(sorted({_render(template, saga, definition.class_name, "lock", saga_id=False)
                         for template in definition.locks}))


def _render(template: str, saga: Any, where: str, what: str, *, saga_id: bool) -> str:
    try:
        return template.format_map(_Fields(saga, where, template, what, saga_id=saga_id))
    except (KeyError, AttributeError, IndexError) as exc:
        raise IdempotencyRequiredError(
            f"{where}: the {what} {template!r} cannot be rendered from the input "
            f"({type(exc).__name__}: {exc}); give the input that field or change the template",
            saga_id=saga.saga_id,
        ) from exc


class _Fields(Mapping[str, Any]):
    """Input fields (attributes or keys), and ``saga_id`` for step keys, as ``format_map`` reads them.

    A field that is None or empty is refused: ``"refund-{payment_id}"`` with
    no payment id would give many sagas the same key downstream.
    """

    def __init__(self, saga: Any, where: str, template: str, what: str, *, saga_id: bool) -> None:
        self._saga = saga
        self._where = where
        self._template = template
        self._what = what
        self._saga_id = saga_id

    def __getitem__(self, name: str) -> Any:
        if name == "saga_id" and self._saga_id:
            return self._saga.saga_id
        value = self._saga.input
        if isinstance(value, Mapping):
            field_value = value[name]
        else:
            try:
                field_value = getattr(value, name)
            except AttributeError:
                raise KeyError(name) from None
        if field_value is None or (isinstance(field_value, str) and not field_value.strip()):
            raise IdempotencyRequiredError(
                f"{self._where}: the {self._what} {self._template!r} uses the input field {name!r}, "
                f"which is {field_value!r}; a key part that is empty would let different sagas share "
                f"a key, so give the field a value or key on another field",
                saga_id=self._saga.saga_id,
            )
        return field_value

    def __iter__(self) -> Any:
        return iter(())

    def __len__(self) -> int:
        return 0
