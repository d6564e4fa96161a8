"""The SQS guard in front of ElasticMQ (runtime/sqsguard.py, started by scripts/elasticmq.sh): functions share the
host's network and ElasticMQ checks no credentials, so only requests signed with the guard's key may reach it, and
ElasticMQ itself listens in the guard's own network namespace, where nothing of the host can connect."""

from __future__ import annotations

import json
import os
import signal
import textwrap
import time
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlencode

import httpx
import pytest
import yaml
from botocore import UNSIGNED
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config as BotoConfig
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from . import sqs_client
from .helpers import fresh_redis_url, start_gateway, wait_until
from .sqs_client import ElasticMQ, drain, make_queue, queue_depth, sqs, unique_name

WHAT_TO_DO = "sqs.secret_access_key"        # every refusal names the config key to set
PROBE = '''
def handler(event, context):
    scope = {"event": event, "context": context}
    exec(event["code"], scope)
    return scope.get("result")
'''


@pytest.fixture(scope="module")
def own_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ElasticMQ]:
    """An ElasticMQ of this module's own, for the tests that look at (and kill) its processes."""
    server = ElasticMQ(tmp_path_factory.mktemp("guard") / "emq")
    try:
        server.start()
        yield server
    finally:
        server.stop()


def _refused(call: Any) -> tuple[str, int, str]:
    with pytest.raises(ClientError) as caught:
        call()
    error = caught.value.response
    return error["Error"]["Code"], error["ResponseMetadata"]["HTTPStatusCode"], error["Error"]["Message"]


def _unsigned(endpoint: str) -> Any:
    import boto3
    return boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1",
                        config=BotoConfig(signature_version=UNSIGNED, retries={"max_attempts": 1}))


def _signed_query(endpoint: str, secret: str, params: dict[str, str]) -> httpx.Response:
    """A request of SQS's query protocol (form-encoded, XML answers), signed as the AWS CLI of old signed it."""
    request = AWSRequest(method="POST", url=endpoint + "/", data=urlencode(params),
                         headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
    SigV4Auth(Credentials(sqs_client.KEY_ID, secret), "sqs", "us-east-1").add_auth(request)
    return httpx.post(endpoint + "/", content=request.body, headers=dict(request.headers.items()), timeout=10)


def test_unsigned_wrongly_signed_and_unknown_key_requests_are_refused_and_change_nothing(sqs_endpoint: str) -> None:
    good = sqs(sqs_endpoint)
    url, _ = make_queue(good, unique_name("guarded"))
    good.send_message(QueueUrl=url, MessageBody="kept")
    attackers = {
        "MissingAuthenticationToken": _unsigned(sqs_endpoint),
        "SignatureDoesNotMatch": sqs(sqs_endpoint, secret_access_key="0" * 64),
        "InvalidClientTokenId": sqs(sqs_endpoint, access_key_id="someone", secret_access_key=sqs_client.secret()),
    }
    for expected, client in attackers.items():
        for call in (lambda: client.list_queues(), lambda: client.receive_message(QueueUrl=url),
                     lambda: client.send_message(QueueUrl=url, MessageBody="forged"),
                     lambda: client.purge_queue(QueueUrl=url), lambda: client.delete_queue(QueueUrl=url)):
            code, status, message = _refused(call)
            assert (code, status) == (expected, 403), (code, status, message)
            assert WHAT_TO_DO in message
    # without boto3: SQS's JSON protocol answers in JSON, with the query-compatible error header
    raw = httpx.post(sqs_endpoint, content=json.dumps({"QueueUrl": url, "MaxNumberOfMessages": 10}),
                     headers={"X-Amz-Target": "AmazonSQS.ReceiveMessage",
                              "Content-Type": "application/x-amz-json-1.0"}, timeout=10)
    assert raw.status_code == 403
    assert raw.json()["__type"] == "com.amazon.coral.service#MissingAuthenticationToken"
    assert WHAT_TO_DO in raw.json()["message"]
    assert raw.headers["x-amzn-query-error"] == "MissingAuthenticationToken;Sender"
    # ...and its query protocol in XML, GET and POST alike
    for raw in (httpx.post(sqs_endpoint, data={"Action": "DeleteQueue", "QueueUrl": url}, timeout=10),
                httpx.get(sqs_endpoint, params={"Action": "ReceiveMessage", "QueueUrl": url}, timeout=10)):
        assert raw.status_code == 403
        assert "<Code>MissingAuthenticationToken</Code>" in raw.text and "<ErrorResponse" in raw.text
    # a signature over one body does not carry another
    request = AWSRequest(method="POST", url=sqs_endpoint + "/",
                         data=urlencode({"Action": "GetQueueUrl", "QueueName": "x"}),
                         headers={"Content-Type": "application/x-www-form-urlencoded"})
    SigV4Auth(Credentials(sqs_client.KEY_ID, sqs_client.secret()), "sqs", "us-east-1").add_auth(request)
    forged = httpx.post(sqs_endpoint + "/", content=urlencode({"Action": "DeleteQueue", "QueueUrl": url}),
                        headers={name: value for name, value in request.headers.items()
                                 if name.lower() != "content-length"}, timeout=10)
    assert forged.status_code == 403 and "<Code>SignatureDoesNotMatch</Code>" in forged.text
    # nothing changed: the queue is there with its one message
    assert queue_depth(good, url) == 1
    assert [message["Body"] for message in drain(good, url, count=1, timeout=10)] == ["kept"]


def test_a_signed_client_sends_receives_deletes_and_long_polls_through_the_guard(sqs_endpoint: str) -> None:
    client = sqs(sqs_endpoint)
    url, _ = make_queue(client, unique_name("signed"))
    big = "é" * 100_000 + "x" * 50_000                # 250,000 bytes of UTF-8: near SQS's 256 KiB
    client.send_message(QueueUrl=url, MessageBody=big)
    client.send_message_batch(QueueUrl=url, Entries=[{"Id": str(i), "MessageBody": f"m{i} &=+%/ ü"}
                                                     for i in range(10)])
    bodies = [message["Body"] for message in drain(client, url, count=11, timeout=20)]
    assert sorted(bodies) == sorted([big] + [f"m{i} &=+%/ ü" for i in range(10)])
    assert queue_depth(client, url) == 0
    # the query protocol, signed, percent-encoding and all
    answer = _signed_query(sqs_endpoint, sqs_client.secret(), {"Action": "SendMessage", "QueueUrl": url,
                                                               "MessageBody": "q &=+ ü", "Version": "2012-11-05"})
    assert answer.status_code == 200 and "<SendMessageResponse" in answer.text, answer.text
    assert [message["Body"] for message in drain(client, url, count=1, timeout=10)] == ["q &=+ ü"]
    # a long poll is held for its whole wait, then answers
    started = time.monotonic()
    assert client.receive_message(QueueUrl=url, WaitTimeSeconds=2).get("Messages", []) == []
    assert time.monotonic() - started >= 1.8
    # the unauthenticated health check says only that the guard and its server answer
    health = httpx.get(f"{sqs_endpoint}/healthz", timeout=10)
    assert (health.status_code, health.text) == (200, "ok\n")


def _listening_inodes(net_tcp: Path) -> dict[int, int]:
    """socket inode -> port of the LISTEN sockets in one /proc/<pid>/net/tcp{,6} (the namespace of that pid)."""
    found = {}
    for line in net_tcp.read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A":                                          # TCP_LISTEN
            found[int(fields[9])] = int(fields[1].rsplit(":", 1)[1], 16)
    return found


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def test_elasticmq_listens_only_in_the_guards_network_namespace(own_server: ElasticMQ) -> None:
    guard, java = own_server.guard_pid(), own_server.pid()
    assert guard is not None and java is not None
    port = int(own_server.endpoint.rsplit(":", 1)[1])
    host_ns = os.readlink("/proc/self/ns/net")
    assert os.readlink(f"/proc/{java}/ns/net") == os.readlink(f"/proc/{guard}/ns/net") != host_ns
    # in the host's namespace, the only listening socket of the guard and its ElasticMQ is the guard's port
    host_listening = {**_listening_inodes(Path("/proc/self/net/tcp")),
                      **_listening_inodes(Path("/proc/self/net/tcp6"))}
    theirs = _socket_inodes(guard) | _socket_inodes(java)
    assert {host_listening[inode] for inode in theirs if inode in host_listening} == {port}
    # ElasticMQ listens on 127.0.0.1:9324 of its own namespace, a socket the host's namespace does not have
    inner = {**_listening_inodes(Path(f"/proc/{java}/net/tcp")), **_listening_inodes(Path(f"/proc/{java}/net/tcp6"))}
    assert 9324 in {inner[inode] for inode in _socket_inodes(java) if inode in inner}
    assert not _socket_inodes(java) & set(host_listening)
    # the secret is in a file of mode 0600, in no command line, and not in ElasticMQ's environment
    secret_file = own_server.state_dir / "sqs.secret"
    assert secret_file.stat().st_mode & 0o077 == 0 and secret_file.read_text().strip() == own_server.secret
    for pid in (guard, java):
        assert own_server.secret.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
    assert own_server.secret.encode() not in Path(f"/proc/{java}/environ").read_bytes()


def test_kill_9_of_the_guard_takes_elasticmq_with_it(own_server: ElasticMQ) -> None:
    guard, java = own_server.guard_pid(), own_server.pid()
    assert guard is not None and java is not None
    client = own_server.client()
    url, _ = make_queue(client, "survivor")
    client.send_message(QueueUrl=url, MessageBody="kept")
    endpoint = own_server.endpoint
    os.kill(guard, signal.SIGKILL)
    wait_until(lambda: not _alive(java), timeout=10, message="ElasticMQ to die with its guard")
    assert own_server.start() == endpoint                     # started again at the same URL, the queue kept
    assert own_server.pid() != java
    assert [message["Body"] for message in drain(own_server.client(), url, count=1, timeout=10)] == ["kept"]


def test_a_jailed_function_that_knows_the_endpoint_cannot_use_the_queues(
        tmp_path: Path, redis_base_url: str, sqs_endpoint: str) -> None:
    good = sqs(sqs_endpoint)
    url, _ = make_queue(good, unique_name("victim"))
    good.send_message(QueueUrl=url, MessageBody="private")
    functions = tmp_path / "fn"
    (functions / "probe").mkdir(parents=True)
    (functions / "probe" / "handler.py").write_text(PROBE)
    (functions / "probe" / "function.yaml").write_text(yaml.safe_dump({"timeout": 20, "memory_mb": 256}))
    # the server holds the secret, as `make up` gives it to every role
    gateway = start_gateway(tmp_path / "node", fresh_redis_url(redis_base_url), functions_dir=functions,
                            config={"sandbox": {"isolation": "jail"},
                                    "sqs": {"endpoint_url": sqs_endpoint, **sqs_client.credentials()}})
    code = """
    import os, boto3, botocore, urllib.request, urllib.error
    from botocore.config import Config
    answers = {}
    attempts = {
        "unsigned": dict(config=Config(signature_version=botocore.UNSIGNED, retries={"max_attempts": 1})),
        "guessed": dict(aws_access_key_id="lambent", aws_secret_access_key="guess",
                        config=Config(retries={"max_attempts": 1})),
    }
    for name, options in attempts.items():
        client = boto3.client("sqs", endpoint_url=event["endpoint"], region_name="us-east-1", **options)
        for action, call in (("list", lambda: client.list_queues()),
                             ("receive", lambda: client.receive_message(QueueUrl=event["url"])),
                             ("purge", lambda: client.purge_queue(QueueUrl=event["url"]))):
            try:
                call()
                answers[f"{name} {action}"] = "ALLOWED"
            except botocore.exceptions.ClientError as exc:
                answers[f"{name} {action}"] = exc.response["Error"]["Code"]
    try:
        urllib.request.urlopen(event["endpoint"] + "/?Action=ListQueues", timeout=5)
        answers["raw"] = "ALLOWED"
    except urllib.error.HTTPError as exc:
        answers["raw"] = exc.code
    answers["secret in env"] = any(event["secret"] in value for value in os.environ.values())
    result = answers
    """
    try:
        response = gateway.invoke("probe", {"code": textwrap.dedent(code), "endpoint": sqs_endpoint, "url": url,
                                            "secret": sqs_client.secret()})
        assert response.status_code == 200, response.text
        answers = response.json()
        assert gateway.request("GET", "/healthz", timeout=5).json()["isolation"]["mode"] == "jail"
    finally:
        gateway.stop()
    assert answers == {"unsigned list": "MissingAuthenticationToken", "unsigned receive": "MissingAuthenticationToken",
                       "unsigned purge": "MissingAuthenticationToken", "guessed list": "SignatureDoesNotMatch",
                       "guessed receive": "SignatureDoesNotMatch", "guessed purge": "SignatureDoesNotMatch",
                       "raw": 403, "secret in env": False}, answers
    assert [message["Body"] for message in drain(good, url, count=1, timeout=10)] == ["private"]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")
