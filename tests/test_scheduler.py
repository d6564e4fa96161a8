"""Schedules: real `lambent scheduler` replicas firing rate(1 second) schedules through real workers."""

from __future__ import annotations

import json
import signal
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from .helpers import UNJAILED, Role, start_gateway, start_role, start_worker, wait_until

HANDLER = """
import json, os, time

def handler(event, context):
    with open(os.path.join(os.environ["OUT"], os.environ["AWS_LAMBDA_FUNCTION_NAME"] + ".log"), "a") as f:
        f.write(json.dumps({"event": event, "request_id": context.aws_request_id, "started": time.time()}) + "\\n")
    return "ok"
"""


def write_function(folder: Path, name: str, out: Path, schedules: list[dict[str, Any]]) -> None:
    target = folder / name
    target.mkdir(parents=True)
    (target / "handler.py").write_text(HANDLER)
    (target / "function.yaml").write_text(yaml.safe_dump({
        "environment": {"OUT": str(out)}, "events": [{"schedule": schedule} for schedule in schedules]}))


class Cluster:
    def __init__(self, tmp: Path, redis_url: str, config: dict[str, Any] | None = None) -> None:
        self.tmp = tmp
        self.out = tmp / "out"
        self.out.mkdir()
        self.functions = tmp / "functions"
        write_function(self.functions, "tick", self.out, [{"expression": "rate(1 second)"}])
        write_function(self.functions, "given", self.out,
                       [{"expression": "rate(1 second)", "input": {"k": "v", "n": [1, 2]}}])
        self.gateway = start_gateway(tmp / "node", redis_url, functions_dir=self.functions,
                                     config={"async": {"poll_s": 0.02}, **UNJAILED, **(config or {})})
        self.worker: Role = start_worker(self.gateway)
        self.schedulers: list[subprocess.Popen[bytes]] = []

    def start_scheduler(self) -> subprocess.Popen[bytes]:
        scheduler = start_role("scheduler", self.tmp / f"scheduler-{len(self.schedulers)}.log",
                               config=self.gateway.config_path)
        self.schedulers.append(scheduler.process)
        return scheduler.process

    def fires(self, name: str = "tick") -> list[dict[str, Any]]:
        path = self.out / f"{name}.log"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def schedules(self) -> list[dict[str, Any]]:
        return self.gateway.request("GET", "/schedules", timeout=5).json()["schedules"]

    def stop(self) -> None:
        for process in self.schedulers:
            if process.poll() is None:
                process.terminate()
                process.wait(20)
        self.worker.stop()
        self.gateway.stop()


@pytest.fixture
def cluster(tmp_path: Path, redis_url: str) -> Iterator[Cluster]:
    made = Cluster(tmp_path, redis_url)
    yield made
    made.stop()


def _seconds(fires: list[dict[str, Any]]) -> list[int]:
    return [int(datetime.strptime(f["event"]["time"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp())
            for f in fires]


def _assert_each_second_once(fires: list[dict[str, Any]]) -> None:
    seconds = _seconds(fires)
    assert len(seconds) == len(set(seconds)), f"fired twice: {sorted(seconds)}"
    assert sorted(seconds) == list(range(min(seconds), max(seconds) + 1)), f"a gap: {sorted(seconds)}"


def test_two_replicas_fire_every_occurrence_exactly_once(cluster: Cluster) -> None:
    cluster.start_scheduler()
    cluster.start_scheduler()
    wait_until(lambda: len(cluster.fires()) >= 8, timeout=30, message="eight fires")
    for process in cluster.schedulers:
        process.terminate()
        process.wait(20)
    _assert_each_second_once(cluster.fires())
    assert len({f["request_id"] for f in cluster.fires()}) == len(cluster.fires())


def test_the_event_is_eventbridges_scheduled_event_and_input_replaces_it(cluster: Cluster) -> None:
    cluster.start_scheduler()
    fire = wait_until(lambda: cluster.fires(), timeout=30, message="a fire")[0]
    event = fire["event"]
    assert set(event) == {"version", "id", "detail-type", "source", "account", "time", "region", "resources",
                          "detail"}
    assert event["version"] == "0" and event["detail-type"] == "Scheduled Event" and event["source"] == "aws.events"
    assert event["account"] == "000000000000" and event["region"] == "us-east-1" and event["detail"] == {}
    assert event["resources"] == ["arn:aws:events:us-east-1:000000000000:rule/tick-schedule-0"]
    assert event["id"] == fire["request_id"]                     # the invocation id is derived from the fire
    scheduled = datetime.strptime(event["time"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    assert 0 <= fire["started"] - scheduled.timestamp() < 5
    given = wait_until(lambda: cluster.fires("given"), timeout=30, message="a fire with input")[0]
    assert given["event"] == {"k": "v", "n": [1, 2]}


def test_killing_one_replica_leaves_the_other_firing_without_gaps(cluster: Cluster) -> None:
    first = cluster.start_scheduler()
    cluster.start_scheduler()
    wait_until(lambda: len(cluster.fires()) >= 3, timeout=30, message="three fires")
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed_at = len(cluster.fires())
    wait_until(lambda: len(cluster.fires()) >= killed_at + 4, timeout=30, message="fires after the kill")
    _assert_each_second_once(cluster.fires())


def test_schedules_list_shows_next_fires_and_the_last_outcome(cluster: Cluster) -> None:
    cluster.start_scheduler()
    wait_until(lambda: len(cluster.fires()) >= 2, timeout=30, message="two fires")
    tick = wait_until(lambda: [s for s in cluster.schedules() if s["function"] == "tick" and s["last"]
                               and s["last"]["status"] == "succeeded"], timeout=20, message="a recorded outcome")[0]
    assert tick["expression"] == "rate(1 second)" and tick["timezone"] == "UTC"
    assert len(tick["next"]) == 3 and tick["next"] == sorted(tick["next"])
    assert tick["stats"]["fired"] >= 2
    from .test_cli import lambent

    listing = lambent("schedules", "--url", cluster.gateway.url, env=cluster.gateway.cli_env())
    assert listing.returncode == 0 and "rate(1 second)" in listing.stdout and "tick" in listing.stdout


def test_a_deploy_adds_a_schedule_and_a_delete_removes_it_while_schedulers_run(cluster: Cluster,
                                                                               tmp_path: Path) -> None:
    cluster.start_scheduler()
    wait_until(lambda: cluster.fires(), timeout=30, message="the first schedule firing")
    more = tmp_path / "more"
    write_function(more, "latecomer", cluster.out, [{"expression": "rate(1 second)"}])
    other = start_gateway(tmp_path / "node2", cluster.gateway.redis_url, functions_dir=more)
    other.stop()
    wait_until(lambda: len(cluster.fires("latecomer")) >= 2, timeout=30, message="the new schedule firing")
    assert cluster.gateway.request("DELETE", "/functions/latecomer", timeout=5).status_code == 200
    wait_until(lambda: "schedule removed" in (cluster.tmp / "scheduler-0.log").read_text(), timeout=20,
               message="the scheduler to drop the schedule")
    stopped_at = len(cluster.fires("latecomer"))
    ticks = len(cluster.fires())
    wait_until(lambda: len(cluster.fires()) >= ticks + 3, timeout=30, message="three more ticks as a clock")
    assert len(cluster.fires("latecomer")) <= stopped_at + 1    # at most one already queued when it was removed


def test_a_bad_expression_is_refused_at_deploy(tmp_path: Path, redis_url: str) -> None:
    functions = tmp_path / "functions"
    write_function(functions, "badcron", tmp_path, [{"expression": "cron(0 10 * * * *)"}])
    write_function(functions, "badzone", tmp_path, [{"expression": "rate(1 minute)", "timezone": "Mars/Olympus"}])
    gateway = start_gateway(tmp_path / "node", redis_url, functions_dir=functions)
    try:
        log = gateway.log()
        assert "exactly one of day-of-month and day-of-week must be '?'" in log
        assert "unknown time zone 'Mars/Olympus'" in log
        for name in ("badcron", "badzone"):
            assert gateway.request("GET", f"/functions/{name}", timeout=5).status_code == 404
    finally:
        gateway.stop()


def test_a_gap_with_no_scheduler_coalesces_into_one_fire_and_counts_the_rest_missed(
        tmp_path: Path, redis_url: str) -> None:
    cluster = Cluster(tmp_path, redis_url, config={"scheduler": {"misfire_grace_s": 60}})
    try:
        first = cluster.start_scheduler()
        wait_until(lambda: len(cluster.fires()) >= 2, timeout=30, message="two fires")
        first.terminate()
        first.wait(20)
        before = len(cluster.fires())
        # Every scheduler is down for a few seconds; the work queue still runs.
        wait_until(lambda: _down_long_enough(cluster, seconds=3), timeout=10, message="a gap of three seconds")
        cluster.start_scheduler()
        wait_until(lambda: len(cluster.fires()) >= before + 3, timeout=30, message="fires after the restart")
        tick = [s for s in cluster.schedules() if s["function"] == "tick"][0]
        seconds = sorted(_seconds(cluster.fires()))
        assert len(seconds) == len(set(seconds))                 # still never twice
        gap = max(later - earlier for earlier, later in zip(seconds, seconds[1:]))
        assert gap >= 3                                          # the occurrences of the gap did not run...
        assert tick["stats"]["missed"] >= gap - 2                # ...they were counted missed, coalesced into one
    finally:
        cluster.stop()


def _down_long_enough(cluster: Cluster, *, seconds: float) -> bool:
    last = max(_seconds(cluster.fires()))
    return datetime.now(timezone.utc).timestamp() - last >= seconds
