"""Database URLs as they may be printed: every password replaced by ``***``.

A password can sit in the URL's user info (``postgresql://app:secret@db/app``)
or in a query parameter that the driver passes on to libpq
(``...?password=secret``, ``...?sslpassword=secret``). Both are masked, also
in URLs that do not parse.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote, unquote

from sqlalchemy.engine import URL, make_url

__all__ = ["is_secret_parameter", "mask_url", "secrets_in"]

MASK = "***"
_TOKEN = "sagadslmaskedvalue0"

#: Query parameter names whose value is a secret (matched case-insensitively, anywhere in the name:
#: ``password``, ``sslpassword``, ``PGPASSWORD``, ``passwd``, ``pwd``, ``secret``, ``token``...).
_SECRET_NAME = re.compile(r"pass(?:word|wd)?|pwd|secret|token", re.IGNORECASE)
#: ``://user:password@`` in a URL that may not parse.
_USERINFO = re.compile(r"(://[^:/@\s?#]*:)([^@\s]*)@")
#: ``?name=value`` / ``&name=value`` / ``;name=value`` in a URL that may not parse.
_QUERY_PARAM = re.compile(r"([?&;]([^=&;#\s]+)=)([^&;#\s]*)")


def is_secret_parameter(name: str) -> bool:
    """True when the URL query parameter ``name`` carries a password or another secret."""
    return bool(_SECRET_NAME.search(name))


def _mask_query_text(text: str) -> str:
    def mask(match: re.Match[str]) -> str:
        return match.group(1) + MASK if is_secret_parameter(unquote(match.group(2))) else match.group(0)

    return _QUERY_PARAM.sub(mask, text)


def mask_url(url: str | URL | Any) -> str:
    """The URL as text with every password replaced by ``***``.

    Masks the password of the user info and the value of every query
    parameter that names a secret (``password``, ``sslpassword``...). A text
    that is not a parsable URL is masked the same way, by pattern.
    """
    try:
        parsed = url if isinstance(url, URL) else make_url(str(url))
        # The renderer percent-encodes query values: mask with a plain token, then show it as ``***``.
        query = {key: (_TOKEN if is_secret_parameter(key) else value) for key, value in parsed.query.items()}
        return parsed.set(query=query).render_as_string(hide_password=True).replace(_TOKEN, MASK)
    except Exception:
        return _mask_query_text(_USERINFO.sub(r"\1***@", str(url)))


def secrets_in(text: str) -> set[str]:
    """The passwords in a URL (or any text holding URLs), as written and percent-decoded/encoded.

    For redacting them from messages that echo them back, e.g. a driver's
    error that quotes its connection string.
    """
    found: set[str] = set()
    for match in _USERINFO.finditer(text):
        found.add(match.group(2))
    for match in _QUERY_PARAM.finditer(text):
        if is_secret_parameter(unquote(match.group(2))):
            found.add(match.group(3))
    try:
        parsed = make_url(text)
    except Exception:
        pass
    else:
        if parsed.password:
            found.add(str(parsed.password))
        for key, value in parsed.query.items():
            if is_secret_parameter(key):
                found.update([value] if isinstance(value, str) else value)
    # A password can appear percent-encoded in the URL and decoded in driver errors.
    for secret in list(found):
        found.update({unquote(secret), quote(secret, safe="")})
    return {s for s in found if s and s != MASK}
