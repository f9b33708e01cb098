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

from .check import check_storable
from .decode import from_json
from .encode import JSONValue, to_json

__all__ = ["to_json", "from_json", "check_storable", "JSONValue"]
