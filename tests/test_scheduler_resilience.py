"""`lambent scheduler` rides out a Redis outage (an occurrence due meanwhile fires once when Redis is back) and
stops within its grace period, idle, busy or reconnecting.

Real processes throughout: a redis-server of the test's own (see tests/test_streams_resilience.py), killed with
-9 or stopped (SIGSTOP: a Redis that does not answer) and brought back on the same port; `lambent serve`,
which deploys the function; `lambent scheduler` replicas. No worker runs: fires are counted where they land,
as invocation records and RQ jobs in Redis, and in the stats `GET /schedules` shows.
"""

from __future__ import annotations

import signal
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import orjson
import pytest
import redis
import yaml

from .helpers import Gateway, RedisServer, start_gateway, start_role, wait_until
from .test_streams_resilience import BACK, GRACE_S, MARGIN_S, NOT_REACHABLE, stop_timed


@dataclass
class Cluster:
    tmp: Path
    redis: RedisServer
    gateway: Gateway
    schedulers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start_scheduler(self, **env: str) -> subprocess.Popen[bytes]:
        scheduler = start_role("scheduler", self.tmp / f"scheduler-{len(self.schedulers)}.log",
                               config=self.gateway.config_path, env=env)
        self.schedulers.append(scheduler.process)
        return scheduler.process

    def log(self, index: int = 0) -> str:
        return (self.tmp / f"scheduler-{index}.log").read_text(errors="replace")

    def fires(self) -> dict[int, int]:
        """Scheduled second -> when its invocation was accepted (ms), for every fire of `tick`."""
        client = redis.Redis.from_url(self.redis.url, socket_timeout=5)
        try:
            found = {}
            for key in client.scan_iter("lambent:inv:*"):
                record = client.hgetall(key)
                event = orjson.loads(record[b"payload"])
                scheduled = datetime.strptime(event["time"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
                found[int(scheduled.timestamp())] = int(record[b"received_ms"])
            return found
        finally:
            client.close()

    def jobs(self) -> int:
        """RQ jobs enqueued (no worker takes them): one per fire, so a fire made twice shows here."""
        client = redis.Redis.from_url(self.redis.url, socket_timeout=5)
        try:
            return int(client.llen("rq:queue:lambent-async"))
        finally:
            client.close()

    def stats(self) -> dict[str, int]:
        listing = self.gateway.request("GET", "/schedules", timeout=10).json()["schedules"]
        return next(s["stats"] for s in listing if s["function"] == "tick")


@pytest.fixture
def cluster_factory(tmp_path: Path, own_redis: RedisServer) -> Iterator[Any]:
    made: list[Cluster] = []

    def make(expression: str) -> Cluster:
        folder = tmp_path / "functions" / "tick"
        folder.mkdir(parents=True)
        (folder / "handler.py").write_text("def handler(event, context):\n    return 'ok'\n")
        (folder / "function.yaml").write_text(yaml.safe_dump({"events": [{"schedule": {"expression": expression}}]}))
        gateway = start_gateway(tmp_path / "node", own_redis.url, functions_dir=tmp_path / "functions", config={
            "metrics": {"scheduler_port": 0}, "scheduler": {"shutdown_grace_s": GRACE_S}})
        cluster = Cluster(tmp=tmp_path, redis=own_redis, gateway=gateway)
        made.append(cluster)
        return cluster

    try:
        yield make
    finally:
        for cluster in made:
            for process in cluster.schedulers:
                if process.poll() is None:
                    process.kill()
                    process.wait()
            if cluster.redis.process is not None and cluster.redis.process.poll() is None:
                cluster.redis.signal(signal.SIGCONT)          # a test that stopped it
            elif cluster.redis.process is not None:
                cluster.redis.start()                         # a test that failed with Redis down
            cluster.gateway.stop()


def next_due_ahead(cluster: Cluster, margin_s: float) -> int | None:
    """The next occurrence of a 5-second rate after the latest fire, if it is still `margin_s` away (on a busy
    machine a fire may be seen late: then wait for the next one rather than kill Redis too close to it)."""
    fires = cluster.fires()
    if not fires:
        return None
    due = max(fires) + 5
    return due if time.time() < due - margin_s else None


def test_an_occurrence_due_while_redis_is_down_fires_once_when_it_is_back(cluster_factory: Any) -> None:
    # Given two replicas firing every 5 s
    cluster = cluster_factory("rate(5 seconds)")
    replicas = [cluster.start_scheduler(), cluster.start_scheduler()]
    due = wait_until(lambda: next_due_ahead(cluster, 1.5), timeout=30,
                     message="a fire seen at least 1.5 s before the next occurrence")

    # When Redis is killed before the next occurrence and comes back (same port) only after it was due
    cluster.redis.kill()
    wait_until(lambda: time.time() > due + 1.5, timeout=15, message="the occurrence to fall due during the outage")
    assert all(NOT_REACHABLE in cluster.log(index) for index in range(2))
    back_ms = int(time.time() * 1000)
    cluster.redis.start()

    # Then the occurrence is fired once, as soon as Redis answers, and the schedule goes on without a gap
    wait_until(lambda: due + 10 in cluster.fires(), timeout=30, message="two more occurrences after the outage")
    assert all(replica.poll() is None for replica in replicas)
    assert all(stop_timed(replica)[0] == 0 for replica in replicas)
    # (stopped first, so that no further occurrence fires between the reads below)
    fires = cluster.fires()
    assert back_ms <= fires[due] < (due + 5) * 1000, "fired after Redis was back, before the next occurrence"
    assert sorted(fires) == list(range(min(fires), max(fires) + 1, 5)), sorted(fires)
    assert cluster.jobs() == len(fires), "an occurrence fired twice"
    stats = cluster.stats()
    assert stats["fired"] == len(fires) and stats["late"] >= 1 and stats.get("missed", 0) == 0, stats
    for index in range(len(replicas)):
        log = cluster.log(index)
        assert log.count(NOT_REACHABLE) == 1 and log.count(BACK) == 1, log[-3000:]
        assert "a schedule fire failed" not in log
        assert f"redis://:***@127.0.0.1:{cluster.redis.port}/0" in log and cluster.redis.password not in log


def test_sigterm_stops_an_idle_scheduler_at_once(cluster_factory: Any) -> None:
    cluster = cluster_factory("rate(1 minute)")
    process = cluster.start_scheduler()
    wait_until(lambda: "schedule added" in cluster.log(), timeout=30, message="the scheduler to start")

    code, took = stop_timed(process)

    assert code == 0 and took < MARGIN_S, (code, took)
    assert "scheduler stopped" in cluster.log()


def test_sigterm_stops_the_scheduler_within_the_grace_while_redis_is_down(cluster_factory: Any) -> None:
    cluster = cluster_factory("rate(1 second)")
    process = cluster.start_scheduler()
    wait_until(lambda: cluster.fires(), timeout=30, message="a first fire")
    cluster.redis.kill()
    wait_until(lambda: NOT_REACHABLE in cluster.log(), timeout=30, message="the outage to be seen")

    code, took = stop_timed(process)

    assert code == 0 and took < GRACE_S + MARGIN_S, (code, took)
    assert "scheduler stopped" in cluster.log()


def test_sigterm_stops_the_scheduler_within_the_grace_while_a_fire_waits_on_a_redis_that_does_not_answer(
        cluster_factory: Any) -> None:
    # Given a Redis that takes connections and answers nothing (stopped), with fires due every second
    cluster = cluster_factory("rate(1 second)")
    process = cluster.start_scheduler()
    wait_until(lambda: cluster.fires(), timeout=30, message="a first fire")
    cluster.redis.signal(signal.SIGSTOP)
    stopped = time.monotonic()
    wait_until(lambda: time.monotonic() - stopped > 1.5, timeout=5, message="a fire to be waiting on Redis")

    code, took = stop_timed(process)

    assert code == 0 and took < GRACE_S + MARGIN_S, (code, took)
    assert "scheduler stopped" in cluster.log()


def test_a_second_sigterm_stops_the_scheduler_at_once(cluster_factory: Any) -> None:
    # Given a long grace, and a fire waiting on a Redis that answers nothing
    cluster = cluster_factory("rate(1 second)")
    process = cluster.start_scheduler(LAMBENT_SCHEDULER__SHUTDOWN_GRACE_S="60")
    wait_until(lambda: cluster.fires(), timeout=30, message="a first fire")
    cluster.redis.signal(signal.SIGSTOP)
    stopped = time.monotonic()
    wait_until(lambda: time.monotonic() - stopped > 1.5, timeout=5, message="a fire to be waiting on Redis")
    process.send_signal(signal.SIGTERM)
    first = time.monotonic()
    wait_until(lambda: "stopping scheduler within 60 s" in cluster.log() and time.monotonic() - first > 1.2,
               timeout=10, message="the first signal to be taken (a repeat within a second is the same request)")

    code, took = stop_timed(process, timeout=MARGIN_S)

    assert code == 1 and took < MARGIN_S, (code, took)
