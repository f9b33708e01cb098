"""The errors sagadsl raises.

Every error derives from :class:`SagaError` and carries a stable ``code`` that
scripts and dashboards can match on. Messages name the saga class, step or saga
id involved, say what is wrong and, where there is one, how to fix it.
"""

from __future__ import annotations

__all__ = [
    "SagaError",
    "SagaDefinitionError",
    "IdempotencyRequiredError",
    "IdempotencyConflictError",
    "SagaFailedError",
    "SagaCancelledError",
    "CompensationFailedError",
    "DeadLetterError",
    "RetryCapExceededError",
    "ExecutionTimeoutError",
    "StepTimeoutError",
    "SagaLockedError",
    "SerializationError",
    "UnknownSagaError",
    "SagaNotFoundError",
    "InvalidStateError",
    "DefinitionChangedError",
    "SchemaOutOfDateError",
    "StorageError",
    "ResourceLockedError",
]


class SagaError(Exception):
    """Root of every error raised by sagadsl.

    Attributes:
        code: A stable, upper-case identifier for the kind of error.
        saga_id: The saga the error is about, when there is one.
    """

    code: str = "SAGA_ERROR"

    def __init__(self, message: str, *, saga_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.saga_id = saga_id

    def __str__(self) -> str:
        return self.message


class SagaDefinitionError(SagaError, TypeError):
    """A saga class statement is wrong; raised when the class is created."""

    code = "DEFINITION_ERROR"


class IdempotencyRequiredError(SagaError, ValueError):
    """A saga or step has no idempotency key, or an empty one."""

    code = "IDEMPOTENCY_REQUIRED"


class IdempotencyConflictError(SagaError):
    """A saga id already exists with another idempotency key or saga class."""

    code = "IDEMPOTENCY_CONFLICT"


class SagaFailedError(SagaError):
    """A step failed and every completed step was compensated.

    The step's exception is the ``__cause__`` when it happened in this process.

    Attributes:
        step_name: The step that failed.
        error: The step's error, as stored (cut to ``MAX_ERROR_LENGTH`` bytes).
    """

    code = "SAGA_FAILED"

    def __init__(
        self, message: str, *, saga_id: str | None = None, step_name: str | None = None,
        error: str | None = None,
    ) -> None:
        super().__init__(message, saga_id=saga_id)
        self.step_name = step_name
        self.error = error


class SagaCancelledError(SagaFailedError):
    """The saga was cancelled (``engine.cancel``) and every completed step was compensated.

    Attributes:
        reason: The reason given to ``cancel``.
    """

    code = "SAGA_CANCELLED"

    def __init__(self, message: str, *, saga_id: str | None = None, reason: str | None = None) -> None:
        super().__init__(message, saga_id=saga_id)
        self.reason = reason


class CompensationFailedError(SagaError):
    """A compensation still failed after its retries; the saga is in dead letter.

    Attributes:
        step_name: The step whose failure started the compensation.
        error: The original step error.
        compensation_error: The error of the (first) compensation that failed.
    """

    code = "COMPENSATION_FAILED"

    def __init__(
        self, message: str, *, saga_id: str | None = None, step_name: str | None = None,
        error: str | None = None, compensation_error: str | None = None,
    ) -> None:
        super().__init__(message, saga_id=saga_id)
        self.step_name = step_name
        self.error = error
        self.compensation_error = compensation_error


class DeadLetterError(SagaError):
    """The saga is in dead letter; it must be retried before it can run."""

    code = "DEAD_LETTER"


class RetryCapExceededError(SagaError):
    """The saga was already retried ``MAX_RETRY_COUNT`` times from dead letter."""

    code = "RETRY_CAP_EXCEEDED"


class ExecutionTimeoutError(SagaError):
    """The saga ran past ``MAX_EXECUTION_DURATION`` from its start."""

    code = "EXECUTION_TIMEOUT"


class StepTimeoutError(SagaError, TimeoutError):
    """A step or compensation attempt ran past its ``timeout``."""

    code = "STEP_TIMEOUT"


class SagaLockedError(SagaError):
    """Another live executor is driving this saga id."""

    code = "TRANSACTION_LOCKED"


class SerializationError(SagaError, TypeError):
    """A value cannot be stored as JSON, or a stored value cannot be decoded."""

    code = "SERIALIZATION_ERROR"


class UnknownSagaError(SagaError, LookupError):
    """No saga class is registered under a stored saga name."""

    code = "UNKNOWN_SAGA"


class SagaNotFoundError(SagaError, LookupError):
    """No saga with this id exists in the storage."""

    code = "SAGA_NOT_FOUND"


class InvalidStateError(SagaError):
    """The saga is not in a status that allows the requested action."""

    code = "INVALID_STATE"


class DefinitionChangedError(SagaError):
    """A stored saga's step graph is incompatible with the class as it is now."""

    code = "DEFINITION_CHANGED"


class SchemaOutOfDateError(SagaError):
    """The database schema is missing or behind this version of sagadsl."""

    code = "SCHEMA_OUT_OF_DATE"


class StorageError(SagaError):
    """The database failed or cannot be reached.

    Raw driver and SQLAlchemy errors never leave the library: they are the
    ``__cause__`` of this error, whose message carries no SQL, parameters or
    password.

    Attributes:
        permanent: True when the same write would fail the same way again
            (the database refused the data itself, e.g. a value it cannot
            store), False when it may succeed later (a lost connection, a
            lock timeout).
    """

    code = "STORAGE_ERROR"

    def __init__(self, message: str, *, saga_id: str | None = None, permanent: bool = False) -> None:
        super().__init__(message, saga_id=saga_id)
        self.permanent = permanent


class ResourceLockedError(SagaError):
    """A semantic lock key the saga needs is held by another unfinished saga.

    Raised by ``run``, which then writes nothing; ``submit`` instead queues
    the saga until its keys are free.

    Attributes:
        key: The lock key that is taken.
        holder: The id of the saga that holds it (or waits for it first).
    """

    code = "RESOURCE_LOCKED"

    def __init__(self, message: str, *, saga_id: str | None = None, key: str | None = None,
                 holder: str | None = None) -> None:
        super().__init__(message, saga_id=saga_id)
        self.key = key
        self.holder = holder
