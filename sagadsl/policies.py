"""Retry and compensation policies attached to steps."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["RetryPolicy", "CompensationPolicy"]


def _check_common(owner: str, max_attempts: int, backoff: float, multiplier: float,
                  max_backoff: float, jitter: float) -> None:
    if not isinstance(max_attempts, int) or isinstance(max_attempts, bool) or max_attempts < 1:
        raise ValueError(f"{owner}: max_attempts must be an int >= 1, got {max_attempts!r}")
    if backoff < 0:
        raise ValueError(f"{owner}: backoff must be >= 0 seconds, got {backoff!r}")
    if multiplier < 1:
        raise ValueError(f"{owner}: multiplier must be >= 1, got {multiplier!r}")
    if max_backoff < 0:
        raise ValueError(f"{owner}: max_backoff must be >= 0 seconds, got {max_backoff!r}")
    if not 0 <= jitter <= 1:
        raise ValueError(f"{owner}: jitter must be between 0 and 1, got {jitter!r}")


def _delay(backoff: float, multiplier: float, max_backoff: float, jitter: float,
           failed_attempt: int, rng: random.Random | None) -> float:
    base = min(backoff * multiplier ** (failed_attempt - 1), max_backoff)
    if jitter and base:
        spread = (rng or random).uniform(-jitter, jitter)
        base = max(0.0, base * (1 + spread))
    return base


@dataclass(frozen=True)
class RetryPolicy:
    """How often a step is attempted and how long to wait between attempts.

    Args:
        max_attempts: Total attempts, the first included. 1 means no retry.
        backoff: Seconds to wait after the first failed attempt.
        multiplier: Each further wait is the previous one times this.
        max_backoff: Upper bound of a single wait, in seconds.
        jitter: Spread each wait by up to this fraction either way (0..1), so
            that many sagas failing together do not retry in lockstep.
        retry_on: Exception types that are retried; others fail at once.
        give_up_on: Exception types never retried, even if in ``retry_on``.
    """

    max_attempts: int = 1
    backoff: float = 0.0
    multiplier: float = 2.0
    max_backoff: float = 60.0
    jitter: float = 0.0
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    give_up_on: tuple[type[BaseException], ...] = field(default=())

    def __post_init__(self) -> None:
        _check_common("RetryPolicy", self.max_attempts, self.backoff, self.multiplier,
                      self.max_backoff, self.jitter)

    def should_retry(self, error: BaseException, attempt: int) -> bool:
        """Whether a failed ``attempt`` (1-based) with ``error`` gets another try."""
        if attempt >= self.max_attempts:
            return False
        if isinstance(error, self.give_up_on):
            return False
        return isinstance(error, self.retry_on)

    def delay(self, failed_attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after the ``failed_attempt``-th attempt failed."""
        return _delay(self.backoff, self.multiplier, self.max_backoff, self.jitter,
                      failed_attempt, rng)


@dataclass(frozen=True)
class CompensationPolicy:
    """How a compensation is retried before the saga goes to dead letter.

    Compensations are retried by default (3 attempts, 0.5 s then 1 s apart)
    because giving up on an undo needs a person.

    Args:
        max_attempts: Total attempts, the first included.
        backoff: Seconds to wait after the first failed attempt.
        multiplier: Each further wait is the previous one times this.
        max_backoff: Upper bound of a single wait, in seconds.
        jitter: Spread each wait by up to this fraction either way (0..1).
        timeout: Seconds one attempt may take, or None for no limit.
    """

    max_attempts: int = 3
    backoff: float = 0.5
    multiplier: float = 2.0
    max_backoff: float = 30.0
    jitter: float = 0.0
    timeout: float | None = None

    def __post_init__(self) -> None:
        _check_common("CompensationPolicy", self.max_attempts, self.backoff, self.multiplier,
                      self.max_backoff, self.jitter)
        if self.timeout is not None and self.timeout <= 0:
            raise ValueError(f"CompensationPolicy: timeout must be > 0 seconds, got {self.timeout!r}")

    def should_retry(self, error: BaseException, attempt: int) -> bool:
        """Whether a failed ``attempt`` (1-based) gets another try: any error, until attempts run out.

        An undo that gives up needs a person, so no error type is exempt.
        """
        return attempt < self.max_attempts

    def delay(self, failed_attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after the ``failed_attempt``-th attempt failed."""
        return _delay(self.backoff, self.multiplier, self.max_backoff, self.jitter,
                      failed_attempt, rng)
