"""When an active saga counts as stuck: longer without a commit than its own timeouts allow."""

from __future__ import annotations

from datetime import timedelta

from ..definition import SagaDefinition
from ..limits import MAX_EXECUTION_DURATION

__all__ = ["STUCK_GRACE", "stuck_allowance"]

#: Slack on top of what a saga's own timeouts allow before it counts as stuck.
STUCK_GRACE = timedelta(minutes=1)


def stuck_allowance(definition: SagaDefinition) -> timedelta:
    """How long an active saga may go without a commit before it counts as stuck."""
    worst = timedelta(0)
    for s in definition.steps:
        if s.timeout is None or s.kind == "retriable":  # retriable: retried until the budget ends
            return MAX_EXECUTION_DURATION + STUCK_GRACE
        waits = sum(s.retry.delay(i) for i in range(1, s.retry.max_attempts))
        worst = max(worst, timedelta(seconds=s.timeout * s.retry.max_attempts + waits))
        policy = s.compensation_policy
        if policy.timeout is None:
            return MAX_EXECUTION_DURATION + STUCK_GRACE
        waits = sum(policy.delay(i) for i in range(1, policy.max_attempts))
        worst = max(worst, timedelta(seconds=policy.timeout * policy.max_attempts + waits))
    return min(worst, MAX_EXECUTION_DURATION) + STUCK_GRACE
