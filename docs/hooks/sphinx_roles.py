"""MkDocs hook: show Sphinx cross-reference roles in docstrings as plain code.

Some docstrings use reST roles (:class:`~sagadsl.Storage`), which mkdocstrings
renders literally as ":class:" followed by code. This hook drops the role and
the leading ``~`` (keeping only the last dotted name, as Sphinx would).
"""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(r":(?:class|meth|func|mod|attr|exc|obj|data):<code>(~?)([^<]+)</code>")


def _shorten(match: re.Match[str]) -> str:
    tilde, target = match.group(1), match.group(2)
    return f"<code>{target.rsplit('.', 1)[-1] if tilde else target}</code>"


def on_page_content(html: str, **kwargs: Any) -> str:
    return _ROLE.sub(_shorten, html)
