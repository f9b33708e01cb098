"""What the code of a running step can ask about itself: its key, attempt and session.

The executor sets these context variables around each attempt; the saga's
``step_key`` and ``attempt`` properties read them. They are context
variables, not attributes, because one saga instance runs parallel steps
at once, each in its own task (and thread, for sync steps).
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

__all__ = ["step_key", "attempt_number", "step_db"]

#: The idempotency key of the step (or compensated step) being attempted.
step_key: ContextVar[str | None] = ContextVar("sagadsl_step_key", default=None)
#: The 1-based attempt of the step or compensation being run.
attempt_number: ContextVar[int | None] = ContextVar("sagadsl_attempt", default=None)
#: The ORM session of the transactional step (or compensation) being attempted.
step_db: ContextVar[Any] = ContextVar("sagadsl_step_db", default=None)
