"""Griffe extension: leave parameters whose name starts with ``_`` out of the API reference.

Such parameters are internal: ``step(_misused=None, *, ...)`` only catches the
mistake of writing ``@step`` without parentheses, and is not for callers.
Loaded by mkdocstrings (``extensions`` in mkdocs.yml).
"""

from __future__ import annotations

from typing import Any

import griffe


class HidePrivateParameters(griffe.Extension):
    def on_function_instance(self, *, func: griffe.Function, **kwargs: Any) -> None:
        for param in [p for p in func.parameters if p.name.lstrip("*").startswith("_")]:
            del func.parameters[param.name]
