"""`lambent streams` rides out a Redis outage and stops within its grace period, idle, busy or reconnecting.

Real processes throughout: a redis-server of the test's own (append-only, fsync always, a password in a 0600
file) that is killed with -9 and started again on the same port; the shared Kafka; `lambent serve`, which
deploys the functions; `lambent streams`. The handler writes every record it is given to a file of the host
(hence unjailed), so that deliveries are counted from outside the platform.
"""

from __future__ import annotations

import signal
import subprocess
import textwrap
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from . import kafka_client
from .helpers import UNJAILED, Gateway, RedisServer, start_gateway, start_role, wait_until

GRACE_S = 4.0
MARGIN_S = 6.0                       # allowance for a busy machine on top of what is promised
NOT_REACHABLE = "Redis is not reachable"
BACK = "Redis is reachable again"

# OUT/<topic>-<partition>.log gets "offset value" per record delivered (before the handler sleeps SLEEP_S),
# OUT/pids the handler's process id per batch.
HANDLER = textwrap.dedent('''
    import base64, os, time

    def handler(event, context):
        out = os.environ["OUT"]
        with open(os.path.join(out, "pids"), "a") as f:
            f.write(f"{os.getpid()}\\n")
        for batch in event["records"].values():
            with open(os.path.join(out, f"{batch[0]['topic']}-{batch[0]['partition']}.log"), "a") as f:
                for r in batch:
                    f.write(f"{r['offset']} {base64.b64decode(r['value']).decode()}\\n")
        time.sleep(float(os.environ.get("SLEEP_S", "0")))
        return {}
''')


@dataclass
class Node:
    """A gateway that deployed the functions, the topics, and the `lambent streams` processes started."""
    tmp: Path
    bootstrap: str
    redis: RedisServer
    gateway: Gateway
    topics: dict[str, str]                     # function -> its topic
    out: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start_streams(self, name: str = "streams", **env: str) -> subprocess.Popen[bytes]:
        streams = start_role("streams", self.tmp / f"{name}.log", config=self.gateway.config_path, env=env)
        self.processes.append(streams.process)
        return streams.process

    def log(self, name: str = "streams") -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def produce(self, function: str, values: list[str]) -> None:
        producer = KafkaProducer(**kafka_client.client_options())
        for value in values:
            producer.send(self.topics[function], value=value.encode())
        producer.flush()
        producer.close()

    def delivered(self, function: str, partition: int) -> list[tuple[int, str]]:
        path = self.out / f"{self.topics[function]}-{partition}.log"
        if not path.exists():
            return []
        return [(int(offset), value) for offset, value in (line.split() for line in path.read_text().splitlines())]

    def values(self, function: str) -> set[str]:
        return {value for partition in range(2) for _, value in self.delivered(function, partition)}

    def pids(self) -> list[int]:
        path = self.out / "pids"
        return [int(line) for line in path.read_text().split()] if path.exists() else []


@pytest.fixture
def node_factory(tmp_path: Path, own_redis: RedisServer) -> Iterator[Any]:
    bootstrap = kafka_client.bootstrap()
    made: list[Node] = []

    def make(functions: dict[str, dict[str, Any]]) -> Node:
        """`functions`: name -> {"event": kafka event keys, "env": environment, "timeout": seconds}."""
        out = tmp_path / "out"
        out.mkdir()
        topics = {name: f"{name}-{uuid.uuid4().hex[:10]}" for name in functions}
        admin = KafkaAdminClient(**kafka_client.client_options())
        admin.create_topics([NewTopic(topic, 2, 1) for topic in topics.values()])
        admin.close()
        for name, spec in functions.items():
            folder = tmp_path / "functions" / name
            folder.mkdir(parents=True)
            (folder / "handler.py").write_text(HANDLER)
            (folder / "function.yaml").write_text(yaml.safe_dump({
                "timeout": spec.get("timeout", 30), "environment": {"OUT": str(out), **spec.get("env", {})},
                "events": [{"kafka": {"topic": topics[name], "batch_size": 5, "batch_window": 0.1,
                                      **spec.get("event", {})}}]}))
        gateway = start_gateway(tmp_path / "node", own_redis.url, functions_dir=tmp_path / "functions", config={
            **kafka_client.config(), **UNJAILED, "metrics": {"streams_port": 0},
            "streams": {"shutdown_grace_s": GRACE_S, "state_interval_s": 0.5}})
        node = Node(tmp=tmp_path, bootstrap=bootstrap, redis=own_redis, gateway=gateway, topics=topics, out=out)
        made.append(node)
        return node

    try:
        yield make
    finally:
        for node in made:
            for process in node.processes:
                if process.poll() is None:
                    process.kill()
                    process.wait()
            if node.redis.process is not None and node.redis.process.poll() is not None:
                node.redis.start()             # a test that failed with Redis down: the gateway stops cleanly
            node.gateway.stop()


def stop_timed(process: subprocess.Popen[bytes], *, timeout: float = GRACE_S + MARGIN_S) -> tuple[int, float]:
    """SIGTERM, then (exit code, seconds it took); a process still running at `timeout` fails the test."""
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"still running {timeout} s after SIGTERM") from None
    return code, time.monotonic() - started


def first_deliveries(rows: list[tuple[int, str]]) -> list[int]:
    """Offsets in the order they were first delivered (re-deliveries, at least once, left out)."""
    order: list[int] = []
    for offset, _ in rows:
        if offset not in order:
            order.append(offset)
    return order


def committed(node: Node, function: str) -> dict[int, int]:
    """The mapping's committed offset per partition (the next offset to read)."""
    group = f"lambent-{function}-0-{node.topics[function]}"
    admin = KafkaAdminClient(**kafka_client.client_options())
    try:
        offsets = admin.list_group_offsets({group: None})[group]
    finally:
        admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items()}


def test_a_redis_outage_loses_no_record_and_keeps_each_partitions_order(node_factory: Any, tmp_path: Path) -> None:
    # Given two mappings with no retries (a batch failed for want of Redis would be dropped, and seen missing):
    # `warm` runs before the outage, `cold` first runs during it and needs Redis for its code (the streams
    # process has a data dir of its own, as on a server of its own).
    no_retries = {"event": {"max_retry_attempts": 0}}
    node = node_factory({"warm": no_retries, "cold": no_retries})
    process = node.start_streams(LAMBENT_DATA_DIR=str(tmp_path / "streams-data"))
    node.produce("warm", [f"w{i}" for i in range(20)])
    wait_until(lambda: len(node.values("warm")) == 20, timeout=60, message="the first 20 records")

    # When Redis is killed, records come in meanwhile, and Redis comes back on the same port a few seconds later
    node.redis.kill()
    killed = time.monotonic()
    node.produce("warm", [f"w{i}" for i in range(20, 40)])
    node.produce("cold", [f"c{i}" for i in range(20)])
    wait_until(lambda: len(node.values("warm")) == 40, timeout=30, message="warm records during the outage")
    wait_until(lambda: NOT_REACHABLE in node.log() and time.monotonic() - killed >= 3, timeout=30,
               message="the outage to be seen and to last three seconds")
    assert node.values("cold") == set()           # waiting for Redis, not failed
    node.redis.start()
    node.produce("warm", [f"w{i}" for i in range(40, 60)])
    node.produce("cold", [f"c{i}" for i in range(20, 40)])

    # Then every record is delivered, in each partition's order, by the same process, and nothing is left
    # uncommitted; the outage is logged once, with the password masked
    wait_until(lambda: len(node.values("warm")) == 60 and len(node.values("cold")) == 40, timeout=60,
               message="every record after the outage")
    for function in ("warm", "cold"):
        for partition in range(2):
            order = first_deliveries(node.delivered(function, partition))
            assert order == list(range(len(order))), f"{function}-{partition}: out of order or with a gap: {order}"
    ends = {function: {p: len(first_deliveries(node.delivered(function, p))) for p in range(2)}
            for function in ("warm", "cold")}
    wait_until(lambda: all(committed(node, function) == ends[function] for function in ends), timeout=30,
               interval=0.5, message="the offsets to be committed up to the end")
    assert process.poll() is None
    log = node.log()
    assert log.count(NOT_REACHABLE) == 1 and log.count(BACK) == 1, log[-3000:]
    warning = next(line for line in log.splitlines() if NOT_REACHABLE in line)
    assert f"redis://:***@127.0.0.1:{node.redis.port}/0" in warning and node.redis.password not in log
    assert "batch dropped" not in log and "consumer loop failed" not in log
    assert stop_timed(process)[0] == 0


def test_sigterm_stops_an_idle_streams_process_at_once(node_factory: Any) -> None:
    node = node_factory({"idle": {}})
    process = node.start_streams()
    wait_until(lambda: "partitions assigned" in node.log(), timeout=60, message="the consumer to join its group")

    code, took = stop_timed(process)

    assert code == 0 and took < MARGIN_S, (code, took)
    assert "streams stopped" in node.log()


def test_sigterm_cuts_off_a_slow_batch_within_the_grace_and_the_batch_is_read_again(node_factory: Any) -> None:
    # Given a batch whose handler sleeps for a minute
    node = node_factory({"slow": {"env": {"SLEEP_S": "60"}, "timeout": 120}})
    process = node.start_streams()
    node.produce("slow", ["s0"])
    wait_until(lambda: node.pids(), timeout=60, message="the slow handler to start")

    # When SIGTERM comes, then it stops within the grace, cleanly, its sandbox killed, the batch uncommitted
    code, took = stop_timed(process)
    assert code == 0 and took < GRACE_S + MARGIN_S, (code, took)
    assert "its records are read again" in node.log()
    wait_until(lambda: not Path(f"/proc/{node.pids()[0]}").exists(), timeout=10, message="the sandbox to be killed")

    # And the next process is given the same record again; a second SIGTERM (its grace is long) stops it at once
    again = node.start_streams("streams-2", LAMBENT_STREAMS__SHUTDOWN_GRACE_S="60")
    wait_until(lambda: len(node.pids()) == 2, timeout=60, message="the batch to be delivered again")
    assert sorted(offset for partition in range(2) for offset, _ in node.delivered("slow", partition)) == [0, 0]
    first = time.monotonic()
    again.send_signal(signal.SIGTERM)
    wait_until(lambda: "stopping streams within 60 s" in node.log("streams-2") and time.monotonic() - first > 1.2,
               timeout=10, message="the first signal to be taken (a repeat within a second is the same request)")
    code, took = stop_timed(again, timeout=MARGIN_S)
    assert code == 1 and took < MARGIN_S, (code, took)
    wait_until(lambda: not Path(f"/proc/{node.pids()[1]}").exists(), timeout=10, message="the sandbox to be killed")


def test_sigterm_stops_streams_within_the_grace_while_a_batch_waits_for_redis(node_factory: Any,
                                                                              tmp_path: Path) -> None:
    # Given Redis down, and a batch that needs it (its code is not on this node yet)
    node = node_factory({"cold": {}})
    process = node.start_streams(LAMBENT_DATA_DIR=str(tmp_path / "streams-data"))
    wait_until(lambda: "partitions assigned" in node.log(), timeout=60, message="the consumer to join its group")
    node.redis.kill()
    node.produce("cold", ["c0"])
    wait_until(lambda: NOT_REACHABLE in node.log(), timeout=30, message="the outage to be seen")

    # When SIGTERM comes, then it stops within the grace, cleanly
    code, took = stop_timed(process)
    assert code == 0 and took < GRACE_S + MARGIN_S, (code, took)

    # And once Redis is back the record is delivered by the next process: it was not committed
    node.redis.start()
    node.start_streams("streams-2", LAMBENT_DATA_DIR=str(tmp_path / "streams-data"))
    wait_until(lambda: node.values("cold") == {"c0"}, timeout=60, message="the record after the outage")

