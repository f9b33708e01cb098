"""Who may drive a saga: claims, owner identity and pluggable locks.

By default each storage claims sagas natively (PostgreSQL: a session-level
advisory lock on the connection that drives the saga; SQLite: an owner and
lease on the saga row; memory: an in-process table). A team that wants
another mechanism passes ``SagaEngine(lock=...)`` with a :class:`Lock`;
:class:`NoopLock` turns claiming off for a single process that runs each
saga id once.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
import uuid
from datetime import datetime
from typing import ContextManager, Iterator, Protocol, runtime_checkable

from .errors import SagaLockedError

__all__ = ["Lock", "NoopLock", "ThreadLock", "owner_token", "owner_is_dead", "claim_is_free", "advisory_key"]


@runtime_checkable
class Lock(Protocol):
    """Grants one executor at a time the right to drive a saga id."""

    def acquire(self, saga_id: str) -> ContextManager[None]:
        """Hold the saga for the duration of the ``with`` block.

        Raises:
            SagaLockedError: another executor holds it.
        """
        ...


class NoopLock:
    """No claiming at all: for one process that never runs a saga id twice at once.

    Not safe with several processes or threads driving the same saga ids.
    """

    def acquire(self, saga_id: str) -> ContextManager[None]:
        return contextlib.nullcontext()


class ThreadLock:
    """Exclusive within this process only (threads and tasks)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._held: set[str] = set()

    @contextlib.contextmanager
    def acquire(self, saga_id: str) -> Iterator[None]:
        with self._guard:
            if saga_id in self._held:
                raise SagaLockedError(f"saga {saga_id!r} is being run by another executor in this process",
                                      saga_id=saga_id)
            self._held.add(saga_id)
        try:
            yield
        finally:
            with self._guard:
                self._held.discard(saga_id)


_HOST = socket.gethostname()


def _proc_stat(pid: int) -> tuple[str, str]:
    """State letter and kernel start time of ``pid`` from /proc, or ``("?", "-")``."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return "?", "-"
    # The command name (field 2) may contain spaces; the fields after it are fixed.
    fields = stat[stat.rindex(b")") + 2:].split()
    return fields[0].decode(), fields[19].decode()


def _start_time(pid: int) -> str:
    return _proc_stat(pid)[1]


_PROCESS = f"{_HOST}:{os.getpid()}:{_start_time(os.getpid())}"
_process_pid = os.getpid()


def _process_identity() -> str:
    global _PROCESS, _process_pid
    if os.getpid() != _process_pid:  # forked child
        _process_pid = os.getpid()
        _PROCESS = f"{_HOST}:{_process_pid}:{_start_time(_process_pid)}"
    return _PROCESS


def owner_token() -> str:
    """A fresh claim token: ``host:pid:start:random``, unique per executor."""
    return f"{_process_identity()}:{uuid.uuid4().hex[:12]}"


def owner_is_dead(owner: str) -> bool:
    """True when ``owner`` names a process on this host that no longer runs.

    Owners on other hosts cannot be checked; their lease decides.
    """
    parts = owner.rsplit(":", 3)
    if len(parts) != 4:
        return False
    host, pid_text, started, _ = parts
    if host != _HOST:
        return False
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    state, current = _proc_stat(pid)
    if state in ("Z", "X"):  # killed, not yet reaped by its parent
        return True
    return started != "-" and current != "-" and current != started


def _owner_host(owner: str) -> str | None:
    parts = owner.rsplit(":", 3)
    return parts[0] if len(parts) == 4 else None


def claim_is_free(owner: str | None, lease_expires_at: datetime | None, now: datetime) -> bool:
    """Whether a lease-based claim may be taken over.

    Free when nobody holds it, when its owner is a process on this host that
    is gone, or when its lease ran out and its owner is on another host. A
    live owner on this host keeps its claim however long its work takes: its
    liveness is known for certain, and a lease could run out under a long
    compensation.
    """
    if owner is None:
        return True
    if _owner_host(owner) == _HOST:
        return owner_is_dead(owner)
    return lease_expires_at is not None and lease_expires_at < now


def advisory_key(saga_id: str) -> int:
    """A stable signed 64-bit key for ``pg_try_advisory_lock``."""
    digest = hashlib.blake2b(saga_id.encode(), digest_size=8, person=b"sagadsl").digest()
    return int.from_bytes(digest, "big", signed=True)
