"""The executor's connection to PostgreSQL dies mid-saga (issue 3: connection loss).

A transient disconnect is retried: the session reconnects, takes the saga's
advisory lock again, checks whether its lost commit landed, and carries on.
A server that stays unreachable past ``reconnect_timeout`` stops the executor
with ``StorageError`` and leaves the saga resumable.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy.engine import make_url

from sagadsl import (
    Saga,
    SagaEngine,
    SagaEvent,
    SagaEvents,
    SagaFailedError,
    SqlStorage,
    StepStatus,
    StorageError,
    WorkflowStatus,
    compensates,
    step,
)
from tests import pg_sagas

pytestmark = pytest.mark.postgres


@dataclass
class Transfer:
    transfer_id: str
    url: str
    schema: str
    fail_c: bool = False


#: What each step and compensation ran, in order (this process only).
ran: list[str] = []
#: Called at the start of a step body, by step name.
hooks: dict[str, Callable[[Transfer, str], None]] = {}


class Transferring(Saga[Transfer], name="tests.pg.transferring"):
    def _act(self, name: str) -> str:
        ran.append(name)
        if name in hooks:
            hooks[name](self.input, self.saga_id)
        if name == "c" and self.input.fail_c:
            raise RuntimeError("c failed on purpose")
        return f"{name}-done"

    @step(idempotency_key="a-{transfer_id}")
    def a(self) -> str:
        return self._act("a")

    @compensates(a)
    def undo_a(self) -> None:
        ran.append("undo_a")

    @step(idempotency_key="b-{transfer_id}")
    def b(self, a: str) -> str:
        return self._act("b")

    @compensates(b)
    def undo_b(self) -> None:
        ran.append("undo_b")

    @step(idempotency_key="c-{transfer_id}")
    def c(self, b: str) -> str:
        return self._act("c")


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    ran.clear()
    hooks.clear()
    yield
    hooks.clear()


@pytest.fixture
def installed(pg_schema: tuple[str, str]) -> tuple[str, str]:
    url, schema = pg_schema
    SqlStorage(url, schema=schema, auto_migrate=True).close()
    return url, schema


def _kill_executor_backend(holders: list[int]) -> Callable[[Transfer, str], None]:
    """A hook that terminates the backend holding the saga's claim, from another connection."""
    def kill(job: Transfer, saga_id: str) -> None:
        pid = pg_sagas.lock_holder(job.url, job.schema, saga_id)
        assert pid is not None
        holders.append(pid)
        pg_sagas.terminate(job.url, pid)
    return kill


def _note_holder(holders: list[int]) -> Callable[[Transfer, str], None]:
    def note(job: Transfer, saga_id: str) -> None:
        pid = pg_sagas.lock_holder(job.url, job.schema, saga_id)
        assert pid is not None
        holders.append(pid)
    return note


@pytest.mark.parametrize("during", ["a", "b", "c"])
def test_backend_terminated_during_a_step_reconnects_and_completes(
        installed: tuple[str, str], during: str) -> None:
    url, schema = installed
    holders: list[int] = []
    for name in "abc":
        hooks[name] = _kill_executor_backend(holders) if name == during else _note_holder(holders)
    engine = SagaEngine(url, schema=schema)
    try:
        result = engine.run(Transferring, Transfer("t-1", url, schema), saga_id="t-1", idempotency_key="k-1")
        record = engine.get("t-1")
    finally:
        engine.close()
    assert result.results == {"a": "a-done", "b": "b-done", "c": "c-done"}
    assert ran == ["a", "b", "c"]
    assert record is not None and record.status == WorkflowStatus.COMPLETED
    assert [s.status for s in record.steps] == [StepStatus.COMPLETED] * 3
    # The claim was re-taken on a new backend after the kill.
    killed_at = "abc".index(during)
    assert len(set(holders[:killed_at + 1])) == 1
    if during != "c":
        assert holders[killed_at + 1] != holders[killed_at]


def test_backend_terminated_between_steps_reconnects_and_completes(installed: tuple[str, str]) -> None:
    url, schema = installed
    holders: list[int] = []

    def between(event: SagaEvent) -> None:
        if event.step == "b":  # a's commit is done, b's body has not started
            _kill_executor_backend(holders)(Transfer("t-2", url, schema), "t-2")

    engine = SagaEngine(url, schema=schema, events=SagaEvents(on_step_start=between))
    try:
        result = engine.run(Transferring, Transfer("t-2", url, schema), saga_id="t-2", idempotency_key="k-2")
    finally:
        engine.close()
    assert result.status == "completed"
    assert ran == ["a", "b", "c"]
    assert holders and pg_sagas.lock_holder(url, schema, "t-2") is None


def test_backend_terminated_before_a_failure_commit_still_compensates(installed: tuple[str, str]) -> None:
    url, schema = installed
    hooks["c"] = _kill_executor_backend([])
    engine = SagaEngine(url, schema=schema)
    try:
        with pytest.raises(SagaFailedError, match="failed at step 'c'"):
            engine.run(Transferring, Transfer("t-3", url, schema, fail_c=True), saga_id="t-3",
                       idempotency_key="k-3")
        record = engine.get("t-3")
    finally:
        engine.close()
    assert ran == ["a", "b", "c", "undo_b", "undo_a"]
    assert record is not None and record.status == WorkflowStatus.FAILED


class Proxy:
    """A TCP relay to the PostgreSQL server that the test can break like a network would."""

    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        self._target = (parsed.host or "127.0.0.1", parsed.port or 5432)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.url = parsed.set(host="127.0.0.1", port=self._listener.getsockname()[1]).render_as_string(
            hide_password=False)
        self._sockets: list[socket.socket] = []
        self._muted: set[socket.socket] = set()
        self._lose_next_answer = False
        #: Server answers dropped by lose_next_answer().
        self.lost_answers: list[bytes] = []
        self._lock = threading.Lock()
        self._open = True
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while self._open:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            server = socket.create_connection(self._target)
            with self._lock:
                self._sockets += [client, server]
            threading.Thread(target=self._upstream, args=(client, server), daemon=True).start()
            threading.Thread(target=self._downstream, args=(server, client), daemon=True).start()

    def _upstream(self, client: socket.socket, server: socket.socket) -> None:
        try:
            while data := client.recv(65536):
                # A statement ends with Sync (extended protocol) or is one
                # Query message (simple protocol).
                if self._lose_next_answer and (data.endswith(_SYNC) or data.startswith(b"Q")):
                    self._lose_next_answer = False
                    self._muted.add(server)
                server.sendall(data)
        except OSError:
            pass
        _hang_up(client, server)

    def _downstream(self, server: socket.socket, client: socket.socket) -> None:
        try:
            while data := server.recv(65536):
                if server in self._muted:
                    self.lost_answers.append(data)  # the client never hears it
                    break
                client.sendall(data)
        except OSError:
            pass
        _hang_up(server, client)

    def lose_next_answer(self) -> None:
        """Let the next statement reach the server, then drop the connection before its answer."""
        self._lose_next_answer = True

    def cut(self) -> None:
        """Drop every relayed connection and refuse new ones."""
        self._open = False
        self._listener.close()
        with self._lock:
            for s in self._sockets:
                _hang_up(s)
                s.close()


_SYNC = b"S\x00\x00\x00\x04"


def _hang_up(*sockets: socket.socket) -> None:
    for s in sockets:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


@pytest.fixture
def proxy(installed: tuple[str, str]) -> Iterator[Proxy]:
    relay = Proxy(installed[0])
    yield relay
    relay.cut()


def test_a_commit_that_landed_before_its_answer_was_lost_is_not_repeated(
        installed: tuple[str, str], proxy: Proxy, caplog: pytest.LogCaptureFixture) -> None:
    url, schema = installed
    # The next statement after step b's body is b's commit, a single
    # statement in autocommit mode: committed once the server has run it.
    hooks["b"] = lambda job, saga_id: proxy.lose_next_answer()
    engine = SagaEngine(SqlStorage(proxy.url, schema=schema))
    try:
        result = engine.run(Transferring, Transfer("t-5", url, schema), saga_id="t-5", idempotency_key="k-5")
    finally:
        engine.close()
    # The server committed (its CommandComplete "UPDATE 1" was dropped). Replaying
    # b's commit would have hit the version fence and stopped the executor; it
    # saw the commit had landed and went on with c.
    assert len(proxy.lost_answers) == 1 and b"UPDATE 1\x00" in proxy.lost_answers[0]
    assert "connection lost while saving saga t-5; reconnecting" in caplog.messages
    assert result.results == {"a": "a-done", "b": "b-done", "c": "c-done"}
    assert ran == ["a", "b", "c"]


def test_unreachable_server_raises_storage_error_and_leaves_the_saga_resumable(
        installed: tuple[str, str], proxy: Proxy) -> None:
    url, schema = installed
    hooks["b"] = lambda job, saga_id: proxy.cut()
    storage = SqlStorage(proxy.url, schema=schema, reconnect_timeout=1.0)
    engine = SagaEngine(storage)
    started = time.monotonic()
    try:
        with pytest.raises(StorageError) as info:
            engine.run(Transferring, Transfer("t-4", url, schema), saga_id="t-4", idempotency_key="k-4")
    finally:
        engine.close()
    assert time.monotonic() - started < 30  # gave up after reconnect_timeout, did not hang
    assert str(info.value) == (
        f"lost the connection to {storage.url} while saving saga 't-4' and could not reconnect "
        "within 1s; the saga stays resumable")
    assert ran == ["a", "b"]

    # Only what was committed is marked: a is done, b's completion never landed.
    direct = SagaEngine(url, schema=schema)
    try:
        record = direct.get("t-4")
        assert record is not None and record.status == WorkflowStatus.PENDING
        assert [(s.name, s.status) for s in record.steps] == [
            ("a", StepStatus.COMPLETED), ("b", StepStatus.PENDING), ("c", StepStatus.PENDING)]
        hooks.clear()
        deadline = time.monotonic() + 10
        while pg_sagas.lock_holder(url, schema, "t-4") is not None and time.monotonic() < deadline:
            time.sleep(0.02)
        result = direct.run(Transferring, Transfer("t-4", url, schema), saga_id="t-4", idempotency_key="k-4")
    finally:
        direct.close()
    assert result.status == "completed"
    assert ran == ["a", "b", "b", "c"]
