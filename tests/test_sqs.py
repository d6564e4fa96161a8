"""The `sqs` event source against a real ElasticMQ, real Redis and real `lambent streams` processes."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
import yaml

from . import sqs_client
from .helpers import UNJAILED, Gateway, start_gateway, start_role, stop_process, wait_until

# Every test function is this handler, steered by its environment (function.yaml):
#   OUT     folder: "seen.log" gets "messageId body receiveCount group attempt start end ppid" per record of each
#           attempt; "done.log" "group body" per record handled; "events.jsonl" every event
#   MODE    ok | fail (a batch holding POISON raises) | partial (POISON reported as failed) | malformed
#   SLEEP_S seconds to sleep per batch
HANDLER = textwrap.dedent('''
    import json, os, time, uuid

    OUT = os.environ["OUT"]

    def handler(event, context):
        start = time.time()
        with open(os.path.join(OUT, "events.jsonl"), "a") as f:
            f.write(json.dumps(event) + "\\n")
        records = event["Records"]
        time.sleep(float(os.environ.get("SLEEP_S", "0")))
        attempt = uuid.uuid4().hex[:8]
        with open(os.path.join(OUT, "seen.log"), "a") as f:
            for r in records:
                group = r["attributes"].get("MessageGroupId", "-")
                f.write(f"{r['messageId']} {r['body'][:40]} {r['attributes']['ApproximateReceiveCount']} "
                        f"{group} {attempt} {start} {time.time()} {os.getppid()}\\n")
        mode, poison = os.environ.get("MODE", "ok"), os.environ.get("POISON")
        bodies = [r["body"] for r in records]
        if mode == "fail" and poison in bodies:
            raise ValueError(f"poison message {poison}")
        if mode == "malformed":
            return {"batchItemFailures": [{"itemIdentifier": ""}]}
        failed = [r["messageId"] for r in records if mode == "partial" and r["body"] == poison]
        with open(os.path.join(OUT, "done.log"), "a") as f:
            for r in records:
                if r["messageId"] not in failed:
                    f.write(f"{r['attributes'].get('MessageGroupId', '-')} {r['body'][:40]}\\n")
        return {"batchItemFailures": [{"itemIdentifier": m} for m in failed]}
''')

SQS_SETTINGS = {"wait_time_s": 1, "retry_backoff_s": 0.2, "max_retry_backoff_s": 1.0}
STREAMS_SETTINGS = {"retry_backoff_s": 0.1, "max_retry_backoff_s": 0.5, "state_interval_s": 0.5}


@pytest.fixture(scope="module")
def client(sqs_endpoint: str) -> Any:
    return sqs_client.sqs(sqs_endpoint)


@dataclass
class Stack:
    """A gateway (which deploys the function `consume`) and `lambent streams` processes."""
    tmp: Path
    gateway: Gateway
    queue_url: str
    dlq_url: str | None
    out: Path
    processes: list[subprocess.Popen[bytes]]

    def start_streams(self) -> subprocess.Popen[bytes]:
        streams = start_role("streams", self.tmp / f"streams-{len(self.processes)}.log",
                             config=self.gateway.config_path)
        self.processes.append(streams.process)
        return streams.process

    def streams_log(self) -> str:
        return "\n".join((self.tmp / f"streams-{n}.log").read_text(errors="replace")
                         for n in range(len(self.processes)))

    def lines(self, name: str) -> list[list[str]]:
        path = self.out / name
        return [line.split() for line in path.read_text().splitlines()] if path.exists() else []

    def done(self) -> list[tuple[str, str]]:
        return [(group, body) for group, body in self.lines("done.log")]

    def events(self) -> list[dict[str, Any]]:
        path = self.out / "events.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def state(self) -> dict[str, Any]:
        answer = self.gateway.request("GET", "/functions/consume/streams", timeout=5)
        assert answer.status_code == 200, answer.text
        return answer.json()["queues"][0]


@pytest.fixture
def stack_factory(tmp_path: Path, redis_url: str, sqs_endpoint: str, client: Any) -> Iterator[Any]:
    stacks: list[Stack] = []

    def make(*, event: dict[str, Any] | None = None, env: dict[str, str] | None = None, fifo: bool = False,
             visibility_s: int = 30, dlq_max_receive: int | None = None, queue: str | None = None,
             spec: dict[str, Any] | None = None, config: dict[str, Any] | None = None,
             endpoint: str | None = None, sqs: Any = None, secret: str | None = None) -> Stack:
        name = sqs_client.unique_name("q")
        url, dlq = (None, None) if queue else sqs_client.make_queue(
            sqs or client, name, fifo=fifo, visibility_s=visibility_s, dlq_max_receive=dlq_max_receive)
        name += ".fifo" if fifo else ""
        out = tmp_path / "out"
        out.mkdir()
        folder = tmp_path / "functions" / "consume"
        folder.mkdir(parents=True)
        (folder / "handler.py").write_text(HANDLER)
        (folder / "function.yaml").write_text(yaml.safe_dump({
            "timeout": 30, "environment": {"OUT": str(out), **(env or {})}, **(spec or {}),
            "events": [{"sqs": {"queue": queue or name, **(event or {})}}]}))
        settings = {"sqs": {"endpoint_url": endpoint or sqs_endpoint, **SQS_SETTINGS,
                            **sqs_client.credentials(secret)},
                    "streams": STREAMS_SETTINGS, **UNJAILED, **(config or {})}
        gateway = start_gateway(tmp_path / "node", redis_url, functions_dir=tmp_path / "functions",
                                config=settings)
        stack = Stack(tmp=tmp_path, gateway=gateway, queue_url=url or "", dlq_url=dlq, out=out, processes=[])
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        for process in stack.processes:
            stop_process(process, timeout_s=30)
        stack.gateway.stop()


def _send(client: Any, url: str, bodies: list[str], **extra: Any) -> None:
    for start in range(0, len(bodies), 10):
        entries = [{"Id": str(n), "MessageBody": body, **extra} for n, body in enumerate(bodies[start:start + 10])]
        answer = client.send_message_batch(QueueUrl=url, Entries=entries)
        assert not answer.get("Failed"), answer


def _queue_empty(client: Any, url: str) -> bool:
    attributes = client.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])
    return sum(int(value) for value in attributes["Attributes"].values()) == 0


def test_every_message_is_delivered_as_lambdas_event_and_deleted(stack_factory: Any, client: Any) -> None:
    from aws_lambda_powertools.utilities.parser.models import SqsModel

    stack = stack_factory(event={"batch_size": 10})
    bodies = [f"m{n}" for n in range(30)]
    client.send_message(QueueUrl=stack.queue_url, MessageBody="first", MessageAttributes={
        "kind": {"DataType": "String", "StringValue": "order"}, "blob": {"DataType": "Binary", "BinaryValue": b"\x00"}})
    _send(client, stack.queue_url, bodies)
    stack.start_streams()
    wait_until(lambda: len(stack.done()) >= 31, timeout=60, message="every message handled")
    assert sorted(body for _, body in stack.done()) == sorted(["first", *bodies])
    wait_until(lambda: _queue_empty(client, stack.queue_url), timeout=15, message="the handled messages deleted")

    events = stack.events()
    assert all(1 <= len(event["Records"]) <= 10 for event in events)
    for event in events:
        SqsModel.model_validate(event)       # powertools' parser: the shape handlers written for AWS expect
    record = next(r for event in events for r in event["Records"] if r["body"] == "first")
    assert record["eventSource"] == "aws:sqs"
    assert record["eventSourceARN"].startswith("arn:aws:sqs:") and record["eventSourceARN"].endswith(":" + (
        stack.queue_url.rsplit("/", 1)[-1]))
    assert record["awsRegion"] == "us-east-1"
    assert record["attributes"]["ApproximateReceiveCount"] == "1"
    assert record["attributes"]["SentTimestamp"].isdigit()
    assert record["messageAttributes"]["kind"] == {"stringValue": "order", "stringListValues": [],
                                                   "binaryListValues": [], "dataType": "String"}
    assert record["messageAttributes"]["blob"]["binaryValue"] == "AA=="
    assert record["md5OfBody"] == hashlib.md5(b"first").hexdigest()

    # the counts are written as they happen, inFlight with each heartbeat (streams.state_interval_s)
    wait_until(lambda: stack.state()["deleted"] == 31 and stack.state()["inFlight"] == 0, timeout=10,
               message="the state to count the deletes and the next heartbeat to see none in flight")
    state = stack.state()
    assert state["received"] == 31 and state["failed"] == 0 and state["inFlight"] == 0
    assert state["lastProcessingResult"] == "OK" or state["lastProcessingResult"].startswith("No records")
    assert len(state["processes"]) == 1


def test_a_failing_message_comes_back_after_the_visibility_timeout_and_ends_in_the_queues_dlq(
        stack_factory: Any, client: Any) -> None:
    stack = stack_factory(event={"batch_size": 1}, env={"MODE": "fail", "POISON": "bad"}, visibility_s=2,
                          dlq_max_receive=2)
    _send(client, stack.queue_url, ["a", "bad", "b"])
    stack.start_streams()
    assert stack.dlq_url is not None
    moved = sqs_client.drain(client, stack.dlq_url, count=1, timeout=60)
    assert [message["Body"] for message in moved] == ["bad"]
    attempts = [row for row in stack.lines("seen.log") if row[1] == "bad"]
    assert [row[2] for row in attempts] == ["1", "2"]        # ApproximateReceiveCount: once per receive
    assert float(attempts[1][5]) - float(attempts[0][6]) >= 1.0   # again only after the visibility timeout
    assert sorted(body for _, body in stack.done()) == ["a", "b"]
    wait_until(lambda: stack.state()["failed"] >= 2, timeout=10, message="the failures counted")
    assert "PROBLEM" in stack.state()["lastProcessingResult"]


def test_partial_batch_failure_returns_only_the_reported_message(stack_factory: Any, client: Any) -> None:
    stack = stack_factory(event={"batch_size": 10, "maximum_batching_window": 1, "report_batch_item_failures": True},
                          env={"MODE": "partial", "POISON": "m3"}, visibility_s=2, dlq_max_receive=2)
    _send(client, stack.queue_url, [f"m{n}" for n in range(8)])
    stack.start_streams()
    assert stack.dlq_url is not None
    moved = sqs_client.drain(client, stack.dlq_url, count=1, timeout=60)
    assert [message["Body"] for message in moved] == ["m3"]
    done = [body for _, body in stack.done()]
    assert sorted(done) == sorted(f"m{n}" for n in range(8) if n != 3)
    assert len(done) == len(set(done)), "a message reported as succeeded was delivered again"


def test_a_malformed_batch_item_failures_answer_fails_the_whole_batch(stack_factory: Any, client: Any) -> None:
    stack = stack_factory(event={"batch_size": 10, "maximum_batching_window": 1, "report_batch_item_failures": True},
                          env={"MODE": "malformed"}, visibility_s=2, dlq_max_receive=1)
    _send(client, stack.queue_url, ["x", "y"])
    stack.start_streams()
    assert stack.dlq_url is not None
    moved = sqs_client.drain(client, stack.dlq_url, count=2, timeout=60)
    assert sorted(message["Body"] for message in moved) == ["x", "y"]
    wait_until(lambda: "malformed" in stack.state()["lastProcessingResult"], timeout=10,
               message="the mapping's state to say why")


def test_fifo_groups_keep_their_order_under_two_concurrent_batches(stack_factory: Any, client: Any) -> None:
    stack = stack_factory(fifo=True, event={"batch_size": 3, "maximum_concurrency": 2}, env={"SLEEP_S": "0.1"})
    groups = ["g1", "g2", "g3"]
    for n in range(12):
        for group in groups:
            client.send_message(QueueUrl=stack.queue_url, MessageBody=f"{group}-{n}", MessageGroupId=group,
                                MessageDeduplicationId=f"{group}-{n}")
    stack.start_streams()
    wait_until(lambda: len(stack.done()) >= 36, timeout=90, message="every FIFO message handled")
    for group in groups:
        bodies = [body for g, body in stack.done() if g == group]
        assert bodies == [f"{group}-{n}" for n in range(12)], f"{group} out of order: {bodies}"
    # Two batches ran at once (the concurrency is used), never two of one group.
    spans: dict[str, tuple[str, float, float]] = {}
    for _message_id, _body, _count, group, attempt, start, end, _ppid in stack.lines("seen.log"):
        spans.setdefault(attempt, (group, float(start), float(end)))
    batches = list(spans.values())
    overlapping = [(a, b) for i, a in enumerate(batches) for b in batches[i + 1:] if a[1] < b[2] and b[1] < a[2]]
    assert overlapping, "the two pollers never ran batches at the same time"
    assert all(a[0] != b[0] for a, b in overlapping), "two batches of one message group ran at once"


def test_two_streams_processes_share_a_mapping_within_its_maximum_concurrency(stack_factory: Any,
                                                                              client: Any) -> None:
    stack = stack_factory(event={"batch_size": 2, "maximum_concurrency": 3}, env={"SLEEP_S": "0.3"})
    bodies = [f"s{n}" for n in range(40)]
    _send(client, stack.queue_url, bodies)
    first, second = stack.start_streams(), stack.start_streams()
    wait_until(lambda: sorted(body for _, body in stack.done()) == sorted(bodies), timeout=90,
               message="every message handled")
    rows = stack.lines("seen.log")
    parents = {row[7] for row in rows}
    assert {str(first.pid), str(second.pid)} <= parents, "one process did all the work"
    spans = list({row[4]: (float(row[5]), float(row[6])) for row in rows}.values())     # one per batch
    most = max(sum(1 for s, e in spans if s <= start < e) for start, _ in spans)
    assert most <= 3, f"{most} batches ran at once, over maximum_concurrency 3"


def test_kill_9_of_the_consuming_process_mid_batch_loses_nothing(stack_factory: Any, client: Any) -> None:
    stack = stack_factory(event={"batch_size": 5}, env={"SLEEP_S": "1"}, visibility_s=3)
    bodies = [f"k{n}" for n in range(20)]
    _send(client, stack.queue_url, bodies)
    first = stack.start_streams()
    wait_until(lambda: len(stack.lines("events.jsonl")) >= 2, timeout=60, message="batches under way")
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    stack.start_streams()
    wait_until(lambda: {body for _, body in stack.done()} >= set(bodies), timeout=90,
               message="every message handled after the kill")
    wait_until(lambda: _queue_empty(client, stack.queue_url), timeout=20, message="the queue emptied")


def test_a_handler_running_past_the_visibility_timeout_is_not_delivered_twice(stack_factory: Any,
                                                                               client: Any) -> None:
    stack = stack_factory(event={"batch_size": 1}, env={"SLEEP_S": "5"}, visibility_s=2)
    _send(client, stack.queue_url, ["slow"])
    stack.start_streams()
    wait_until(lambda: stack.done() == [("-", "slow")], timeout=60, message="the slow message handled")
    wait_until(lambda: _queue_empty(client, stack.queue_url), timeout=10, message="the message deleted")
    assert [row[2] for row in stack.lines("seen.log")] == ["1"], "delivered again while its handler ran"


def test_throttles_never_lose_a_message(stack_factory: Any, client: Any) -> None:
    # Reserved concurrency 1 under two concurrent batches: one is throttled while the other runs, longer than
    # the visibility timeout; with maxReceiveCount 1 a message received twice would go to the DLQ.
    stack = stack_factory(event={"batch_size": 2, "maximum_concurrency": 2}, env={"SLEEP_S": "1.5"},
                          spec={"reserved_concurrency": 1}, visibility_s=1, dlq_max_receive=1)
    bodies = [f"t{n}" for n in range(8)]
    _send(client, stack.queue_url, bodies)
    stack.start_streams()
    wait_until(lambda: sorted(body for _, body in stack.done()) == sorted(bodies), timeout=90,
               message="every message handled")
    assert stack.dlq_url is not None
    assert sqs_client.drain(client, stack.dlq_url, count=1, timeout=2) == []
    assert stack.state()["throttled"] > 0, "no batch was throttled: the test did not test throttling"


def test_filter_criteria_deliver_matching_messages_and_delete_the_others(stack_factory: Any, client: Any) -> None:
    stack = stack_factory(event={"filter_criteria": [{"body": {"kind": ["order"]}}]})
    _send(client, stack.queue_url, [json.dumps({"kind": "order", "n": 1}), json.dumps({"kind": "spam"}), "plain",
                                    json.dumps({"kind": "order", "n": 2})])
    stack.start_streams()
    wait_until(lambda: stack.state()["filtered"] + stack.state()["deleted"] >= 4, timeout=60,
               message="every message handled or filtered")
    wait_until(lambda: _queue_empty(client, stack.queue_url), timeout=10, message="the queue emptied")
    assert sorted(json.loads(record["body"])["n"] for event in stack.events() for record in event["Records"]) == [1, 2]
    assert stack.state()["filtered"] == 2


def test_an_unknown_queue_is_shown_and_retried_until_it_exists(stack_factory: Any, client: Any) -> None:
    name = sqs_client.unique_name("late")
    stack = stack_factory(queue=name)
    process = stack.start_streams()
    wait_until(lambda: "does not exist" in (stack.state()["lastError"] or ""), timeout=30,
               message="the mapping's state to say the queue does not exist")
    assert process.poll() is None
    url, _ = sqs_client.make_queue(client, name)
    _send(client, url, ["late-1"])
    wait_until(lambda: stack.done() == [("-", "late-1")], timeout=60, message="the queue polled once it exists")
    assert "does not exist" in stack.streams_log() and "Traceback" not in stack.streams_log()


def _send_raw(endpoint: str, url: str, encoded_body: bytes) -> None:
    """SendMessage over the query protocol with a MessageBody given as raw percent-encoded bytes (boto3 sends
    only valid text), signed as boto3 signs."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    form = b"Action=SendMessage&Version=2012-11-05&QueueUrl=" + url.encode() + b"&MessageBody=" + encoded_body
    request = AWSRequest(method="POST", url=endpoint + "/", data=form,
                         headers={"Content-Type": "application/x-www-form-urlencoded"})
    SigV4Auth(Credentials(sqs_client.KEY_ID, sqs_client.secret()), "sqs", "us-east-1").add_auth(request)
    answer = httpx.post(endpoint + "/", content=form, headers=dict(request.headers), timeout=10)
    assert answer.status_code == 200, answer.text


def test_a_body_that_is_not_valid_utf8_is_delivered_not_lost(stack_factory: Any, sqs_endpoint: str,
                                                              client: Any) -> None:
    stack = stack_factory()
    _send_raw(sqs_endpoint, stack.queue_url, b"ok%FF%FEbad%C3")
    stack.start_streams()
    wait_until(lambda: len(stack.events()) == 1, timeout=60, message="the message delivered")
    assert stack.events()[0]["Records"][0]["body"] == "ok\ufffd\ufffdbad\ufffd"   # as the queue server decoded it
    wait_until(lambda: _queue_empty(client, stack.queue_url), timeout=10, message="the message deleted")


def test_a_batch_over_the_event_limit_is_split(stack_factory: Any, client: Any) -> None:
    big = "x" * 100_000
    stack = stack_factory(event={"batch_size": 10, "maximum_batching_window": 1},
                          config={"streams": {**STREAMS_SETTINGS, "max_batch_bytes": 250_000}})
    for n in range(6):       # one by one: a batch of sends is limited to 256 KB in all
        client.send_message(QueueUrl=stack.queue_url, MessageBody=f"{n}{big}")
    stack.start_streams()
    wait_until(lambda: len(stack.done()) >= 6, timeout=60, message="every big message handled")
    sizes = [len(json.dumps(event)) for event in stack.events()]
    assert len(sizes) >= 3 and max(sizes) <= 250_000, sizes


def test_the_pollers_survive_a_restart_of_the_queue_server(stack_factory: Any, tmp_path: Path) -> None:
    server = sqs_client.ElasticMQ(tmp_path / "emq")
    endpoint = server.start()
    try:
        own = server.client()
        stack = stack_factory(endpoint=endpoint, sqs=own, secret=server.secret)
        _send(own, stack.queue_url, ["before"])
        stack.start_streams()
        wait_until(lambda: stack.done() == [("-", "before")], timeout=60, message="a message handled")
        server.stop()
        wait_until(lambda: "cannot be reached" in (stack.state()["lastError"] or ""), timeout=30,
                   message="the mapping's state to say the queue server is down")
        assert server.start() == endpoint, "the restarted server is not at the same address"
        _send(own, stack.queue_url, ["after"])
        wait_until(lambda: [body for _, body in stack.done()] == ["before", "after"], timeout=60,
                   message="the pollers to go on once the server is back")
        assert all(process.poll() is None for process in stack.processes)
    finally:
        server.stop()


def test_sigterm_ends_the_streams_process_promptly_during_a_long_poll(stack_factory: Any, sqs_endpoint: str,
                                                                      client: Any) -> None:
    stack = stack_factory(config={"sqs": {**SQS_SETTINGS, "endpoint_url": sqs_endpoint, "wait_time_s": 20,
                                          **sqs_client.credentials()}}, visibility_s=2)
    process = stack.start_streams()
    wait_until(lambda: len(stack.state()["processes"]) == 1, timeout=30, message="the pollers to start")
    started = time.monotonic()
    process.terminate()
    process.wait(15)
    assert time.monotonic() - started < 8, "a stop waited for the 20 s long polls"
    assert process.returncode == 0, stack.streams_log()
    # A message the server gave to the poll cut off by the exit is not lost: it is visible again after its
    # visibility timeout, and a new process gets it.
    _send(client, stack.queue_url, ["after-stop"])
    stack.start_streams()
    wait_until(lambda: stack.done() == [("-", "after-stop")], timeout=60, message="the message handled")
