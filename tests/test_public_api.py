"""The public surface (DESIGN §1, §3): names, error codes, enums, storages and locks."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

import sagadsl
from sagadsl import (
    InMemoryStorage,
    Lock,
    NoopLock,
    SagaEngine,
    SagaError,
    SqlStorage,
    StepStatus,
    Storage,
    ThreadLock,
    WorkflowStatus,
)

DESIGN_ERROR_CODES = {
    "SagaDefinitionError": "DEFINITION_ERROR",
    "IdempotencyRequiredError": "IDEMPOTENCY_REQUIRED",
    "IdempotencyConflictError": "IDEMPOTENCY_CONFLICT",
    "SagaFailedError": "SAGA_FAILED",
    "CompensationFailedError": "COMPENSATION_FAILED",
    "DeadLetterError": "DEAD_LETTER",
    "RetryCapExceededError": "RETRY_CAP_EXCEEDED",
    "ExecutionTimeoutError": "EXECUTION_TIMEOUT",
    "StepTimeoutError": "STEP_TIMEOUT",
    "SagaLockedError": "TRANSACTION_LOCKED",
}
OTHER_ERRORS = ["SerializationError", "UnknownSagaError", "DefinitionChangedError", "SchemaOutOfDateError"]


def test_every_name_in_all_is_importable() -> None:
    missing = [name for name in sagadsl.__all__ if not hasattr(sagadsl, name)]

    assert missing == []
    assert len(set(sagadsl.__all__)) == len(sagadsl.__all__)


@pytest.mark.parametrize("name", ["Saga", "SagaMeta", "step", "compensates", "RetryPolicy",
                                  "CompensationPolicy", "SagaEngine", "SagaResult", "WorkflowRecord",
                                  "StepRecord", "ErrorInfo", "QueryResult", "SagaEvents", "SagaEvent",
                                  "Storage", "InMemoryStorage", "SqlStorage", "Lock", "NoopLock",
                                  "MAX_EXECUTION_DURATION", "MAX_RETRY_COUNT", "MAX_ERROR_LENGTH",
                                  "truncate_error", "WorkflowStatus", "StepStatus", "migrate"])
def test_design_names_are_public(name: str) -> None:
    assert name in sagadsl.__all__


@pytest.mark.parametrize(("name", "code"), sorted(DESIGN_ERROR_CODES.items()))
def test_errors_have_their_documented_codes(name: str, code: str) -> None:
    error = getattr(sagadsl, name)

    assert issubclass(error, SagaError)
    assert error.code == code


def test_every_public_error_derives_from_saga_error_with_a_unique_code() -> None:
    errors = [getattr(sagadsl, n) for n in sagadsl.__all__
              if isinstance(getattr(sagadsl, n), type) and issubclass(getattr(sagadsl, n), BaseException)]

    assert all(issubclass(e, SagaError) for e in errors)
    assert set(DESIGN_ERROR_CODES) | set(OTHER_ERRORS) <= {e.__name__ for e in errors}
    codes = [e.code for e in errors if e is not SagaError]
    assert len(codes) == len(set(codes))
    assert all(code.isupper() for code in codes)


def test_errors_carry_their_message_and_saga_id() -> None:
    error = sagadsl.DeadLetterError("saga 'x' is stuck", saga_id="x")

    assert str(error) == "saga 'x' is stuck"
    assert error.saga_id == "x"


def test_statuses_are_string_enums() -> None:
    status: WorkflowStatus = WorkflowStatus.COMPLETED
    assert status == "completed"
    assert f"{WorkflowStatus.DEAD_LETTER}" == "dead_letter"
    assert [s.value for s in WorkflowStatus] == ["pending", "compensating", "completed", "failed",
                                                 "dead_letter", "cancelled"]
    assert [s.value for s in StepStatus] == ["pending", "completed", "failed", "compensated",
                                             "compensation_failed"]
    assert isinstance(StepStatus.COMPENSATED, str)


def test_in_memory_storage_is_not_production_safe_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    storage = InMemoryStorage()

    with caplog.at_level(logging.WARNING, logger="sagadsl.engine"):
        SagaEngine(storage).close()

    assert storage.is_production_safe is False
    assert isinstance(storage, Storage)
    warnings = [r for r in caplog.records if r.name == "sagadsl.engine" and r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == [
        "sagadsl is using InMemoryStorage(), which is not production safe: sagas are lost when the "
        "process exits; use SQLite or PostgreSQL outside tests"]


def test_sql_storage_is_production_safe_and_silent(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="sagadsl.engine"):
        engine = SagaEngine(f"sqlite:///{tmp_path / 'app.db'}")
    engine.close()

    assert isinstance(engine.storage, SqlStorage)
    assert engine.storage.is_production_safe is True
    assert isinstance(engine.storage, Storage)
    assert not [r for r in caplog.records if r.name == "sagadsl.engine"]


def test_default_engine_uses_the_environment_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAGADSL_DATABASE_URL", f"sqlite:///{tmp_path / 'env.db'}")

    with SagaEngine() as engine:
        assert isinstance(engine.storage, SqlStorage)
        assert engine.storage.url.endswith("env.db")
    assert (tmp_path / "env.db").exists()


def test_embedded_default_is_a_sqlite_file_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SAGADSL_DATABASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)

    with SagaEngine():
        pass

    assert sagadsl.DEFAULT_DATABASE_URL == "sqlite:///sagadsl.db"
    assert (tmp_path / "sagadsl.db").exists()


def test_shipped_locks_satisfy_the_lock_protocol() -> None:
    assert isinstance(NoopLock(), Lock)
    assert isinstance(ThreadLock(), Lock)


def test_thread_lock_refuses_a_second_holder() -> None:
    lock = ThreadLock()

    with lock.acquire("s1"):
        with pytest.raises(sagadsl.SagaLockedError):
            with lock.acquire("s1"):
                pass
        with lock.acquire("s2"):
            pass
    with lock.acquire("s1"):
        pass
