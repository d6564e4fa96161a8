"""Stream invocation against a real Kafka broker and real `lambent streams` processes."""

from __future__ import annotations

import base64
import json
import subprocess
import textwrap
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from . import kafka_client
from .helpers import UNJAILED, Gateway, start_gateway, start_role, start_worker, stop_process, wait_until

# Every test function is this handler, steered by its environment (function.yaml):
#   OUT     folder: "<topic>-<partition>.log" gets "offset value ppid time" per delivered record,
#           "seen.log" every record of every attempt; "event.json" the last event
#   POISON  a value that fails its batch (MODE poison) or is reported as an item failure once (partial)
#   SLEEP_S seconds to sleep per batch
HANDLER = textwrap.dedent('''
    import base64, json, os, time, uuid

    OUT = os.environ["OUT"]

    def handler(event, context):
        with open(os.path.join(OUT, "event.json"), "w") as f:
            json.dump(event, f)
        records = [r for batch in event["records"].values() for r in batch]
        values = [base64.b64decode(r["value"]).decode() for r in records]
        attempt = uuid.uuid4().hex[:8]
        with open(os.path.join(OUT, "seen.log"), "a") as f:
            for r, v in zip(records, values):
                f.write(f"{r['partition']} {r['offset']} {v} {attempt} {time.time()}\\n")
        time.sleep(float(os.environ.get("SLEEP_S", "0")))
        mode, poison = os.environ.get("MODE", "ok"), os.environ.get("POISON")
        if mode == "poison" and poison in values:
            raise ValueError(f"poison record {poison}")
        failed = []
        if mode == "partial":
            marker = os.path.join(OUT, "partial-done")
            if poison in values and not os.path.exists(marker):
                open(marker, "w").close()
                r = records[values.index(poison)]
                failed = [{"itemIdentifier": {"partition": f"{r['topic']}-{r['partition']}", "offset": r["offset"]}}]
        for r, v in zip(records, values):
            if failed and r["offset"] >= failed[0]["itemIdentifier"]["offset"]:
                break
            with open(os.path.join(OUT, f"{r['topic']}-{r['partition']}.log"), "a") as f:
                f.write(f"{r['offset']} {v} {os.getppid()} {time.time()}\\n")
        return {"batchItemFailures": failed}
''')

STREAMS_CONFIG = {"streams": {"retry_backoff_s": 0.2, "max_retry_backoff_s": 1.0, "state_interval_s": 0.5}}


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    return kafka_client.bootstrap()


@dataclass
class Stack:
    """A gateway (which deploys the function) and `lambent streams` processes, on one Redis and Kafka."""
    tmp: Path
    bootstrap: str
    gateway: Gateway
    topic: str
    out: Path
    processes: list[subprocess.Popen[bytes]]

    def start_streams(self) -> subprocess.Popen[bytes]:
        streams = start_role("streams", self.tmp / f"streams-{len(self.processes)}.log",
                             config=self.gateway.config_path)
        self.processes.append(streams.process)
        return streams.process

    def produce(self, items: list[tuple[bytes | None, bytes]], *, partition: int | None = None,
                headers: list[tuple[str, bytes]] | None = None, timestamp_ms: int | None = None) -> None:
        producer = KafkaProducer(**kafka_client.client_options())
        for key, value in items:
            producer.send(self.topic, key=key, value=value, partition=partition, headers=headers,
                          timestamp_ms=timestamp_ms)
        producer.flush()
        producer.close()

    def delivered(self, partition: int) -> list[tuple[int, str, int, float]]:
        path = self.out / f"{self.topic}-{partition}.log"
        if not path.exists():
            return []
        rows = [line.split() for line in path.read_text().splitlines()]
        return [(int(offset), value, int(ppid), float(at)) for offset, value, ppid, at in rows]

    def seen(self) -> list[tuple[int, int, str, str, float]]:
        """(partition, offset, value, attempt id, time) of every record of every attempt."""
        path = self.out / "seen.log"
        if not path.exists():
            return []
        return [(int(p), int(o), v, a, float(t))
                for p, o, v, a, t in (line.split() for line in path.read_text().splitlines())]

    def failures(self, topic: str, count: int, timeout: float = 30) -> list[dict[str, Any]]:
        consumer = KafkaConsumer(topic, **kafka_client.client_options(), auto_offset_reset="earliest",
                                 consumer_timeout_ms=500, group_id=None)
        found: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while len(found) < count and time.monotonic() < deadline:
            for message in consumer:
                found.append(json.loads(message.value))
        consumer.close()
        assert len(found) >= count, f"expected {count} on_failure records on {topic}, got {len(found)}"
        return found

    def state(self) -> dict[str, Any]:
        return self.gateway.request("GET", "/functions/consume/streams", timeout=5).json()


@pytest.fixture
def stack_factory(tmp_path: Path, redis_url: str, kafka_bootstrap: str) -> Iterator[Any]:
    stacks: list[Stack] = []

    def make(*, partitions: int = 3, event: dict[str, Any] | None = None, env: dict[str, str] | None = None,
             extra_topics: tuple[str, ...] = ()) -> Stack:
        topic = f"t-{uuid.uuid4().hex[:10]}"
        admin = KafkaAdminClient(**kafka_client.client_options())
        admin.create_topics([NewTopic(topic, partitions, 1)] + [NewTopic(t, 1, 1) for t in extra_topics])
        admin.close()
        out = tmp_path / "out"
        out.mkdir()
        folder = tmp_path / "functions" / "consume"
        folder.mkdir(parents=True)
        (folder / "handler.py").write_text(HANDLER)
        (folder / "function.yaml").write_text(yaml.safe_dump({
            "timeout": 30, "environment": {"OUT": str(out), **(env or {})},
            "events": [{"kafka": {"topic": topic, **(event or {})}}]}))
        gateway = start_gateway(tmp_path / "node", redis_url, functions_dir=tmp_path / "functions",
                                config={**kafka_client.config(), **STREAMS_CONFIG, **UNJAILED})
        stack = Stack(tmp=tmp_path, bootstrap=kafka_bootstrap, gateway=gateway, topic=topic, out=out, processes=[])
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        for process in stack.processes:
            stop_process(process, timeout_s=30)
        stack.gateway.stop()


def _first_deliveries(rows: list[tuple[int, str, int, float]]) -> list[int]:
    """Offsets in first-delivery order, re-deliveries (at least once) left out."""
    seen: set[int] = set()
    order = []
    for offset, *_ in rows:
        if offset not in seen:
            seen.add(offset)
            order.append(offset)
    return order


def test_every_record_arrives_in_partition_order_across_two_streams_processes(stack_factory: Any) -> None:
    stack = stack_factory(partitions=3, event={"batch_size": 20, "batch_window": 0.2})
    first = stack.start_streams()
    keys = [f"user-{i % 12}".encode() for i in range(300)]
    stack.produce([(key, f"a{i}".encode()) for i, key in enumerate(keys[:150])])
    wait_until(lambda: sum(len(stack.delivered(p)) for p in range(3)) >= 150, timeout=60,
               message="the first 150 records")
    second = stack.start_streams()                      # a rebalance: the second process joins
    wait_until(lambda: len({p["owner"] for m in stack.state()["mappings"] for p in m["partitions"]
                            if not p["stale"]}) == 2, timeout=60, message="both processes to own partitions")
    stack.produce([(key, f"b{i}".encode()) for i, key in enumerate(keys[150:], 150)])
    wait_until(lambda: {v for p in range(3) for _, v, _, _ in stack.delivered(p)} >=
               {f"a{i}" for i in range(150)} | {f"b{i}" for i in range(150, 300)}, timeout=60,
               message="all 300 records")
    owners = set()
    partition_of_key: dict[str, int] = {}
    for partition in range(3):
        rows = stack.delivered(partition)
        order = _first_deliveries(rows)
        assert order == list(range(len(order))), f"partition {partition} out of order or with a gap"
        owners |= {ppid for _, _, ppid, _ in rows}
        for _offset, value, _, _ in rows:
            index = int(value[1:])
            assert partition_of_key.setdefault(keys[index].decode(), partition) == partition
    assert sum(len(_first_deliveries(stack.delivered(p))) for p in range(3)) == 300
    assert owners <= {first.pid, second.pid} and second.pid in owners     # the newcomer took partitions
    # The state is reported every few seconds: wait for the report that follows the last commit.
    delivered = {p: len(_first_deliveries(stack.delivered(p))) for p in range(3)}
    wait_until(lambda: {p["partition"]: (p["committed"], p["lag"]) for p in stack.state()["mappings"][0]["partitions"]
                        if not p["stale"]} == {p: (count, 0) for p, count in delivered.items()},
               timeout=20, message="every partition committed to its end, lag 0")


def test_poison_record_goes_to_the_failure_topic_and_blocks_only_its_partition(stack_factory: Any) -> None:
    failures = f"failures-{uuid.uuid4().hex[:8]}"
    stack = stack_factory(partitions=3, extra_topics=(failures,), env={"MODE": "poison", "POISON": "bad"},
                          event={"batch_size": 5, "batch_window": 0.1, "max_retry_attempts": 2,
                                 "on_failure": {"topic": failures}})
    stack.start_streams()
    stack.produce([(None, b"p0-before")], partition=0)
    stack.produce([(None, b"bad")], partition=0)
    wait_until(lambda: any(v == "bad" for _, _, v, _, _ in stack.seen()), timeout=60,
               message="the poison's first try")
    stack.produce([(None, f"p1-{i}".encode()) for i in range(5)], partition=1)
    stack.produce([(None, f"p2-{i}".encode()) for i in range(5)], partition=2)
    stack.produce([(None, b"p0-after")], partition=0)
    record = stack.failures(failures, 1)[0]
    info = record["KafkaBatchInfo"]
    assert info["topic"] == stack.topic and info["partition"] == 0
    assert info["firstRecordOffset"] <= 1 <= info["lastRecordOffset"]
    assert record["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert record["requestContext"]["approximateInvokeCount"] == 3
    assert record["responsePayload"]["errorType"] == "ValueError"
    assert record["responseContext"]["functionError"] == "Unhandled"
    poison_tries = [t for _, _, v, _, t in stack.seen() if v == "bad"]
    assert len(poison_tries) >= 3      # more when a rebalance interrupted a try: at least once
    # The other partitions went on while partition 0 retried.
    for partition in (1, 2):
        rows = wait_until(lambda: len(stack.delivered(partition)) == 5 and stack.delivered(partition), timeout=30,
                          message=f"partition {partition}")
        assert max(at for *_, at in rows) < poison_tries[-1]
    # And partition 0 moves on past the poison: p0-after is delivered, or went with the failed batch when a
    # rebalance restarted that batch after p0-after had arrived (at least once: the batch grew), and a record
    # produced now is delivered either way.
    if info["lastRecordOffset"] < 2:
        wait_until(lambda: "p0-after" in [v for _, v, _, _ in stack.delivered(0)], timeout=60,
                   message="partition 0 to deliver the record after the poison")
    stack.produce([(None, b"p0-later")], partition=0)
    wait_until(lambda: [v for _, v, _, _ in stack.delivered(0)][-1:] == ["p0-later"], timeout=60,
               message="partition 0 to continue after the poison")


def test_a_failed_batch_can_go_to_an_sns_topic_and_its_subscribers(stack_factory: Any, tmp_path: Path) -> None:
    # `audit` subscribes to the topic in its function.yaml; the failed batch's record is published there.
    audit = tmp_path / "functions" / "audit"
    audit.mkdir(parents=True)
    (audit / "function.yaml").write_text(yaml.safe_dump({"environment": {"OUT": str(tmp_path / "out")},
                                                         "events": [{"sns": {"topic": "stream-failures"}}]}))
    (audit / "handler.py").write_text(textwrap.dedent('''
        import json, os

        def handler(event, context):
            path = os.path.join(os.environ["OUT"], "audit.json")
            with open(path + ".part", "w") as f:        # renamed once whole: never read half written
                json.dump(event, f)
            os.rename(path + ".part", path)
    '''))
    stack = stack_factory(partitions=1, env={"MODE": "poison", "POISON": "bad"},
                          event={"batch_size": 1, "max_retry_attempts": 0, "on_failure": {"sns": "stream-failures"}})
    worker = start_worker(stack.gateway)
    try:
        stack.start_streams()
        stack.produce([(None, b"bad")], partition=0)
        path = stack.out / "audit.json"
        wait_until(path.exists, timeout=60, message="the failure record to reach the topic's subscriber")
        sns = json.loads(path.read_text())["Records"][0]["Sns"]
        assert sns["TopicArn"].endswith(":stream-failures")
        record = json.loads(sns["Message"])
        assert record["KafkaBatchInfo"]["topic"] == stack.topic
        assert record["requestContext"]["condition"] == "RetryAttemptsExhausted"
    finally:
        worker.stop()


def test_max_record_age_ends_retries_that_would_go_on_forever(stack_factory: Any) -> None:
    failures = f"failures-{uuid.uuid4().hex[:8]}"
    stack = stack_factory(partitions=2, extra_topics=(failures,), env={"MODE": "poison", "POISON": "bad"},
                          event={"batch_size": 1, "max_retry_attempts": -1, "max_record_age": 3,
                                 "on_failure": {"topic": failures}})
    stack.start_streams()
    # A record's age is counted from its timestamp, which the producer sets: on partition 0 `bad` is older than
    # max_record_age before its first try, on partition 1 it stays young for ten minutes (the broker accepts up
    # to an hour ahead). So what each gets does not depend on how long delivery takes on a busy machine.
    now_ms = int(time.time() * 1000)
    stack.produce([(None, b"bad"), (None, b"fine")], partition=0, timestamp_ms=now_ms - 10_000)
    stack.produce([(None, b"bad")], partition=1, timestamp_ms=now_ms + 600_000)
    # the old one: one try, then given up for its age, and the partition moves on
    record = stack.failures(failures, 1)[0]
    assert record["KafkaBatchInfo"]["partition"] == 0
    assert record["requestContext"]["condition"] == "RecordAgeExceeded"
    assert record["requestContext"]["approximateInvokeCount"] == 1
    wait_until(lambda: [v for _, v, _, _ in stack.delivered(0)] == ["fine"], timeout=30, message="the next record")
    # the young one: tried again and again (max_retry_attempts -1), never given up
    wait_until(lambda: len([v for p, _, v, _, _ in stack.seen() if p == 1 and v == "bad"]) >= 3, timeout=60,
               message="three tries of the young record")
    assert len(stack.failures(failures, 1, timeout=1)) == 1


def test_bisect_narrows_a_failing_batch_down_to_the_single_bad_record(stack_factory: Any) -> None:
    failures = f"failures-{uuid.uuid4().hex[:8]}"
    stack = stack_factory(partitions=1, extra_topics=(failures,), env={"MODE": "poison", "POISON": "v5"},
                          event={"batch_size": 8, "batch_window": 3, "bisect_on_error": True, "max_retry_attempts": 0,
                                 "on_failure": {"topic": failures}})
    stack.produce([(None, f"v{i}".encode()) for i in range(8)])      # before the consumer starts: one batch of 8
    stack.start_streams()
    record = stack.failures(failures, 1)[0]
    info = record["KafkaBatchInfo"]
    assert info["batchSize"] == 1 and info["firstRecordOffset"] == info["lastRecordOffset"] == 5
    payload = record["payload"]["records"][f"{stack.topic}-0"]
    assert [base64.b64decode(r["value"]) for r in payload] == [b"v5"]
    # 60 s: a rebalance at start-up can leave kafka-python's consumer out of the group until it rejoins.
    wait_until(lambda: len(stack.delivered(0)) == 7, timeout=60, message="the seven good records")
    assert [offset for offset, *_ in stack.delivered(0)] == [0, 1, 2, 3, 4, 6, 7]
    # halves, the first half first: (first offset, records) of each attempt
    assert _attempt_ranges(stack.seen()) == [(0, 8), (0, 4), (4, 4), (4, 2), (4, 1), (5, 1), (6, 2)]


def _attempt_ranges(seen: list[tuple[int, int, str, str, float]]) -> list[tuple[int, int]]:
    """(first offset, number of records) of each attempt, in order. An attempt of the same records as the one
    just before it is a re-delivery, not a step of the bisection: a rebalance at start-up can revoke the
    partition mid-way ("batch abandoned: partition revoked"), and at-least-once delivery starts that batch over."""
    ranges: dict[str, tuple[int, int]] = {}
    for _, offset, _, attempt, _ in seen:
        first, count = ranges.get(attempt, (offset, 0))
        ranges[attempt] = (min(first, offset), count + 1)
    ordered: list[tuple[int, int]] = []
    for attempt_range in ranges.values():
        if not ordered or ordered[-1] != attempt_range:
            ordered.append(attempt_range)
    return ordered


def test_partial_batch_failure_commits_before_the_lowest_failure_and_retries_the_rest(stack_factory: Any) -> None:
    stack = stack_factory(partitions=1, env={"MODE": "partial", "POISON": "v3"},
                          event={"batch_size": 6, "batch_window": 3, "report_batch_item_failures": True})
    stack.produce([(None, f"v{i}".encode()) for i in range(6)])
    stack.start_streams()
    wait_until(lambda: len(stack.delivered(0)) == 6, timeout=40, message="all six records")
    assert [offset for offset, *_ in stack.delivered(0)] == [0, 1, 2, 3, 4, 5]
    seen = [offset for _, offset, _, _, _ in stack.seen()]
    assert seen == [0, 1, 2, 3, 4, 5, 3, 4, 5]           # only the lowest failure onwards came back


def test_killed_streams_process_restarts_with_no_gap_and_no_reordering(stack_factory: Any) -> None:
    stack = stack_factory(partitions=2, env={"SLEEP_S": "0.3"}, event={"batch_size": 10, "batch_window": 0.1})
    victim = stack.start_streams()
    stack.produce([(f"k{i % 4}".encode(), f"v{i}".encode()) for i in range(200)])
    wait_until(lambda: sum(len(stack.delivered(p)) for p in range(2)) >= 40, timeout=60, message="some deliveries")
    victim.kill()                                           # kill -9, mid-batch
    victim.wait()
    stack.start_streams()
    wait_until(lambda: sum(len(_first_deliveries(stack.delivered(p))) for p in range(2)) == 200, timeout=90,
               message="all 200 records after the restart")
    for partition in range(2):
        offsets = [offset for offset, *_ in stack.delivered(partition)]
        for earlier, later in zip(offsets, offsets[1:]):
            # Each step either continues by one, or starts again at or before what was already delivered.
            assert later == earlier + 1 or later <= earlier, (partition, earlier, later)
        assert sorted(set(offsets)) == list(range(len(set(offsets))))


def test_the_event_is_lambdas_self_managed_kafka_shape(stack_factory: Any) -> None:
    stack = stack_factory(partitions=1, event={"batch_size": 1})
    stack.start_streams()
    before = int(time.time() * 1000)
    stack.produce([(b"the-key", b'{"hello":"kafka"}')], headers=[("trace", b"ab1")])
    wait_until(lambda: len(stack.delivered(0)) == 1, timeout=60, message="the record")
    event = json.loads((stack.out / "event.json").read_text())
    assert set(event) == {"eventSource", "bootstrapServers", "records"}
    assert event["eventSource"] == "SelfManagedKafka"
    assert event["bootstrapServers"] == stack.bootstrap
    [record] = event["records"][f"{stack.topic}-0"]
    assert set(record) == {"topic", "partition", "offset", "timestamp", "timestampType", "key", "value", "headers"}
    assert (record["topic"], record["partition"], record["offset"]) == (stack.topic, 0, 0)
    assert record["timestampType"] == "CREATE_TIME" and record["timestamp"] >= before - 1000
    assert base64.b64decode(record["key"]) == b"the-key"
    assert json.loads(base64.b64decode(record["value"])) == {"hello": "kafka"}
    assert record["headers"] == [{"trace": [97, 98, 49]}]


def test_a_function_deployed_while_streams_runs_gets_a_consumer(stack_factory: Any, tmp_path: Path,
                                                                  kafka_bootstrap: str) -> None:
    stack = stack_factory(partitions=1)
    stack.start_streams()
    stack.produce([(None, b"first")])
    wait_until(lambda: len(stack.delivered(0)) == 1, timeout=60, message="the first function's record")
    # A second function appears in the catalog (deployed by another gateway) with a topic of its own.
    topic = f"late-{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "more" / "latecomer"
    folder.mkdir(parents=True)
    out = tmp_path / "late-out"
    out.mkdir()
    (folder / "handler.py").write_text(HANDLER)
    (folder / "function.yaml").write_text(yaml.safe_dump(
        {"environment": {"OUT": str(out)}, "events": [{"kafka": {"topic": topic, "batch_size": 1}}]}))
    other = start_gateway(tmp_path / "node2", stack.gateway.redis_url, functions_dir=tmp_path / "more",
                          config=kafka_client.config())
    try:
        producer = KafkaProducer(**kafka_client.client_options())
        producer.send(topic, value=b"late")          # the topic is created by this first write
        producer.flush()
        producer.close()
        wait_until(lambda: (out / f"{topic}-0.log").exists(), timeout=60, message="the latecomer's consumer")
    finally:
        other.stop()
