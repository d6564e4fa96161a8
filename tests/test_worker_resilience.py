"""`lambent worker` survives Redis outages and stops within its grace period.

Real processes throughout: a redis-server of the test's own (append-only, fsync always, a password in a 0600
file), so that it can be killed with -9 and started again on the same port; `lambent serve` to accept the
events; `lambent worker` processes. The `recorder` function leaves a file per run, so that runs are counted
from outside the platform (hence unjailed: a jail hides the host's folders).
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path
from typing import Any, Iterator

import orjson
import pytest
import redis
import rq
import yaml

from .helpers import UNJAILED, Gateway, RedisServer, Role, start_gateway, start_worker, wait_until

GRACE_S = 3.0
MARGIN_S = 4.0                     # a generous allowance for a busy machine on top of what is promised
NOT_REACHABLE = "Redis is not reachable"
CONFIG = {**UNJAILED, "async": {"lease_s": 2, "queued_check_s": 2, "poll_s": 0.05, "shutdown_grace_s": GRACE_S},
          "metrics": {"worker_port": 0}}


@pytest.fixture
def node(tmp_path: Path, own_redis: RedisServer) -> Iterator[Gateway]:
    gateway = start_gateway(tmp_path / "node", own_redis.url, config=CONFIG)
    try:
        yield gateway
    finally:
        gateway.stop()


@pytest.fixture
def workers() -> Iterator[list[Role]]:
    """The workers a test starts; each is stopped (by PID) after it, whatever the test did."""
    started: list[Role] = []
    try:
        yield started
    finally:
        for worker in started:
            worker.stop()


def enqueue(gateway: Gateway, folder: Path, count: int, **event: Any) -> list[str]:
    ids = []
    with gateway.client() as client:
        for _ in range(count):
            response = client.post("/functions/recorder/invoke", json={"folder": str(folder), **event},
                                   headers={"X-Invocation-Type": "Event"})
            assert response.status_code == 202, response.text
            ids.append(response.json()["requestId"])
    return ids


def runs(folder: Path) -> list[str]:
    """The request id of every run the recorder made, one per run."""
    return [name.split(".")[0] for name in os.listdir(folder)]


def idle_in_rq(gateway: Gateway, pid: int) -> bool:
    connection = redis.Redis.from_url(gateway.redis_url)
    try:
        return any(w.pid == pid and w.get_state() == "idle" for w in rq.Worker.all(connection=connection))
    finally:
        connection.close()


def stop_and_time(worker: Role, signum: int = signal.SIGTERM, *, timeout: float = 60) -> float:
    began = time.monotonic()
    worker.process.send_signal(signum)
    worker.process.wait(timeout)
    took = time.monotonic() - began
    print(f"{worker.log_path.stem}: stopped in {took:.2f} s (exit {worker.process.returncode})")
    return took


def record(server: RedisServer, request_id: str) -> dict[str, Any]:
    client = server.client()
    try:
        raw: dict[bytes, bytes] = client.hgetall(f"lambent:inv:{request_id}")  # type: ignore[assignment]
    finally:
        client.close()
    return {key.decode(): value.decode() for key, value in raw.items() if key != b"payload"}


# -- outages ----------------------------------------------------------------------------------------------


def test_an_outage_mid_run_loses_no_event_and_the_workers_carry_on_by_themselves(
        tmp_path: Path, own_redis: RedisServer, node: Gateway, workers: list[Role]) -> None:
    folder = tmp_path / "runs"
    folder.mkdir()
    workers += [start_worker(node, name="first"), start_worker(node, name="second")]
    [slow] = enqueue(node, folder, 1, first_sleep_s=3)      # runs through the outage, ends before Redis is back
    accepted = [slow] + enqueue(node, folder, 200, first_sleep_s=0.02)
    wait_until(lambda: slow in runs(folder) and len(runs(folder)) >= 20, timeout=60,
               message="the slow event and a tenth of the others to run")

    own_redis.kill()                                    # kill -9, mid-run
    down_at = time.monotonic()
    wait_until(lambda: all(NOT_REACHABLE in w.log() for w in workers), timeout=30,
               message="both workers to notice the outage")
    wait_until(lambda: time.monotonic() - down_at >= 4, timeout=10,
               message="an outage longer than the leases and the slow event")
    own_redis.start()                                   # same port, what the append-only file kept

    client = own_redis.client()

    def all_succeeded() -> bool:
        with client.pipeline(transaction=False) as pipe:
            for request_id in accepted:
                pipe.hget(f"lambent:inv:{request_id}", "status")
            return all(status == b"succeeded" for status in pipe.execute())

    try:
        wait_until(all_succeeded, timeout=60, interval=0.2, message="every accepted event to succeed")
    finally:
        client.close()
    assert all(w.process.poll() is None for w in workers), "a worker exited"

    ran = runs(folder)
    assert set(ran) == set(accepted)                    # every accepted event ran at least once
    duplicates = len(ran) - len(set(ran))
    print(f"accepted {len(accepted)}, ran {len(set(ran))}, duplicated {duplicates}")
    assert duplicates <= 2 * len(workers)              # at most what was in flight at the kill, per worker
    # The slow event ended while Redis was away: its outcome was kept and written once Redis was back.
    assert ran.count(slow) == 1
    assert [a["outcome"] for a in orjson.loads(record(own_redis, slow)["history"])] == ["success"]
    for worker in workers:
        log = worker.log()
        assert log.count(NOT_REACHABLE) == 1, log      # one warning for the one outage
        assert "Redis is reachable again" in log
        assert "unhandled exception" not in log and "Traceback" not in log, log


def test_sigterm_while_reconnecting_stops_within_the_grace(own_redis: RedisServer, node: Gateway,
                                                           workers: list[Role]) -> None:
    worker = start_worker(node)
    workers.append(worker)
    wait_until(lambda: idle_in_rq(node, worker.process.pid), timeout=30, message="the worker to be idle")
    own_redis.kill()
    down_at = time.monotonic()
    wait_until(lambda: NOT_REACHABLE in worker.log(), timeout=30, message="the worker to notice the outage")
    wait_until(lambda: time.monotonic() - down_at > 2.5, timeout=10, message="the worker to be backing off")

    took = stop_and_time(worker)
    assert worker.process.returncode == 0, worker.log()
    assert took < GRACE_S + MARGIN_S, worker.log()


# -- shutdown ---------------------------------------------------------------------------------------------


def test_sigterm_when_idle_stops_at_once(node: Gateway, workers: list[Role]) -> None:
    worker = start_worker(node)
    workers.append(worker)
    wait_until(lambda: idle_in_rq(node, worker.process.pid), timeout=30, message="the worker to be idle")

    took = stop_and_time(worker)
    assert worker.process.returncode == 0, worker.log()
    assert took < 1.0 + MARGIN_S, worker.log()          # a blocking dequeue returns every second
    assert not idle_in_rq(node, worker.process.pid)     # it told RQ it is gone


def test_sigterm_when_busy_stops_the_sandbox_at_the_grace_and_the_event_runs_again(
        tmp_path: Path, own_redis: RedisServer, node: Gateway, workers: list[Role]) -> None:
    folder = tmp_path / "runs"
    folder.mkdir()
    worker = start_worker(node)
    workers.append(worker)
    [request_id] = enqueue(node, folder, 1, first_sleep_s=60)
    [first_run] = wait_until(lambda: os.listdir(folder), timeout=30, message="the handler to start")
    sandbox_pid = int(first_run.split(".")[2])

    took = stop_and_time(worker)
    assert worker.process.returncode == 0, worker.log()
    assert GRACE_S - 1.5 < took < GRACE_S + MARGIN_S, worker.log()       # it waited for the handler, then not
    assert "invocation stopped by the shutdown" in worker.log()
    wait_until(lambda: not _alive(sandbox_pid), timeout=10, message="the sandbox to be gone")
    assert record(own_redis, request_id)["status"] == "running"          # left to its (released) lease

    workers.append(start_worker(node, name="next"))                      # any worker runs it again
    wait_until(lambda: record(own_redis, request_id)["status"] == "succeeded", timeout=30,
               message="the stopped invocation to run again")
    attempts = orjson.loads(record(own_redis, request_id)["history"])
    assert [a["outcome"] for a in attempts] == ["worker_lost", "success"]
    assert len(os.listdir(folder)) == 2


def patient(node: Gateway, folder: Path) -> str:
    """A config file like the node's with a grace long enough that only a second signal explains a stop."""
    config = yaml.safe_load(node.config_path.read_text())
    config["async"]["shutdown_grace_s"] = 60
    path = folder / "patient.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def second_signal(worker: Role, seen: str) -> float:
    """SIGTERM, then (once `seen` is in its log and a second has passed: sooner, it counts as the same request,
    as a terminal's Ctrl-C reaches every process of the group) SIGINT; the seconds from SIGINT to its exit."""
    worker.process.send_signal(signal.SIGTERM)
    first = time.monotonic()
    wait_until(lambda: seen in worker.log(), timeout=10, message="the first signal to be seen")
    wait_until(lambda: time.monotonic() - first > 1.2, timeout=5, message="a second to pass")
    return stop_and_time(worker, signal.SIGINT)


def test_a_second_signal_stops_a_busy_worker_at_once(tmp_path: Path, node: Gateway, workers: list[Role]) -> None:
    folder = tmp_path / "runs"
    folder.mkdir()
    worker = start_worker(node, args=("--config", patient(node, tmp_path)))
    workers.append(worker)
    enqueue(node, folder, 1, first_sleep_s=60)
    [first_run] = wait_until(lambda: os.listdir(folder), timeout=30, message="the handler to start")
    sandbox_pid = int(first_run.split(".")[2])

    took = second_signal(worker, "stop requested")
    assert worker.process.returncode == 1, worker.log()                 # forced, not a clean stop
    assert took < 1.0 + MARGIN_S, worker.log()
    wait_until(lambda: not _alive(sandbox_pid), timeout=10, message="the sandbox to be gone")


def test_worker_concurrency_parent_stops_its_idle_workers_within_the_grace(node: Gateway,
                                                                           workers: list[Role]) -> None:
    parent = start_worker(node, name="pool", args=("--concurrency", "2"))
    workers.append(parent)
    children = wait_until(lambda: child_pids(parent, 2), timeout=60, message="both workers to start")
    wait_until(lambda: all(idle_in_rq(node, pid) for pid in children), timeout=30, message="both idle")

    took = stop_and_time(parent)
    assert parent.process.returncode == 0, parent.log()
    assert took < GRACE_S + MARGIN_S, parent.log()
    assert not any(_alive(pid) for pid in children)
    assert len(re.findall(r": worker-[12] +stopped$", parent.log(), flags=re.M)) == 2, parent.log()   # as asked, both


def test_worker_concurrency_parent_passes_a_second_signal_on_and_its_busy_workers_stop_at_once(
        tmp_path: Path, node: Gateway, workers: list[Role]) -> None:
    folder = tmp_path / "runs"
    folder.mkdir()
    parent = start_worker(node, name="pool", args=("--config", patient(node, tmp_path), "--concurrency", "2"))
    workers.append(parent)
    enqueue(node, folder, 2, first_sleep_s=60)
    wait_until(lambda: len(os.listdir(folder)) == 2, timeout=60, message="both workers to run a handler")
    sandboxes = [int(name.split(".")[2]) for name in os.listdir(folder)]
    children = child_pids(parent, 2)

    took = second_signal(parent, "lambent up: stopping")
    assert parent.process.returncode == 1, parent.log()                 # forced, not a clean stop
    assert took < 2.0 + MARGIN_S, parent.log()
    assert not any(_alive(pid) for pid in children)
    wait_until(lambda: not any(_alive(pid) for pid in sandboxes), timeout=10, message="the sandboxes to be gone")


def child_pids(parent: Role, count: int) -> list[int]:
    """The pids of the workers a `worker --concurrency N` parent started, once `count` of them said so."""
    found = sorted({int(pid) for pid in re.findall(r"worker started .*?pid=(\d+)", parent.log())})
    return found if len(found) == count else []


def _alive(pid: int) -> bool:
    """A live process, not a zombie waiting for its parent."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")
