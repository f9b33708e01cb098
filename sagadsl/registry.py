"""Saga classes by registered name, so a stored saga can be rebuilt from its row.

``SagaMeta`` registers each class when its class statement runs (and refuses
a name another class holds); this module looks them up.
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import UnknownSagaError
from .saga import Saga, registered_classes

__all__ = ["lookup", "registered_names", "import_modules"]

#: The registered classes by name (the metaclass's table, read here).
_by_name = registered_classes


def lookup(name: str) -> type[Saga[Any]]:
    """The class registered under ``name``.

    Raises:
        UnknownSagaError: if no such class was imported in this process.
    """
    try:
        return _by_name[name]
    except KeyError:
        raise UnknownSagaError(
            f"no saga class is registered as {name!r} in this process; import the module that "
            f"defines it (saga-admin worker --import MODULE) before resuming"
        ) from None


def registered_names() -> list[str]:
    """All registered saga names, sorted."""
    return sorted(_by_name.copy())


def import_modules(modules: list[str] | tuple[str, ...]) -> None:
    """Import each module so that its saga classes register themselves."""
    for module in modules:
        importlib.import_module(module)
