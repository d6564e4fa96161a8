"""The real ElasticMQ that scripts/elasticmq.sh runs, and the SQS behaviour of it the `sqs` event source relies
on: queue URLs and ARNs as AWS writes them, the attributes Lambda's `aws:sqs` records carry, redrive to a
dead-letter queue after maxReceiveCount receives, FIFO message groups blocked while a message of theirs is in
flight, and queues and messages kept across a restart at the same URL."""

from __future__ import annotations

import hashlib
import os
import signal
import time
from pathlib import Path
from typing import Any

from . import sqs_client
from .helpers import wait_until
from .sqs_client import ElasticMQ, drain, make_queue, queue_depth, sqs, unique_name


def _receive(client: Any, url: str, *, wait_s: int = 0, most: int = 10) -> list[dict[str, Any]]:
    answer = client.receive_message(QueueUrl=url, MaxNumberOfMessages=most, WaitTimeSeconds=wait_s,
                                    MessageSystemAttributeNames=["All"], MessageAttributeNames=["All"])
    return list(answer.get("Messages", []))


def test_urls_arns_and_the_attributes_of_a_received_message(sqs_endpoint: str) -> None:
    client = sqs(sqs_endpoint)
    name = unique_name("emq-attrs")
    url, _ = make_queue(client, name)
    assert url == f"{sqs_endpoint}/{sqs_client.ACCOUNT}/{name}"
    assert sqs_client.queue_arn(client, url) == f"arn:aws:sqs:us-east-1:000000000000:{name}"
    assert client.get_queue_url(QueueName=name)["QueueUrl"] == url
    before_ms = int(time.time() * 1000)
    client.send_message(QueueUrl=url, MessageBody="héllo",
                        MessageAttributes={"kind": {"DataType": "String", "StringValue": "greeting"},
                                           "n": {"DataType": "Number", "StringValue": "7"}})
    [message] = drain(client, url, count=1, timeout=10)
    assert message["Body"] == "héllo"
    assert message["MD5OfBody"] == hashlib.md5("héllo".encode()).hexdigest()
    attributes = message["Attributes"]
    assert attributes["ApproximateReceiveCount"] == "1"
    assert before_ms - 5000 <= int(attributes["SentTimestamp"]) <= int(attributes["ApproximateFirstReceiveTimestamp"])
    assert attributes["SenderId"]
    assert message["MessageAttributes"] == {"kind": {"DataType": "String", "StringValue": "greeting"},
                                            "n": {"DataType": "Number", "StringValue": "7"}}
    assert message["MD5OfMessageAttributes"]
    assert queue_depth(client, url) == 0           # drain deleted it


def test_a_fifo_group_is_blocked_while_one_of_its_messages_is_in_flight(sqs_endpoint: str) -> None:
    client = sqs(sqs_endpoint)
    url, _ = make_queue(client, unique_name("emq-fifo"), fifo=True, visibility_s=30)
    for index in range(3):
        client.send_message(QueueUrl=url, MessageBody=f"a{index}", MessageGroupId="A")
    client.send_message(QueueUrl=url, MessageBody="b0", MessageGroupId="B")
    [first] = _receive(client, url, most=1)
    assert first["Body"] == "a0"
    assert first["Attributes"]["MessageGroupId"] == "A"
    assert first["Attributes"]["SequenceNumber"].isdigit()
    assert first["Attributes"]["MessageDeduplicationId"]        # content-based: a SHA-256 of the body
    # a0 is in flight: nothing more of group A comes, group B does
    assert [m["Body"] for m in _receive(client, url)] == ["b0"]
    assert _receive(client, url) == []
    # a0 deleted: group A goes on, in order, several messages of one group in one batch
    client.delete_message(QueueUrl=url, ReceiptHandle=first["ReceiptHandle"])
    assert [m["Body"] for m in _receive(client, url)] == ["a1", "a2"]


def test_a_message_received_max_receive_count_times_moves_to_the_dead_letter_queue(sqs_endpoint: str) -> None:
    client = sqs(sqs_endpoint)
    url, dlq = make_queue(client, unique_name("emq-dlq"), fifo=True, visibility_s=1, dlq_max_receive=2)
    assert dlq is not None and dlq.endswith("-dlq.fifo")
    client.send_message(QueueUrl=url, MessageBody="poison", MessageGroupId="g")
    counts = []
    for _ in range(2):                       # received twice, never deleted: visible again after 1 s each time
        [message] = wait_until(lambda: _receive(client, url, wait_s=1), timeout=10, message="the message again")
        counts.append(message["Attributes"]["ApproximateReceiveCount"])
    assert counts == ["1", "2"]
    # the third receive attempt moves it to the DLQ instead of returning it
    time.sleep(1.2)                          # its visibility timeout (1 s) running out: nothing to poll for
    assert _receive(client, url, wait_s=1) == []
    [dead] = drain(client, dlq, count=1, timeout=10)
    assert dead["Body"] == "poison"
    assert dead["Attributes"]["DeadLetterQueueSourceArn"] == sqs_client.queue_arn(client, url)
    assert queue_depth(client, url) == 0


def test_queues_and_messages_survive_a_restart_at_the_same_url(tmp_path: Path) -> None:
    server = ElasticMQ(tmp_path / "emq")
    try:
        endpoint = server.start()
        assert server.start() == endpoint                     # a second start finds it running
        client = server.client()
        url, dlq = make_queue(client, "kept", visibility_s=30, dlq_max_receive=3)
        for index in range(5):
            client.send_message(QueueUrl=url, MessageBody=f"m{index}")
        [in_flight] = _receive(client, url, most=1)
        first_pid, first_guard, secret = server.pid(), server.guard_pid(), server.secret
        server.stop()
        assert first_pid is not None and not _alive(first_pid)
        assert first_guard is not None and not _alive(first_guard)
        assert server.start() == endpoint                     # the same port, so the same URL
        assert server.secret == secret                        # and the same secret
        client = server.client()
        assert client.get_queue_url(QueueName="kept")["QueueUrl"] == url
        attributes = client.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        assert (attributes["ApproximateNumberOfMessages"], attributes["ApproximateNumberOfMessagesNotVisible"]) \
            == ("4", "1")                                     # the one in flight is still in flight
        assert "RedrivePolicy" in attributes and dlq is not None
        bodies = sorted(m["Body"] for m in drain(client, url, count=4, timeout=10))
        assert bodies == sorted({"m0", "m1", "m2", "m3", "m4"} - {in_flight["Body"]})
        # the old receipt handle still deletes the in-flight one
        client.delete_message(QueueUrl=url, ReceiptHandle=in_flight["ReceiptHandle"])
        assert queue_depth(client, url) == 0
    finally:
        server.stop()


def test_stop_when_not_running_and_kill_9_leave_no_pid_behind(tmp_path: Path) -> None:
    server = ElasticMQ(tmp_path / "emq")
    server.stop()                                             # no state dir yet: nothing to do, no error
    try:
        endpoint = server.start()
        pid, guard = server.pid(), server.guard_pid()
        assert pid is not None and guard is not None
        os.kill(pid, signal.SIGKILL)                          # ElasticMQ dies: its guard stops too
        wait_until(lambda: not _alive(pid) and not _alive(guard), timeout=10, message="the killed server to exit")
        assert server.start() == endpoint                     # a stale pidfile: started again, same URL
        assert server.pid() != pid
        server.client().list_queues()
    finally:
        server.stop()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")
