"""Hard limits that no configuration changes (DESIGN §2.7)."""

from __future__ import annotations

from datetime import timedelta
from typing import Final

__all__ = ["MAX_EXECUTION_DURATION", "MAX_RETRY_COUNT", "MAX_ERROR_LENGTH", "truncate_error"]

#: Wall-clock budget of a saga from its start (or from its last retry out of
#: dead letter). No forward step starts after it and a running step is cut at it.
MAX_EXECUTION_DURATION: Final = timedelta(minutes=15)

#: How many times a saga may be moved back from dead letter.
MAX_RETRY_COUNT: Final = 10

#: Stored error texts are cut to this many UTF-8 bytes.
MAX_ERROR_LENGTH: Final = 2048

_ELLIPSIS = "…"


def truncate_error(text: str, limit: int = MAX_ERROR_LENGTH) -> str:
    """Cut ``text`` so that its UTF-8 encoding fits in ``limit`` bytes.

    A cut text ends with an ellipsis; no character is split in half.
    """
    # PostgreSQL text cannot hold NUL; an error message that carries one must
    # still be storable, or the saga could never record its failure.
    text = text.replace("\x00", "\\x00")
    encoded = text.encode("utf-8")
    if len(encoded) <= limit:
        return text
    budget = limit - len(_ELLIPSIS.encode("utf-8"))
    return encoded[:budget].decode("utf-8", errors="ignore") + _ELLIPSIS


def describe_exception(exc: BaseException) -> str:
    """Render an exception as ``Type: message``, cut to ``MAX_ERROR_LENGTH`` bytes."""
    message = str(exc)
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return truncate_error(text)
