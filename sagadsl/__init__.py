"""sagadsl: durable sagas for Python.

Declare a saga as a class of ``@step`` methods with ``@compensates``
counterparts, and run it with :class:`SagaEngine`. Every step's result is
committed before the next step runs; a failure compensates completed steps in
reverse order; a failed compensation parks the saga in dead letter.
"""

import logging as _logging

from .clock import Clock, SystemClock
from .codec import from_json, to_json
from .decorators import compensates, step
from .definition import CompensationDefinition, SagaDefinition, StepDefinition, StepKind
from .engine import DEFAULT_DATABASE_URL, SagaEngine
from .errors import (
    CompensationFailedError,
    DeadLetterError,
    DefinitionChangedError,
    ExecutionTimeoutError,
    IdempotencyConflictError,
    IdempotencyRequiredError,
    InvalidStateError,
    ResourceLockedError,
    RetryCapExceededError,
    SagaDefinitionError,
    SagaCancelledError,
    SagaError,
    SagaFailedError,
    SagaLockedError,
    SagaNotFoundError,
    SchemaOutOfDateError,
    SerializationError,
    StepTimeoutError,
    StorageError,
    UnknownSagaError,
)
from .events import SagaEvent, SagaEvents
from .keys import render_locks
from .limits import MAX_ERROR_LENGTH, MAX_EXECUTION_DURATION, MAX_RETRY_COUNT, truncate_error
from .locks import Lock, NoopLock, ThreadLock
from .policies import CompensationPolicy, RetryPolicy
from .records import ErrorInfo, QueryResult, SagaResult, StepRecord, WorkflowRecord
from .saga import Saga, SagaMeta
from .status import StepStatus, WorkflowStatus
from .storage import InMemoryStorage, SqlStorage, Storage, StorageSession, migrate

__version__ = "0.1.0"

__all__ = [
    # DSL
    "Saga", "SagaMeta", "step", "compensates", "RetryPolicy", "CompensationPolicy",
    "SagaDefinition", "StepDefinition", "CompensationDefinition", "StepKind", "render_locks",
    # engine and records
    "SagaEngine", "SagaResult", "WorkflowRecord", "StepRecord", "ErrorInfo", "QueryResult",
    "WorkflowStatus", "StepStatus", "DEFAULT_DATABASE_URL",
    # storage and locks
    "Storage", "StorageSession", "SqlStorage", "InMemoryStorage", "migrate", "Lock", "NoopLock",
    "ThreadLock",
    # events, time, data
    "SagaEvents", "SagaEvent", "Clock", "SystemClock", "to_json", "from_json",
    # limits
    "MAX_EXECUTION_DURATION", "MAX_RETRY_COUNT", "MAX_ERROR_LENGTH", "truncate_error",
    # errors
    "SagaError", "SagaDefinitionError", "IdempotencyRequiredError", "IdempotencyConflictError",
    "SagaFailedError", "SagaCancelledError", "CompensationFailedError", "DeadLetterError", "RetryCapExceededError",
    "ExecutionTimeoutError", "StepTimeoutError", "SagaLockedError", "SerializationError",
    "UnknownSagaError", "SagaNotFoundError", "InvalidStateError", "DefinitionChangedError",
    "SchemaOutOfDateError", "StorageError", "ResourceLockedError",
    "__version__",
]

# A library's log records go where the application sends them: without this,
# an application that configured no logging would get every failing step's
# traceback on stderr from Python's last-resort handler.
_logging.getLogger("sagadsl").addHandler(_logging.NullHandler())
