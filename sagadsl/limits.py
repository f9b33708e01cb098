"""Hard limits that no configuration changes (DESIGN §2.7), and text made storable."""

from __future__ import annotations

import traceback
from datetime import timedelta
from typing import Final

__all__ = ["MAX_EXECUTION_DURATION", "MAX_RETRY_COUNT", "MAX_ERROR_LENGTH", "MAX_TRACEBACK_LENGTH",
           "MAX_CLAIMS_WITHOUT_PROGRESS", "truncate_error", "describe_exception", "format_traceback",
           "storable_text"]

#: Wall-clock budget of a saga from its start (or from its last retry out of
#: dead letter). No forward step starts after it and a running step is cut at it.
MAX_EXECUTION_DURATION: Final = timedelta(minutes=15)

#: How many times a saga may be moved back from dead letter.
MAX_RETRY_COUNT: Final = 10

#: Stored error texts are cut to this many UTF-8 bytes.
MAX_ERROR_LENGTH: Final = 2048

#: Stored tracebacks are cut to this many UTF-8 bytes.
MAX_TRACEBACK_LENGTH: Final = 16 * 1024

#: Executors that may take a saga in a row without committing anything before
#: the next one parks it in dead letter as a poison saga (its steps kill their
#: process, or something else does each time), instead of repeating its effects.
MAX_CLAIMS_WITHOUT_PROGRESS: Final = 3

_ELLIPSIS = "…"


def storable_text(text: str) -> str:
    """``text`` with what no backend can store escaped: NUL and lone surrogates.

    PostgreSQL text cannot hold U+0000, and no UTF-8 database can hold a lone
    surrogate; an error message that carries either must still be storable,
    or the saga could never record its failure.
    """
    text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def truncate_error(text: str, limit: int = MAX_ERROR_LENGTH) -> str:
    """Make ``text`` storable and cut it so that its UTF-8 encoding fits in ``limit`` bytes.

    A cut text ends with an ellipsis; no character is split in half.
    """
    text = storable_text(text)
    encoded = text.encode("utf-8")
    if len(encoded) <= limit:
        return text
    budget = limit - len(_ELLIPSIS.encode("utf-8"))
    return encoded[:budget].decode("utf-8", errors="ignore") + _ELLIPSIS


def _message_of(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception as inner:  # a __str__ that raises must not hide the failure itself
        return f"<str() raised {type(inner).__name__}>"


def describe_exception(exc: BaseException) -> str:
    """Render an exception as ``Type: message``, storable and cut to ``MAX_ERROR_LENGTH`` bytes."""
    message = _message_of(exc)
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return truncate_error(text)


def format_traceback(exc: BaseException, limit: int = MAX_TRACEBACK_LENGTH) -> str:
    """The traceback of ``exc`` (with its causes), storable and at most ``limit`` UTF-8 bytes.

    The frames are what an operator needs, so an over-long exception message
    is cut first (to ``MAX_ERROR_LENGTH`` bytes per line); if the frames alone
    are still too long (deep recursion), the outermost ones are dropped.
    """
    try:
        lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
    except Exception:
        lines = [describe_exception(exc) + "\n"]
    lines = [truncate_error(line.rstrip("\n")) + "\n" for line in "".join(lines).splitlines()]
    text = "".join(lines)
    if len(text.encode("utf-8")) <= limit:
        return text
    head, kept, size = lines[:1], [], len(lines[0].encode("utf-8")) + 64
    for line in reversed(lines[1:]):
        size += len(line.encode("utf-8"))
        if size > limit:
            break
        kept.append(line)
    return "".join(head + [f"  … (outer frames cut to fit {limit} bytes)\n"] + kept[::-1])
