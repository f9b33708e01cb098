"""Saga classes by registered name, so a stored saga can be rebuilt from its row."""

from __future__ import annotations

import importlib
import threading
from typing import TYPE_CHECKING

from .errors import SagaDefinitionError, UnknownSagaError

if TYPE_CHECKING:
    from .saga import Saga

__all__ = ["register", "lookup", "registered_names", "import_modules"]

_lock = threading.Lock()
_by_name: dict[str, type[Saga[object]]] = {}


def _origin(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def register(name: str, cls: type[Saga[object]]) -> None:
    """Register ``cls`` under ``name``.

    Re-registering the same module and qualified name (a reloaded module, a
    class statement run twice) replaces the old class; another class raises.
    """
    with _lock:
        existing = _by_name.get(name)
        if existing is not None and existing is not cls and _origin(existing) != _origin(cls):
            raise SagaDefinitionError(
                f"{cls.__name__}: the saga name {name!r} is already registered by "
                f"{_origin(existing)}; pass another name: class {cls.__name__}(Saga[...], name=\"...\")"
            )
        _by_name[name] = cls


def lookup(name: str) -> type[Saga[object]]:
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
    with _lock:
        return sorted(_by_name)


def import_modules(modules: list[str] | tuple[str, ...]) -> None:
    """Import each module so that its saga classes register themselves."""
    for module in modules:
        importlib.import_module(module)
