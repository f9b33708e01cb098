"""The claim of an executor whose machine vanished is released within 60 seconds (DESIGN §2.6, §2.11).

A vanished machine sends nothing: no FIN, no RST. On PostgreSQL a saga's claim
is a session advisory lock held by the server-side backend of the executor's
connection, so the claim dies only when the SERVER notices that its client
is gone. With the kernel's defaults that takes hours; sagadsl asks every
connection's backend for TCP keepalives (``sagadsl.storage.connect``).

The test builds a real network path it can cut: a network namespace (the
executor's "machine") joined to this one by a veth pair, with addresses the
test assigns to both ends, and a throwaway PostgreSQL cluster that listens on
the host end of the pair (and on 127.0.0.1 for the test itself). The cluster
runs with PostgreSQL's default keepalive settings: only what sagadsl sends in
each connection's startup packet shortens them. An executor process inside
the namespace runs a saga whose second step blocks; the test checks that a
takeover is refused while the executor is reachable, then drops every packet
on both ends of the pair (a ``blackhole`` qdisc: the links stay up, nothing
is answered or reset), and another engine in the test process must take the
saga over and finish it within 60 seconds.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from sagadsl import Saga, SagaEngine, SagaLockedError, SqlStorage, WorkflowStatus, migrate, step
from sagadsl.storage.connect import KEEPALIVES_COUNT, KEEPALIVES_IDLE, KEEPALIVES_INTERVAL
from sagadsl.storage.sql import advisory_lock_key

from .conftest import IN_CI
from .torture.cluster import _bindir, _free_port

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
#: What DESIGN §2.11 promises.
RELEASE_BUDGET = 60.0
HOLDING = "SAGADSL-VANISHED-HOLDING"


@dataclass
class Hold:
    hold_id: str
    #: The process whose run of step ``hold`` blocks (the executor that vanishes).
    holder_pid: int


class Holding(Saga[Hold], name="tests.pg_vanished.holding"):
    @step(idempotency_key="first-{hold_id}")
    def first(self) -> str:
        return "first-done"

    @step(idempotency_key="hold-{hold_id}")
    def hold(self, first: str) -> str:
        if os.getpid() == self.input.holder_pid:
            print(HOLDING, flush=True)
            time.sleep(600)  # the machine vanishes while this step runs
        return "held"


def child_main(url: str, saga_id: str) -> None:
    """The executor on the machine that vanishes: run the saga (it blocks in ``hold``)."""
    engine = SagaEngine(url)
    engine.run(Holding, Hold(saga_id, os.getpid()), saga_id=saga_id, idempotency_key=f"k-{saga_id}")


# -- the network and the server ------------------------------------------------


def _run(*cmd: str, timeout: float = 30) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout)


def _missing_capability() -> str | None:
    """Why this machine cannot build the test's network, or None."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "creating network namespaces and veth pairs needs root"
    for tool in ("ip", "tc", "runuser"):
        if shutil.which(tool) is None:
            return f"the {tool!r} command is not installed"
    if _bindir() is None:
        return "the PostgreSQL server binaries (initdb, pg_ctl) are not installed"
    return None


def _lacking(reason: str) -> None:
    message = f"cannot simulate a vanished machine: {reason}"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


class Network:
    """A network namespace (the executor's machine) joined to this one by a veth pair."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}"
        self.netns = f"sgdsl-vanish-{tag}"
        self.host_dev = f"sgvh{tag}"
        self.peer_dev = f"sgvp{tag}"
        subnet = 1 + os.getpid() % 250
        self.host_ip = f"169.254.{subnet}.1"
        self.peer_ip = f"169.254.{subnet}.2"
        self._created = False
        self.blackholed_with = ""

    def create(self) -> None:
        self._created = True
        _run("ip", "netns", "add", self.netns)
        _run("ip", "link", "add", self.host_dev, "type", "veth", "peer", "name", self.peer_dev)
        _run("ip", "link", "set", self.peer_dev, "netns", self.netns)
        _run("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_dev)
        _run("ip", "link", "set", self.host_dev, "up")
        self._in_ns("ip", "addr", "add", f"{self.peer_ip}/30", "dev", self.peer_dev)
        self._in_ns("ip", "link", "set", self.peer_dev, "up")
        self._in_ns("ip", "link", "set", "lo", "up")

    def _in_ns(self, *cmd: str) -> None:
        _run("ip", "netns", "exec", self.netns, *cmd)

    def command(self, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *cmd]

    def blackhole(self) -> None:
        """Drop every packet both ways, links up: no FIN, no RST, no ICMP."""
        try:
            _run("tc", "qdisc", "add", "dev", self.host_dev, "root", "blackhole")
            self._in_ns("tc", "qdisc", "add", "dev", self.peer_dev, "root", "blackhole")
            self.blackholed_with = "tc blackhole qdisc on both ends"
        except subprocess.CalledProcessError:
            # No blackhole qdisc in this kernel: take both links down instead,
            # which also sends nothing to either end.
            _run("ip", "link", "set", self.host_dev, "down")
            self._in_ns("ip", "link", "set", self.peer_dev, "down")
            self.blackholed_with = "both veth ends set down"

    def remove(self) -> None:
        if not self._created:
            return
        subprocess.run(["ip", "link", "del", self.host_dev], check=False, stderr=subprocess.DEVNULL, timeout=30)
        subprocess.run(["ip", "netns", "del", self.netns], check=False, stderr=subprocess.DEVNULL, timeout=30)


class Cluster:
    """A throwaway PostgreSQL server listening on 127.0.0.1 and on the veth's host end.

    Its keepalive settings are PostgreSQL's defaults (the operating system's:
    2 hours idle): only what sagadsl asks for per connection shortens them.
    """

    def __init__(self, listen_on: str) -> None:
        bindir = _bindir()
        assert bindir is not None
        self.bindir = bindir
        self.port = _free_port()
        self.root = Path(tempfile.mkdtemp(prefix="sagadsl-vanish-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.listen_on = listen_on
        self.local_url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self.remote_url = f"postgresql://postgres@{listen_on}:{self.port}/postgres"
        shutil.chown(self.root, "postgres", "postgres")
        os.chmod(self.root, 0o755)
        self._started = False

    def _pg(self, *args: str) -> None:
        _run("runuser", "-u", "postgres", "--", str(self.bindir / args[0]), *args[1:], timeout=120)

    def start(self) -> None:
        self._pg("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        with open(self.data / "pg_hba.conf", "a") as hba:
            hba.write(f"host all all {self.listen_on}/30 trust\n")
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1,{self.listen_on} "
                   "-c max_connections=50 -c shared_buffers=32MB -c fsync=off "
                   "-c log_connections=on -c log_disconnections=on")
        self._started = True
        self._pg("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def stop(self) -> None:
        if self._started:
            try:
                self._pg("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
                pass
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def vanishing() -> Iterator[tuple[Network, Cluster]]:
    reason = _missing_capability()
    if reason:
        _lacking(reason)
    network = Network()
    cluster: Cluster | None = None
    try:
        try:
            network.create()
        except subprocess.CalledProcessError as exc:
            _lacking(f"`{' '.join(map(str, exc.cmd))}` failed: {exc.stderr.decode(errors='replace').strip()}")
        cluster = Cluster(network.host_ip)
        cluster.start()
        migrate(cluster.local_url)
        yield network, cluster
    finally:
        if cluster is not None:
            cluster.stop()
        network.remove()


def _holder_address(url: str, saga_id: str) -> str | None:
    """The client address of the backend holding the saga's claim, or None."""
    key = advisory_lock_key(saga_id, None) & 0xFFFFFFFFFFFFFFFF
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(text(
                "SELECT host(a.client_addr) FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
                "WHERE l.locktype = 'advisory' AND l.granted AND l.classid::bigint = :hi "
                "AND l.objid::bigint = :lo AND l.objsubid = 1"),
                {"hi": key >> 32, "lo": key & 0xFFFFFFFF}).scalar()
    finally:
        engine.dispose()


def test_a_vanished_executors_claim_is_taken_over_within_60_seconds(
        vanishing: tuple[Network, Cluster]) -> None:
    network, cluster = vanishing
    saga_id = "vanish-1"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen(
        network.command(sys.executable, "-c",
                        f"from tests.test_pg_vanished import child_main; "
                        f"child_main({cluster.remote_url!r}, {saga_id!r})"),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    output: queue.Queue[str] = queue.Queue()
    seen: list[str] = []

    def read() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            output.put(line.decode(errors="replace").rstrip())

    threading.Thread(target=read, daemon=True).start()
    engine = SagaEngine(SqlStorage(cluster.local_url))
    try:
        deadline = time.monotonic() + 60
        while HOLDING not in seen:
            try:
                seen.append(output.get(timeout=max(0.1, deadline - time.monotonic())))
            except queue.Empty:
                pass
            if HOLDING not in seen and (time.monotonic() > deadline or child.poll() is not None):
                pytest.fail("the executor in the namespace never reached step hold:\n" + "\n".join(seen))
        assert _holder_address(cluster.local_url, saga_id) == network.peer_ip, \
            "the executor across the veth pair should hold the saga's claim"

        # While the executor's machine is reachable, nobody else may drive the saga.
        with pytest.raises(SagaLockedError):
            engine.resume(saga_id)

        network.blackhole()
        cut = time.monotonic()
        attempts = 0
        while True:
            attempts += 1
            try:
                result = engine.resume(saga_id)
                break
            except SagaLockedError:
                if time.monotonic() - cut > RELEASE_BUDGET:
                    pytest.fail(f"the vanished executor's claim was still held {RELEASE_BUDGET:.0f}s after "
                                f"the network was cut ({network.blackholed_with}); server log:\n"
                                f"{cluster.log_tail()}")
                time.sleep(1.0)
        elapsed = time.monotonic() - cut
        print(f"\nvanished executor: claim taken over {elapsed:.1f}s after the network was cut "
              f"({network.blackholed_with}; keepalives {KEEPALIVES_IDLE}s + {KEEPALIVES_COUNT} x "
              f"{KEEPALIVES_INTERVAL}s; {attempts} takeover attempts)")
        assert result.status == WorkflowStatus.COMPLETED
        assert result.results == {"first": "first-done", "hold": "held"}
        assert elapsed < RELEASE_BUDGET
        assert child.poll() is None, "the partitioned executor is still alive: only its network vanished"
        record = engine.get(saga_id)
        assert record is not None and record.status == WorkflowStatus.COMPLETED
    finally:
        engine.close()
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
        child.wait(30)
        assert child.stdout is not None
        child.stdout.close()
