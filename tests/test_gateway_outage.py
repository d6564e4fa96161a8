"""A Redis outage as the gateway's callers see it, and the gateway resuming by itself when Redis is back.

The module runs its own redis-server (a password in a 0600 config file, append-only with fsync always, a
folder of its own) and one gateway on it. Each scenario fixture makes one outage: kill -9 (or SIGSTOP, a Redis
that accepts connections and never answers), makes every kind of call while Redis is away and records what
came back and how long it took, starts Redis again on the same port (SIGCONT), and waits, with a deadline,
until an Event invocation is accepted again. The tests then check the records, each one behaviour.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import shutil
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import boto3
import httpx
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from runtime.functions.package import pack_folder

from .helpers import TEST_FUNCTIONS, UNJAILED, Gateway, RedisServer, start_gateway, wait_until

QUICK_S = 4.0            # a refused request answers at once; a hung Redis costs one read timeout (2 s)
EVENT = {"X-Invocation-Type": "Event"}
AWS_EVENT = {"X-Amz-Invocation-Type": "Event"}
FUNCTIONS = ("echo", "limited")
# What redis-py says of a killed server, in its own words, which depend on the moment: a new connection
# refused, a pooled one closed or reset under it.
GONE = r"[^;\n]*[Cc]onnect[^;\n]*"


@dataclass
class Answer:
    status: int
    headers: httpx.Headers
    body: Any
    elapsed_s: float


def timed(client: httpx.Client, method: str, path: str, **kwargs: Any) -> Answer:
    """One request, its answer and how long it took."""
    started = time.monotonic()
    response = client.request(method, path, **kwargs)
    elapsed = time.monotonic() - started
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    return Answer(status=response.status_code, headers=response.headers, body=body, elapsed_s=elapsed)


@dataclass
class Outage:
    """What one outage looked like: the answers during it, the gateway's log lines of it, the recovery."""
    answers: dict[str, Answer] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)
    recovered_s: float = 0.0            # from Redis answering again to an Event invocation accepted
    accepted_before: str = ""           # an Event invocation accepted before the outage
    accepted_after: str = ""            # and one accepted after it
    gateway_pid: int = 0


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("outage") / "redis")
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def outage_gateway(tmp_path_factory: pytest.TempPathFactory, own_redis: RedisServer) -> Iterator[Gateway]:
    """The gateway with two functions (unjailed: `limited` is held and released through files of the host)."""
    folder = tmp_path_factory.mktemp("outage-functions")
    for name in FUNCTIONS:
        shutil.copytree(TEST_FUNCTIONS / name, folder / name)
    gateway = start_gateway(tmp_path_factory.mktemp("outage-gateway"), own_redis.url, functions_dir=folder,
                            config=UNJAILED)
    try:
        yield gateway
    finally:
        gateway.stop()


def lambda_client(gateway: Gateway) -> Any:
    """boto3 as a caller would have it, retries on (three attempts in botocore's standard mode)."""
    return boto3.client("lambda", endpoint_url=gateway.url, region_name="us-east-1",
                        aws_access_key_id="test", aws_secret_access_key="test",
                        config=Config(retries={"mode": "standard", "total_max_attempts": 3}, connect_timeout=5,
                                      read_timeout=10))


def invoke_limited(gateway: Gateway, event: dict[str, str]) -> Answer:
    with gateway.client() as client:
        return timed(client, "POST", "/functions/limited/invoke", json=event)


def accept_event(client: httpx.Client) -> str:
    response = client.post("/functions/echo/invoke", json={"k": "queued"}, headers=EVENT)
    assert response.status_code == 202, response.text
    return str(response.json()["requestId"])


def wait_for_recovery(gateway: Gateway, client: httpx.Client, outage: Outage, mark: int) -> None:
    """Until an Event invocation is accepted again (as a caller retrying would), then the log of the outage."""
    started = time.monotonic()

    def accepted() -> str:
        response = client.post("/functions/echo/invoke", json={"k": "after"}, headers=EVENT)
        assert response.status_code in (202, 503), response.text
        return str(response.json()["requestId"]) if response.status_code == 202 else ""

    outage.accepted_after = wait_until(accepted, timeout=20, interval=0.1, message="an Event invocation accepted")
    outage.recovered_s = time.monotonic() - started
    wait_until(lambda: "Redis is reachable again" in gateway.log()[mark:], timeout=10,
               message="the gateway to log that Redis is back")
    outage.log = [line for line in gateway.log()[mark:].splitlines() if not line.startswith("    |")]
    outage.gateway_pid = gateway.process.pid
    assert gateway.process.poll() is None, "the gateway exited"


@pytest.fixture(scope="module")
def killed(outage_gateway: Gateway, own_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Outage:
    """kill -9 Redis, call everything, start Redis again on the same port."""
    gateway, outage = outage_gateway, Outage()
    hold = tmp_path_factory.mktemp("hold")
    with gateway.client() as client:
        assert client.post("/functions/echo/invoke", json={"warm": 1}).status_code == 200
        assert client.post("/2015-03-31/functions/echo/invocations", json={"warm": 1}).status_code == 200
        outage.accepted_before = accept_event(client)
        mark = len(gateway.log())
        own_redis.kill()
        calls: dict[str, tuple[str, str, dict[str, Any]]] = {
            "sync": ("POST", "/functions/echo/invoke", {"json": {"during": "outage"}}),
            "aws sync": ("POST", "/2015-03-31/functions/echo/invocations", {"json": {"during": "outage"}}),
            "event": ("POST", "/functions/echo/invoke", {"json": {"k": 1}, "headers": EVENT}),
            "aws event": ("POST", "/2015-03-31/functions/echo/invocations", {"json": {"k": 1}, "headers": AWS_EVENT}),
            "deploy": ("PUT", "/functions/echo/code", {"content": pack_folder(TEST_FUNCTIONS / "echo")}),
            "delete": ("DELETE", "/functions/limited", {}),
            "alias": ("PUT", "/functions/echo/aliases/live", {"json": {"version": 1}}),
            "dlq": ("GET", "/functions/echo/dlq", {}),
            "status": ("GET", f"/invocations/{outage.accepted_before}", {}),
            "logs": ("GET", "/functions/echo/logs", {}),
            "function": ("GET", "/functions/echo", {}),
            "list": ("GET", "/functions", {}),
            "unknown": ("POST", "/functions/nosuch/invoke", {"json": {}}),
            "healthz": ("GET", "/healthz", {}),
            "metrics": ("GET", "/metrics", {}),
        }
        for label, (method, path, kwargs) in calls.items():
            outage.answers[label] = timed(client, method, path, **kwargs)
        # Reserved concurrency (1 for `limited`), counted in this process while Redis is away.
        started, release = hold / "started", hold / "release"
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            holder = pool.submit(invoke_limited, gateway, {"started": str(started), "release": str(release)})
            wait_until(started.exists, timeout=15, message="the first invocation of limited to start")
            outage.answers["limited second"] = timed(client, "POST", "/functions/limited/invoke",
                                                     json={"started": str(hold / "2"), "release": str(release)})
            release.touch()
            outage.answers["limited first"] = holder.result(timeout=20)
        # boto3, retrying as it does by default; what it raises once its attempts are spent.
        aws, began = lambda_client(gateway), time.monotonic()
        try:
            with pytest.raises(ClientError) as raised:
                aws.invoke(FunctionName="echo", InvocationType="Event", Payload=b"{}")
        finally:
            aws.close()
        outage.answers["boto3 event"] = Answer(
            status=raised.value.response["ResponseMetadata"]["HTTPStatusCode"], headers=httpx.Headers(),
            body=raised.value.response, elapsed_s=time.monotonic() - began)
        own_redis.start()
        wait_for_recovery(gateway, client, outage, mark)
        outage.answers["healthz after"] = timed(client, "GET", "/healthz")
        outage.answers["metrics after"] = timed(client, "GET", "/metrics")
        outage.answers["status before, after"] = timed(client, "GET", f"/invocations/{outage.accepted_before}")
        outage.answers["status after"] = timed(client, "GET", f"/invocations/{outage.accepted_after}")
    return outage


@pytest.fixture(scope="module")
def hung(outage_gateway: Gateway, own_redis: RedisServer, killed: Outage) -> Outage:
    """SIGSTOP Redis (connections are accepted, nothing is answered), call, SIGCONT. After `killed`, so that
    each outage has its own stretch of the log."""
    gateway, outage = outage_gateway, Outage()
    with gateway.client() as client:
        assert client.post("/functions/echo/invoke", json={"warm": 2}).status_code == 200
        mark = len(gateway.log())
        own_redis.pause()
        try:
            calls: list[tuple[str, str, str, dict[str, Any]]] = [
                ("event", "POST", "/functions/echo/invoke", {"json": {"k": 2}, "headers": EVENT}),
                ("event again", "POST", "/functions/echo/invoke", {"json": {"k": 3}, "headers": EVENT}),
                ("status", "GET", f"/invocations/{killed.accepted_before}", {}),
                ("sync", "POST", "/functions/echo/invoke", {"json": {"during": "hang"}}),
                ("healthz", "GET", "/healthz", {})]
            for label, method, path, kwargs in calls:
                outage.answers[label] = timed(client, method, path, **kwargs)
        finally:
            own_redis.resume()
        wait_for_recovery(gateway, client, outage, mark)
    return outage


def redis_message(own_redis: RedisServer) -> str:
    return f"Redis is not reachable at redis://:***@127.0.0.1:{own_redis.port}/0: "


# -- during the outage: refused with 503, quickly -----------------------------------------------------------

@pytest.mark.parametrize("call", ["event", "deploy", "delete", "alias", "dlq", "status", "logs", "function",
                                  "unknown"])
def test_a_call_that_needs_redis_answers_503_with_lambents_error_and_retry_after(
        killed: Outage, own_redis: RedisServer, call: str) -> None:
    answer = killed.answers[call]
    assert answer.status == 503, answer.body
    assert answer.headers["retry-after"] == "2"
    assert answer.headers["content-type"] == "application/json"
    assert set(answer.body) == {"error", "message", "requestId"}
    assert answer.body["error"] == "ServiceUnavailable"
    assert re.fullmatch(re.escape(redis_message(own_redis)) + GONE + "; retry later",
                        answer.body["message"]), answer.body["message"]
    assert own_redis.password not in json.dumps(answer.body)
    assert answer.body["requestId"] == answer.headers["x-request-id"]


def test_an_event_invocation_on_the_aws_path_answers_503_in_aws_shape(killed: Outage, own_redis: RedisServer) -> None:
    answer = killed.answers["aws event"]
    assert answer.status == 503
    assert answer.headers["retry-after"] == "2"
    assert answer.headers["x-amzn-errortype"] == "ServiceException"
    assert answer.headers["x-amzn-requestid"] == answer.headers["x-request-id"]
    assert answer.body["Type"] == "Service"
    assert re.fullmatch(re.escape(redis_message(own_redis)) + GONE + "; retry later",
                        answer.body["message"]), answer.body["message"]
    assert own_redis.password not in json.dumps(answer.body)


def test_boto3_retries_the_503_and_then_raises_lambdas_service_exception(killed: Outage) -> None:
    answer = killed.answers["boto3 event"]
    assert answer.status == 503
    assert answer.body["Error"]["Code"] == "ServiceException"
    assert answer.body["ResponseMetadata"]["RetryAttempts"] == 2       # three attempts in all
    assert "Redis is not reachable" in answer.body["Error"]["Message"]
    assert answer.elapsed_s < 15


def test_every_call_during_the_outage_answers_within_seconds(killed: Outage) -> None:
    slow = {label: round(answer.elapsed_s, 2) for label, answer in killed.answers.items()
            if answer.elapsed_s > QUICK_S and label not in ("boto3 event", "limited first")}
    assert not slow


# -- during the outage: what needs no Redis goes on ---------------------------------------------------------

def test_a_warm_sync_invocation_answers_200_with_the_handlers_value(killed: Outage) -> None:
    answer = killed.answers["sync"]
    assert answer.status == 200
    assert answer.body["event"] == {"during": "outage"}
    assert answer.body["context"]["aws_request_id"] == answer.headers["x-request-id"]
    aws = killed.answers["aws sync"]
    assert aws.status == 200 and aws.body["event"] == {"during": "outage"}
    assert aws.headers["x-amz-executed-version"] == "$LATEST"


def test_reserved_concurrency_is_counted_in_the_gateway_while_redis_is_away(killed: Outage) -> None:
    # limited has reserved_concurrency 1: the second call while the first holds the slot is throttled
    second = killed.answers["limited second"]
    assert second.status == 429
    assert second.body["reason"] == "ReservedFunctionConcurrentInvocationLimitExceeded"
    first = killed.answers["limited first"]
    assert first.status == 200 and first.body == "released"


def test_the_function_list_is_served_from_the_gateways_cache(killed: Outage) -> None:
    answer = killed.answers["list"]
    assert answer.status == 200
    assert sorted(function["name"] for function in answer.body["functions"]) == sorted(FUNCTIONS)


def test_healthz_answers_200_degraded_naming_redis_and_metrics_say_redis_is_down(
        killed: Outage, own_redis: RedisServer) -> None:
    health = killed.answers["healthz"]
    assert health.status == 200
    assert health.body["status"] == "degraded"
    assert health.body["redis"]["reachable"] is False
    assert health.body["redis"]["url"] == f"redis://:***@127.0.0.1:{own_redis.port}/0"
    assert health.body["redis"]["message"].startswith(redis_message(own_redis))
    assert health.body["redis"]["downSince"].endswith("Z")
    assert "isolation" in health.body
    metrics = killed.answers["metrics"]
    assert metrics.status == 200
    assert "\nlambent_redis_up 0.0\n" in metrics.body
    assert "lambent_async_queue_depth" not in metrics.body          # cluster numbers left out, not guessed


def test_the_log_says_the_outage_once_and_the_recovery_once(killed: Outage, own_redis: RedisServer) -> None:
    warnings = [line for line in killed.log if " WARNING " in line]
    assert len(warnings) == 1, warnings
    assert "Redis is not reachable" in warnings[0]
    assert f"redis://:***@127.0.0.1:{own_redis.port}/0" in warnings[0]
    assert [line for line in killed.log if "Redis is reachable again" in line and " INFO " in line]
    assert len([line for line in killed.log if "Redis is reachable again" in line]) == 1
    assert not [line for line in killed.log if " ERROR " in line or "Traceback" in line]
    assert not [line for line in killed.log if own_redis.password in line]


# -- after the outage: everything resumes, nothing accepted is lost -----------------------------------------

def test_when_redis_is_back_an_event_invocation_is_accepted_again_without_a_restart(
        killed: Outage, outage_gateway: Gateway) -> None:
    assert killed.recovered_s < 5.0
    assert killed.gateway_pid == outage_gateway.process.pid
    assert killed.answers["status after"].status == 200
    assert killed.answers["status after"].body["status"] == "queued"
    health = killed.answers["healthz after"]
    assert health.status == 200 and health.body["status"] == "ok" and health.body["redis"] == {"reachable": True}
    assert "\nlambent_redis_up 1.0\n" in killed.answers["metrics after"].body


def test_an_event_accepted_before_the_outage_is_still_queued_after_it(killed: Outage) -> None:
    answer = killed.answers["status before, after"]
    assert answer.status == 200
    assert answer.body["requestId"] == killed.accepted_before and answer.body["status"] == "queued"


def test_the_logs_of_a_sync_invocation_during_the_outage_are_stored_once_redis_is_back(
        killed: Outage, outage_gateway: Gateway) -> None:
    request_id = killed.answers["sync"].headers["x-request-id"]

    def stored() -> list[dict[str, Any]]:
        with outage_gateway.client() as client:
            response = client.get("/functions/echo/logs", params={"request_id": request_id})
        assert response.status_code == 200, response.text
        return list(response.json()["records"])

    records = wait_until(stored, timeout=10, message="the outage's invocation logs in Redis")
    assert len(records) == 1
    assert f"START RequestId: {request_id}" in records[0]["text"]
    assert "echo got {'during': 'outage'}" in records[0]["text"]


def test_deploy_and_admin_calls_work_again(killed: Outage, outage_gateway: Gateway) -> None:
    with outage_gateway.client() as client:
        alias = client.put("/functions/echo/aliases/live", json={"version": 1})
        assert alias.status_code == 200, alias.text
        assert client.get("/functions/echo/dlq").status_code == 200
        assert client.post("/functions/echo:live/invoke", json={"via": "alias"}).json()["event"] == {"via": "alias"}


# -- a Redis that accepts connections and never answers -----------------------------------------------------

def test_a_hung_redis_costs_a_request_one_timeout_and_later_ones_nothing(hung: Outage, own_redis: RedisServer) -> None:
    first = hung.answers["event"]
    assert first.status == 503 and first.elapsed_s < QUICK_S
    assert first.body["message"].startswith(redis_message(own_redis)) and "Timeout" in first.body["message"]
    again = hung.answers["event again"]
    assert again.status == 503 and again.elapsed_s < 1.0        # known to be down: refused without waiting
    assert hung.answers["status"].status == 503 and hung.answers["status"].elapsed_s < QUICK_S
    sync = hung.answers["sync"]
    assert sync.status == 200 and sync.body["event"] == {"during": "hang"} and sync.elapsed_s < 1.0
    assert hung.answers["healthz"].status == 200 and hung.answers["healthz"].body["status"] == "degraded"
    assert hung.answers["healthz"].elapsed_s < QUICK_S


def test_a_hung_redis_that_answers_again_is_one_warning_one_info_and_work_resumes(hung: Outage) -> None:
    assert hung.recovered_s < 5.0 and hung.accepted_after
    assert len([line for line in hung.log if " WARNING " in line]) == 1
    assert len([line for line in hung.log if "Redis is reachable again" in line]) == 1
    assert not [line for line in hung.log if " ERROR " in line or "Traceback" in line]
