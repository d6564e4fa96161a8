"""boto3 SQS clients and small helpers for the tests that use the real ElasticMQ (scripts/elasticmq.sh).

ElasticMQ sits behind its guard (runtime/sqsguard.py), which forwards only requests signed with access key id
`lambent` and the secret scripts/elasticmq.sh generated: `make test` exports it as LAMBENT_TEST_SQS_SECRET, and a
server of a test's own (`ElasticMQ`) has its own in its state dir. Queue URLs come back as
http://127.0.0.1:PORT/000000000000/NAME (the guard's address) and ARNs as arn:aws:sqs:us-east-1:000000000000:NAME.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

REGION = "us-east-1"
ACCOUNT = "000000000000"
SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "elasticmq.sh"


KEY_ID = "lambent"          # the one access key id the guard knows


def secret() -> str:
    """The shared test server's secret (scripts/test.sh exports it)."""
    value = os.environ.get("LAMBENT_TEST_SQS_SECRET")
    if not value:
        raise AssertionError("LAMBENT_TEST_SQS_SECRET is not set: run the tests with `make test`")
    return value


def credentials(secret_access_key: str | None = None) -> dict[str, str]:
    """The `sqs` config keys that sign with the guard's key: `{"sqs": {"endpoint_url": ..., **credentials()}}`."""
    return {"access_key_id": KEY_ID, "secret_access_key": secret_access_key or secret()}


def sqs(endpoint: str, *, secret_access_key: str | None = None, access_key_id: str = KEY_ID) -> Any:
    """An SQS client for the guarded ElasticMQ at `endpoint`, signing with the shared server's secret unless
    `secret_access_key` is given: short timeouts (a test must fail fast, not hang on a dead server) and few
    retries (a retry hides nothing the test should see). The read timeout leaves room for 20-second long polls."""
    config = Config(connect_timeout=3, read_timeout=30, retries={"max_attempts": 2, "mode": "standard"})
    return boto3.client("sqs", endpoint_url=endpoint, region_name=REGION, aws_access_key_id=access_key_id,
                        aws_secret_access_key=secret_access_key or secret(), config=config)


def unique_name(prefix: str) -> str:
    """A queue name no other test (nor an earlier run on a kept server) has used: SQS names allow
    letters, digits, '-' and '_', up to 80 characters (with '.fifo' counted)."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"[:70]


def queue_arn(client: Any, url: str) -> str:
    return str(client.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"])


def make_queue(client: Any, name: str, *, fifo: bool = False, visibility_s: int = 30,
               dlq_max_receive: int | None = None) -> tuple[str, str | None]:
    """Create queue `name` (FIFO: '.fifo' is appended, with content-based deduplication so tests need no
    deduplication ids) and, when `dlq_max_receive` is given, its dead-letter queue `name-dlq` with a redrive
    policy: a message received that many times without being deleted moves there. Returns (queue URL,
    dead-letter queue URL or None)."""
    suffix = ".fifo" if fifo else ""
    base: dict[str, str] = {"FifoQueue": "true", "ContentBasedDeduplication": "true"} if fifo else {}
    dlq_url: str | None = None
    attributes = {**base, "VisibilityTimeout": str(visibility_s)}
    if dlq_max_receive is not None:
        dlq_url = client.create_queue(QueueName=f"{name}-dlq{suffix}", Attributes=dict(base))["QueueUrl"]
        attributes["RedrivePolicy"] = json.dumps({"deadLetterTargetArn": queue_arn(client, str(dlq_url)),
                                                  "maxReceiveCount": str(dlq_max_receive)})
    url = client.create_queue(QueueName=f"{name}{suffix}", Attributes=attributes)["QueueUrl"]
    return str(url), dlq_url


def drain(client: Any, url: str, *, count: int, timeout: float) -> list[dict[str, Any]]:
    """Receive (and delete) messages from `url` until `count` have come or `timeout` seconds have passed;
    returns them as ReceiveMessage gave them, with every system and message attribute."""
    received: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(received) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        answer = client.receive_message(QueueUrl=url, MaxNumberOfMessages=min(10, count - len(received)),
                                        WaitTimeSeconds=max(0, min(5, int(left))),
                                        MessageSystemAttributeNames=["All"], MessageAttributeNames=["All"])
        messages = answer.get("Messages", [])
        if messages:
            client.delete_message_batch(QueueUrl=url, Entries=[
                {"Id": str(index), "ReceiptHandle": message["ReceiptHandle"]}
                for index, message in enumerate(messages)])
            received.extend(messages)
    return received


def queue_depth(client: Any, url: str) -> int:
    """Messages in the queue, visible and in flight (ElasticMQ's counts are exact, not approximate)."""
    attributes = client.get_queue_attributes(QueueUrl=url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed"])["Attributes"]
    return sum(int(value) for value in attributes.values())


class ElasticMQ:
    """An ElasticMQ of a test's own, run by scripts/elasticmq.sh in `state_dir`, to stop and start again: its
    queues and messages survive that (an H2 store in `state_dir`), and so does its URL while the port is free.
    `ElasticMQ.shared()` is the one `make test` started, for tests of a restart of the server everything uses
    (it is started again before they end: wrap them in try/finally)."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.endpoint = ""
        self.secret = ""

    @classmethod
    def shared(cls) -> "ElasticMQ":
        state = os.environ.get("LAMBENT_TEST_SQS_STATE")
        if not state:
            raise AssertionError("LAMBENT_TEST_SQS_STATE is not set: run the tests with `make test`")
        server = cls(Path(state))
        server.endpoint = os.environ.get("LAMBENT_TEST_SQS_ENDPOINT", "")
        server.secret = os.environ.get("LAMBENT_TEST_SQS_SECRET", "")
        return server

    def _run(self, command: str) -> str:
        done = subprocess.run([str(SCRIPT), command, str(self.state_dir)], capture_output=True, text=True,
                              timeout=120)
        if done.returncode != 0:
            raise AssertionError(f"scripts/elasticmq.sh {command} failed ({done.returncode}):\n{done.stderr}")
        return done.stdout.strip()

    def start(self) -> str:
        """Start it (or find it running); returns its endpoint URL (the guard's). `secret` is then its secret."""
        self.endpoint = self._run("start")
        self.secret = self._run("secret")
        return self.endpoint

    def client(self) -> Any:
        """An SQS client signing with this server's own secret."""
        return sqs(self.endpoint, secret_access_key=self.secret)

    def stop(self) -> None:
        """The guard, and with it ElasticMQ: SIGTERM, then SIGKILL; nothing when it is not running."""
        self._run("stop")

    def pid(self) -> int | None:
        """ElasticMQ's JVM."""
        return self._pid("elasticmq.pid")

    def guard_pid(self) -> int | None:
        return self._pid("sqsguard.pid")

    def _pid(self, name: str) -> int | None:
        try:
            return int((self.state_dir / name).read_text().strip())
        except (OSError, ValueError):
            return None
