"""SNS-style topics end to end: boto3's SNS client and the AWS CLI against a real gateway, a real worker, real Redis.

One gateway and one worker serve the module. Its functions (made in a temporary folder) record the event they get
in a folder of the host, so they run unjailed (helpers.UNJAILED); the jail is tested elsewhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import boto3
import httpx
import pytest
from aws_lambda_powertools.utilities.parser.models import SnsModel
from botocore import UNSIGNED
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

from .helpers import UNJAILED, Gateway, Role, fresh_redis_url, start_gateway, start_worker, wait_until

REGION = "us-east-1"
PREFIX = f"arn:aws:sns:{REGION}:000000000000:"
RECORDER = """import json, os, uuid

def handler(event, context):
    folder = os.path.join(os.environ["OUT"], context.function_name)
    os.makedirs(folder, exist_ok=True)
    name = os.path.join(folder, uuid.uuid4().hex)
    with open(name + ".part", "w") as out:      # renamed once whole: the test never reads half a file
        json.dump(event, out)
    os.rename(name + ".part", name + ".json")
    return {"ok": True}
"""
FAILING = "def handler(event, context):\n    raise RuntimeError('subscriber fails')\n"
FUNCTIONS: dict[str, tuple[str, dict[str, Any]]] = {
    # subscribed with the API's Subscribe
    "by_api": (RECORDER, {}),
    # subscribed by its function.yaml
    "by_yaml": (RECORDER, {"events": [{"sns": {"topic": "orders", "filter_policy": {"kind": ["order"]}}}]}),
    # subscribed with a filter policy that the test's message does not match
    "filtered_out": (RECORDER, {}),
    "failing": (FAILING, {"async": {"max_retry_attempts": 0}, "events": [{"sns": {"topic": "failures"}}]}),
    # an async destination of kind sns, and the function subscribed to that topic
    "with_destination": (RECORDER, {"async": {"on_success": {"sns": "audit"}}}),
    "auditor": (RECORDER, {"events": [{"sns": {"topic": "audit"}}]}),
}


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("sns-out")
    folder.chmod(0o777)
    return folder


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, redis_base_url: str, out_dir: Path
           ) -> Iterator[tuple[Gateway, Role]]:
    """The module's gateway and worker over its own functions."""
    import yaml

    root = tmp_path_factory.mktemp("sns")
    functions = root / "functions"
    for name, (code, spec) in FUNCTIONS.items():
        folder = functions / name
        folder.mkdir(parents=True)
        (folder / "handler.py").write_text(code)
        (folder / "function.yaml").write_text(yaml.safe_dump({**spec, "environment": {"OUT": str(out_dir)}}))
    gateway = start_gateway(root, fresh_redis_url(redis_base_url), functions_dir=functions, config=UNJAILED)
    worker = start_worker(gateway)
    try:
        for name in FUNCTIONS:
            wait_until(lambda: gateway.request("GET", f"/functions/{name}").status_code == 200, timeout=60,
                       message=f"{name} to be deployed")
        yield gateway, worker
    finally:
        worker.stop()
        gateway.stop()


def sns(gateway: Gateway, *, anonymous: bool = False) -> Any:
    """boto3's SNS client of the gateway: signed with its generated admin key, or not signed at all."""
    options: dict[str, Any] = {"retries": {"mode": "standard", "total_max_attempts": 1}}
    if anonymous:
        options["signature_version"] = UNSIGNED
    return boto3.client("sns", endpoint_url=gateway.url, region_name=REGION, aws_access_key_id="local-admin",
                        aws_secret_access_key=gateway.admin_secret or "none", config=BotoConfig(**options))


@pytest.fixture(scope="module")
def admin_sns(served: tuple[Gateway, Role]) -> Any:
    return sns(served[0])


def events_of(out_dir: Path, function: str) -> list[dict[str, Any]]:
    folder = out_dir / function
    return [json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))] if folder.is_dir() else []


def refused(call: Any) -> tuple[str, int, str]:
    """(code, HTTP status, message) of a call that must fail."""
    with pytest.raises(ClientError) as caught:
        call()
    response = caught.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Message"]


def test_a_publish_fans_out_to_every_matching_subscriber_and_skips_the_others(
        served: tuple[Gateway, Role], admin_sns: Any, out_dir: Path) -> None:
    # given the topic of by_yaml's sns event, and two subscriptions made with the API, one filtered out
    topic = admin_sns.create_topic(Name="orders")["TopicArn"]
    assert topic == PREFIX + "orders"
    assert admin_sns.create_topic(Name="orders")["TopicArn"] == topic          # idempotent, as SNS
    by_api = admin_sns.subscribe(TopicArn=topic, Protocol="lambda", ReturnSubscriptionArn=True,
                                 Endpoint=f"arn:aws:lambda:{REGION}:000000000000:function:by_api")["SubscriptionArn"]
    admin_sns.subscribe(TopicArn=topic, Protocol="lambda", Endpoint="filtered_out",
                        Attributes={"FilterPolicy": json.dumps({"kind": ["refund"]})})
    listed = admin_sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"]
    assert sorted(item["Endpoint"].rsplit(":", 1)[-1] for item in listed) == ["by_api", "by_yaml", "filtered_out"]
    # when a message is published with attributes the filtered subscription does not match
    message_id = admin_sns.publish(TopicArn=topic, Message='{"order": 7}', Subject="New order",
                                   MessageAttributes={"kind": {"DataType": "String", "StringValue": "order"},
                                                      "count": {"DataType": "Number", "StringValue": "3"}}
                                   )["MessageId"]
    # then both matching subscribers get Lambda's aws:sns event, and the third nothing
    got = {name: wait_until(lambda: events_of(out_dir, name), timeout=30, message=f"{name}'s event")
           for name in ("by_api", "by_yaml")}
    for (event,) in got.values():
        SnsModel(**event)                                  # powertools' parser model accepts it
        record = event["Records"][0]
        assert record["EventSource"] == "aws:sns" and record["EventVersion"] == "1.0"
        assert record["EventSubscriptionArn"].startswith(topic + ":")
        body = record["Sns"]
        assert body["Type"] == "Notification" and body["MessageId"] == message_id and body["TopicArn"] == topic
        assert body["Subject"] == "New order" and body["Message"] == '{"order": 7}'
        assert body["MessageAttributes"] == {"kind": {"Type": "String", "Value": "order"},
                                             "count": {"Type": "Number", "Value": "3"}}
        assert body["SignatureVersion"] == "1" and body["Signature"] and body["Timestamp"].endswith("Z")
        assert body["SigningCertUrl"].startswith("http://") and "Action=Unsubscribe" in body["UnsubscribeUrl"]
    assert got["by_api"][0]["Records"][0]["EventSubscriptionArn"] == by_api
    assert events_of(out_dir, "filtered_out") == []


def test_a_failing_subscriber_ends_in_its_own_dlq_with_the_sns_event(
        served: tuple[Gateway, Role], admin_sns: Any) -> None:
    gateway = served[0]
    # given a subscriber that raises, with no retries; when a message is published to its topic
    admin_sns.publish(TopicArn=PREFIX + "failures", Message="boom")

    # then its DLQ holds Lambda's destination record with the SNS event as requestPayload
    def dead() -> list[dict[str, Any]]:
        return gateway.request("GET", "/functions/failing/dlq").json()["items"]

    (entry,) = wait_until(dead, timeout=30, message="the failing subscriber's dead letter")
    payload = entry["record"]["requestPayload"]
    SnsModel(**payload)
    assert payload["Records"][0]["Sns"]["Message"] == "boom"
    assert entry["record"]["requestContext"]["condition"] == "RetriesExhausted"


def test_bad_requests_get_sns_errors(served: tuple[Gateway, Role], admin_sns: Any) -> None:
    topic = admin_sns.create_topic(Name="checks")["TopicArn"]
    code, status, message = refused(lambda: admin_sns.subscribe(
        TopicArn=topic, Protocol="lambda", Endpoint="by_api", Attributes={"FilterPolicy": '{"kind": "order"}'}))
    assert (code, status) == ("InvalidParameter", 400) and "FilterPolicy" in message
    code, status, message = refused(lambda: admin_sns.subscribe(
        TopicArn=topic, Protocol="lambda", Endpoint="by_api", Attributes={"RawMessageDelivery": "true"}))
    assert (code, status) == ("InvalidParameter", 400) and "raw message delivery" in message
    code, status, message = refused(lambda: admin_sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint="q"))
    assert (code, status) == ("InvalidParameter", 400) and "lambda" in message
    assert refused(lambda: admin_sns.publish(TopicArn=PREFIX + "nosuchtopic", Message="x"))[:2] == ("NotFound", 404)
    code, status, message = refused(lambda: admin_sns.publish(TopicArn=topic, Message="x" * (256 * 1024 + 1)))
    assert (code, status) == ("InvalidParameter", 400) and "too long" in message
    code, _, message = refused(lambda: admin_sns.publish(TopicArn=topic, Message='{"x": "y"}',
                                                         MessageStructure="json"))
    assert code == "InvalidParameter" and "default" in message
    # a form that is no form, and an action not served: SNS's XML errors, never a 500
    headers = {"Authorization": f"Bearer {served[0].admin_secret}",
               "Content-Type": "application/x-www-form-urlencoded"}
    answer = httpx.post(served[0].url + "/", content=b"Action=Publish&Message=%FF", headers=headers)
    assert answer.status_code == 400 and b"<Code>InvalidParameter</Code>" in answer.content
    answer = httpx.post(served[0].url + "/", data={"Action": "CreatePlatformApplication"}, headers=headers)
    assert answer.status_code == 400 and b"<Code>InvalidAction</Code>" in answer.content
    assert b"CreatePlatformApplication" in answer.content
    answer = httpx.post(served[0].url + "/", content=b"Action=Publish&Message=" + b"x" * (900 * 1024), headers=headers)
    assert answer.status_code == 400 and b"larger than" in answer.content          # refused before it is read


def test_publish_batch_answers_per_entry(served: tuple[Gateway, Role], admin_sns: Any) -> None:
    topic = admin_sns.create_topic(Name="batches")["TopicArn"]
    answer = admin_sns.publish_batch(TopicArn=topic, PublishBatchRequestEntries=[
        {"Id": "good", "Message": "fine"},
        {"Id": "bad", "Message": "x", "MessageAttributes": {"n": {"DataType": "Number", "StringValue": "many"}}}])
    assert [item["Id"] for item in answer["Successful"]] == ["good"] and answer["Successful"][0]["MessageId"]
    (failed,) = answer["Failed"]
    assert failed["Id"] == "bad" and failed["Code"] == "InvalidParameter" and failed["SenderFault"] is True
    assert refused(lambda: admin_sns.publish_batch(TopicArn=topic, PublishBatchRequestEntries=[
        {"Id": "same", "Message": "a"}, {"Id": "same", "Message": "b"}]))[0] == "BatchEntryIdsNotDistinct"


def test_a_function_yaml_subscription_is_listed_and_cannot_be_unsubscribed(served: tuple[Gateway, Role],
                                                                            admin_sns: Any) -> None:
    assert PREFIX + "audit" in [item["TopicArn"] for item in admin_sns.list_topics()["Topics"]]
    (sub,) = admin_sns.list_subscriptions_by_topic(TopicArn=PREFIX + "audit")["Subscriptions"]
    assert sub["Endpoint"].endswith(":function:auditor") and sub["Protocol"] == "lambda"
    code, status, message = refused(lambda: admin_sns.unsubscribe(SubscriptionArn=sub["SubscriptionArn"]))
    assert (code, status) == ("InvalidParameter", 400) and "function.yaml" in message


def test_anonymous_callers_may_publish_but_not_manage_topics(served: tuple[Gateway, Role], admin_sns: Any) -> None:
    gateway = served[0]
    admin_sns.create_topic(Name="open")
    anonymous = sns(gateway, anonymous=True)
    assert anonymous.publish(TopicArn=PREFIX + "open", Message="hi")["MessageId"]
    code, status, _ = refused(lambda: anonymous.create_topic(Name="mine"))
    assert (code, status) == ("MissingAuthenticationToken", 403)
    answer = httpx.post(gateway.url + "/", data={"Action": "ListTopics"})
    assert answer.status_code == 403 and answer.content.startswith(b"<ErrorResponse")


def test_publish_needs_a_key_when_invoke_keys_are_required(tmp_path: Path, redis_base_url: str) -> None:
    gateway = start_gateway(tmp_path, fresh_redis_url(redis_base_url), functions_dir=tmp_path / "none",
                            config={"auth": {"require_invoke_key": True}})
    try:
        sns(gateway).create_topic(Name="guarded")
        code, status, _ = refused(lambda: sns(gateway, anonymous=True).publish(TopicArn=PREFIX + "guarded",
                                                                                Message="hi"))
        assert (code, status) == ("MissingAuthenticationToken", 403)
        assert sns(gateway).publish(TopicArn=PREFIX + "guarded", Message="hi")["MessageId"]
    finally:
        gateway.stop()


def test_the_aws_cli_publishes(served: tuple[Gateway, Role], admin_sns: Any) -> None:
    gateway = served[0]
    admin_sns.create_topic(Name="cli")
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "local-admin", "AWS_SECRET_ACCESS_KEY": gateway.admin_secret or "",
           "AWS_DEFAULT_REGION": REGION, "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}
    done = subprocess.run([sys.executable, "-m", "awscli", "sns", "publish", "--endpoint-url", gateway.url,
                           "--topic-arn", PREFIX + "cli", "--message", "from the CLI"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["MessageId"]


def test_an_sns_destination_receives_the_destination_record(served: tuple[Gateway, Role], out_dir: Path) -> None:
    gateway = served[0]
    # given a function whose on_success is the topic `audit`, which auditor's function.yaml subscribes to
    answer = gateway.invoke("with_destination", {"tag": "dest"}, headers={"X-Invocation-Type": "Event"})
    assert answer.status_code == 202
    # then auditor gets an aws:sns event whose Message is Lambda's destination record
    (event,) = wait_until(lambda: events_of(out_dir, "auditor"), timeout=30, message="the auditor's event")
    SnsModel(**event)
    record = json.loads(event["Records"][0]["Sns"]["Message"])
    assert record["requestContext"]["condition"] == "Success"
    assert record["requestPayload"] == {"tag": "dest"} and record["responsePayload"] == {"ok": True}


def test_the_lambda_api_reads_back_an_sns_destination(served: tuple[Gateway, Role]) -> None:
    from .test_lambda_api import client

    gateway = served[0]
    lam = client(gateway, "local-admin", gateway.admin_secret or "")
    arn = PREFIX + "audit"
    lam.put_function_event_invoke_config(FunctionName="by_api",
                                         DestinationConfig={"OnFailure": {"Destination": arn}})
    config = lam.get_function_event_invoke_config(FunctionName="by_api")
    assert config["DestinationConfig"]["OnFailure"] == {"Destination": arn}
