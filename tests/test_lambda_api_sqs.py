"""SQS event source mappings over the Lambda API, as boto3 sees them: an `sqs` event of the function's $LATEST,
created, read, listed, changed and deleted with the `lambda` client, refused where Lambda refuses it for a queue,
and one mapping made through the API polled end to end by a real `lambent streams` on the real ElasticMQ."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from . import sqs_client
from .helpers import UNJAILED, Gateway, fresh_redis_url, start_gateway, start_role, stop_process, wait_until
from .test_lambda_api import ACCOUNT, ARN, PLAIN_YAML, REGION, _folder, client, refused

# Writes each record's body, one a line, to OUT/got.log.
CONSUMER = textwrap.dedent('''
    import os

    def handler(event, context):
        with open(os.path.join(os.environ["OUT"], "got.log"), "a") as f:
            for record in event["Records"]:
                f.write(record["body"] + "\\n")
        return {"batchItemFailures": []}
''')
ORDER_FILTER = {"body": {"kind": ["order"]}}


def queue_arn(name: str) -> str:
    return f"arn:aws:sqs:{REGION}:{ACCOUNT}:{name}"


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lambda-api-sqs-out")


@pytest.fixture(scope="module")
def declared_queue(sqs_endpoint: str) -> str:
    """The queue URL the function `declared` names in its function.yaml (it need not exist for these reads)."""
    return f"{sqs_endpoint}/{ACCOUNT}/{sqs_client.unique_name('declared')}"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, redis_base_url: str, sqs_endpoint: str, out: Path,
            declared_queue: str) -> Iterator[Gateway]:
    """Functions `orders`, `plain` (alias live -> 1) and `pair` without events, `declared` (an `sqs` event in its
    function.yaml), `consume` (writes what it receives to `out`); the test ElasticMQ; the generated admin key."""
    workdir = tmp_path_factory.mktemp("lambda-api-sqs")
    functions = workdir / "functions"
    declared = PLAIN_YAML + yaml.safe_dump({"events": [{"sqs": {
        "queue": declared_queue, "batch_size": 5, "report_batch_item_failures": True, "maximum_concurrency": 3,
        "filter_criteria": [ORDER_FILTER]}}]})
    for name, spec in (("orders", PLAIN_YAML), ("plain", PLAIN_YAML), ("pair", PLAIN_YAML),
                       ("declared", declared)):
        _folder(functions, name, spec)
    consume = functions / "consume"
    consume.mkdir()
    (consume / "handler.py").write_text(CONSUMER)
    (consume / "function.yaml").write_text(yaml.safe_dump({"timeout": 30, "environment": {"OUT": str(out)}}))
    config = {**UNJAILED, "sqs": {"endpoint_url": sqs_endpoint, **sqs_client.credentials(), "wait_time_s": 1,
                                  "retry_backoff_s": 0.2, "max_retry_backoff_s": 1.0},
              "streams": {"retry_backoff_s": 0.1, "max_retry_backoff_s": 0.5, "state_interval_s": 0.5}}
    gw = start_gateway(workdir / "node", fresh_redis_url(redis_base_url), functions_dir=functions, config=config)
    try:
        assert gw.request("PUT", "/functions/plain/aliases/live", json={"version": 1}).status_code == 200
        yield gw
    finally:
        gw.stop()


def shown(answer: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in answer.items() if key != "ResponseMetadata"}


def events_of(gateway: Gateway, name: str) -> list[dict[str, Any]]:
    answer = gateway.request("GET", f"/functions/{name}")
    assert answer.status_code == 200, answer.text
    return answer.json()["configuration"].get("events", [])


# ---------------------------------------------------------------- create, read, change, delete


def test_a_queue_mapping_is_created_read_updated_and_deleted(admin: Any, gateway: Gateway) -> None:
    # given a queue of the server's queue server
    name = sqs_client.unique_name("orders")
    # when a mapping of it is created as on AWS
    created = admin.create_event_source_mapping(
        FunctionName="orders", EventSourceArn=queue_arn(name), BatchSize=5, MaximumBatchingWindowInSeconds=2,
        FunctionResponseTypes=["ReportBatchItemFailures"], ScalingConfig={"MaximumConcurrency": 4},
        FilterCriteria={"Filters": [{"Pattern": json.dumps(ORDER_FILTER)}]})
    # then it answers Lambda's SQS shape, and is an `sqs` event of the function's $LATEST
    uuid = created["UUID"]
    assert created["ResponseMetadata"]["HTTPStatusCode"] == 202
    assert (created["State"], created["EventSourceArn"], created["FunctionArn"]) == (
        "Creating", queue_arn(name), ARN + "orders")
    assert (created["BatchSize"], created["MaximumBatchingWindowInSeconds"], created["ScalingConfig"]) == (
        5, 2, {"MaximumConcurrency": 4})
    assert created["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert [json.loads(item["Pattern"]) for item in created["FilterCriteria"]["Filters"]] == [ORDER_FILTER]
    assert created["EventSourceMappingArn"] == f"arn:aws:lambda:{REGION}:{ACCOUNT}:event-source-mapping:{uuid}"
    assert created["LastProcessingResult"] == "No records processed"
    for stream_only in ("StartingPosition", "Topics", "DestinationConfig", "MaximumRetryAttempts",
                        "SelfManagedEventSource", "BisectBatchOnFunctionError"):
        assert stream_only not in created
    assert [event["sqs"]["queue"] for event in events_of(gateway, "orders")] == [name]

    got = admin.get_event_source_mapping(UUID=uuid)
    assert (got["State"], got["StateTransitionReason"]) == ("Enabled", "USER_INITIATED")
    assert shown(got) == {**shown(created), "State": "Enabled", "LastModified": got["LastModified"]}
    listed = admin.list_event_source_mappings(FunctionName="orders")["EventSourceMappings"]
    assert listed == [shown(got)]

    # when it is changed: batching, responses, concurrency, and the filters cleared
    updated = admin.update_event_source_mapping(
        UUID=uuid, BatchSize=100, MaximumBatchingWindowInSeconds=5, FunctionResponseTypes=[],
        ScalingConfig={"MaximumConcurrency": 10}, FilterCriteria={"Filters": []})
    assert updated["ResponseMetadata"]["HTTPStatusCode"] == 202 and updated["State"] == "Updating"
    assert (updated["UUID"], updated["BatchSize"], updated["MaximumBatchingWindowInSeconds"]) == (uuid, 100, 5)
    assert updated["FunctionResponseTypes"] == [] and updated["ScalingConfig"] == {"MaximumConcurrency": 10}
    assert "FilterCriteria" not in updated
    # an empty ScalingConfig takes the setting away (Lambent's default: 2), and what is not given stays
    again = admin.update_event_source_mapping(UUID=uuid, ScalingConfig={})
    assert (again["ScalingConfig"], again["BatchSize"]) == ({"MaximumConcurrency": 2}, 100)

    # when it is deleted, the event goes and the UUID is unknown
    deleted = admin.delete_event_source_mapping(UUID=uuid)
    assert deleted["ResponseMetadata"]["HTTPStatusCode"] == 202 and deleted["State"] == "Deleting"
    assert events_of(gateway, "orders") == []
    assert refused(lambda: admin.get_event_source_mapping(UUID=uuid))[:2] == ("ResourceNotFoundException", 404)


def test_a_mapping_may_invoke_an_alias_and_move_to_another_qualifier(admin: Any) -> None:
    name = sqs_client.unique_name("aliased")
    created = admin.create_event_source_mapping(FunctionName="plain:live", EventSourceArn=queue_arn(name))
    assert created["FunctionArn"] == ARN + "plain:live"
    assert (created["BatchSize"], created["MaximumBatchingWindowInSeconds"]) == (10, 0)    # Lambda's defaults
    try:
        assert admin.list_event_source_mappings(FunctionName="plain:live")["EventSourceMappings"][0]["UUID"] == \
            created["UUID"]
        assert admin.list_event_source_mappings(FunctionName="plain:1")["EventSourceMappings"] == []
        moved = admin.update_event_source_mapping(UUID=created["UUID"], FunctionName="plain")
        assert moved["FunctionArn"] == ARN + "plain" and moved["UUID"] == created["UUID"]
        code, status, message = refused(lambda: admin.update_event_source_mapping(UUID=created["UUID"],
                                                                                   FunctionName="orders"))
        assert (code, status) == ("InvalidParameterValueException", 400) and "cannot move to orders" in message
    finally:
        admin.delete_event_source_mapping(UUID=created["UUID"])


def test_a_second_mapping_of_the_same_function_and_queue_is_a_conflict(admin: Any) -> None:
    name = sqs_client.unique_name("twice")
    first = admin.create_event_source_mapping(FunctionName="pair", EventSourceArn=queue_arn(name))
    try:
        code, status, message = refused(lambda: admin.create_event_source_mapping(
            FunctionName="pair", EventSourceArn=queue_arn(name), BatchSize=2))
        assert (code, status) == ("ResourceConflictException", 409)
        assert message == (f'An event source mapping with SQS arn (" {queue_arn(name)} ") and function (" pair ") '
                           f"already exists. Please update or delete the existing mapping with UUID {first['UUID']}")
        # another queue is another mapping
        other = admin.create_event_source_mapping(FunctionName="pair", EventSourceArn=queue_arn(name + "-b"))
        assert other["UUID"] != first["UUID"]
        admin.delete_event_source_mapping(UUID=other["UUID"])
        assert admin.get_event_source_mapping(UUID=first["UUID"])["EventSourceArn"] == queue_arn(name)
    finally:
        admin.delete_event_source_mapping(UUID=first["UUID"])


# ---------------------------------------------------------------- what Lambda refuses for a queue


@pytest.mark.parametrize(("extra", "code", "says"), [
    ({"StartingPosition": "LATEST"}, "InvalidParameterValueException", "StartingPosition is not valid for SQS"),
    ({"DestinationConfig": {"OnFailure": {"Destination": ARN + "plain"}}}, "InvalidParameterValueException",
     "Unsupported DestinationConfig parameter"),
    ({"MaximumRetryAttempts": 3}, "InvalidParameterValueException", "Unsupported MaximumRetryAttempts parameter"),
    ({"Topics": ["t"]}, "InvalidParameterValueException", "Unsupported Topics parameter"),
    ({"FilterCriteria": {"Filters": [{"Pattern": '{"body": {"kind": "order"}}'}]}},
     "InvalidParameterValueException", "Invalid filter pattern definition"),
    ({"FilterCriteria": {"Filters": [{"Pattern": "{not json"}]}}, "InvalidParameterValueException",
     "failed to parse JSON"),
    ({"BatchSize": 100}, "InvalidParameterValueException",
     "Maximum batch window in seconds must be greater than 0 if maximum batch size is greater than 10"),
    ({"BatchSize": 10001}, "ValidationException", "Member must have value less than or equal to 10000"),
    ({"ScalingConfig": {"MaximumConcurrency": 1}}, "ValidationException",
     "at 'scalingConfig.maximumConcurrency' failed to satisfy constraint: Member must have value greater than or "
     "equal to 2"),
    ({"Enabled": False}, "InvalidParameterValueException", "delete it, and create it again"),
    ({"FunctionResponseTypes": ["Everything"]}, "ValidationException", "enum value set"),
])
def test_what_lambda_refuses_for_a_queue_is_refused(unchecked: Any, gateway: Gateway, extra: dict[str, Any],
                                                    code: str, says: str) -> None:
    refusal = refused(lambda: unchecked.create_event_source_mapping(
        FunctionName="orders", EventSourceArn=queue_arn(sqs_client.unique_name("refused")), **extra))
    assert refusal[:2] == (code, 400) and says in refusal[2], refusal
    assert events_of(gateway, "orders") == []


def test_a_queue_of_another_account_or_region_is_refused_naming_the_polled_server(
        unchecked: Any, sqs_endpoint: str) -> None:
    for arn in ("arn:aws:sqs:eu-west-1:000000000000:elsewhere", "arn:aws:sqs:us-east-1:123456789012:elsewhere"):
        code, status, message = refused(lambda: unchecked.create_event_source_mapping(FunctionName="orders",
                                                                                      EventSourceArn=arn))
        assert (code, status) == ("InvalidParameterValueException", 400)
        assert sqs_endpoint in message and "sqs.endpoint_url" in message and arn in message
    code, _, message = refused(lambda: unchecked.create_event_source_mapping(
        FunctionName="orders", EventSourceArn=queue_arn("no spaces")))
    assert code == "InvalidParameterValueException" and "'no spaces' is not a queue name" in message, message


def test_an_update_is_refused_what_a_create_is_refused(admin: Any, unchecked: Any) -> None:
    created = admin.create_event_source_mapping(FunctionName="orders",
                                                EventSourceArn=queue_arn(sqs_client.unique_name("upd")))
    try:
        uuid = created["UUID"]
        assert refused(lambda: unchecked.update_event_source_mapping(UUID=uuid, BatchSize=50))[2] == (
            "Maximum batch window in seconds must be greater than 0 if maximum batch size is greater than 10")
        assert "Unsupported BisectBatchOnFunctionError" in refused(lambda: unchecked.update_event_source_mapping(
            UUID=uuid, BisectBatchOnFunctionError=True))[2]
        assert refused(lambda: unchecked.update_event_source_mapping(
            UUID=uuid, FilterCriteria={"Filters": [{"Pattern": "[1]"}]}))[0] == "InvalidParameterValueException"
        assert admin.get_event_source_mapping(UUID=uuid)["BatchSize"] == 10      # nothing changed
    finally:
        admin.delete_event_source_mapping(UUID=created["UUID"])


# ---------------------------------------------------------------- lists, function.yaml's mappings


def test_a_mapping_written_in_function_yaml_is_listed_with_the_same_shape(admin: Any, declared_queue: str) -> None:
    name = declared_queue.rsplit("/", 1)[1]
    listed = admin.list_event_source_mappings(FunctionName="declared")["EventSourceMappings"]
    assert len(listed) == 1
    mapping = listed[0]
    assert (mapping["EventSourceArn"], mapping["FunctionArn"], mapping["BatchSize"]) == (
        queue_arn(name), ARN + "declared", 5)
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert mapping["ScalingConfig"] == {"MaximumConcurrency": 3}
    assert [json.loads(item["Pattern"]) for item in mapping["FilterCriteria"]["Filters"]] == [ORDER_FILTER]
    assert (mapping["State"], mapping["LastProcessingResult"]) == ("Enabled", "No records processed")
    assert shown(admin.get_event_source_mapping(UUID=mapping["UUID"])) == mapping
    # the same keys as a mapping made through the API
    made = admin.create_event_source_mapping(
        FunctionName="orders", EventSourceArn=queue_arn(sqs_client.unique_name("same")),
        FilterCriteria={"Filters": [{"Pattern": json.dumps(ORDER_FILTER)}]})
    try:
        assert set(shown(admin.get_event_source_mapping(UUID=made["UUID"]))) == set(mapping)
    finally:
        admin.delete_event_source_mapping(UUID=made["UUID"])


def test_the_event_source_arn_filter_finds_the_mappings_of_a_queue(admin: Any, declared_queue: str) -> None:
    name = sqs_client.unique_name("shared")
    first = admin.create_event_source_mapping(FunctionName="orders", EventSourceArn=queue_arn(name))
    second = admin.create_event_source_mapping(FunctionName="pair", EventSourceArn=queue_arn(name))
    try:
        found = admin.list_event_source_mappings(EventSourceArn=queue_arn(name))["EventSourceMappings"]
        assert sorted(item["UUID"] for item in found) == sorted([first["UUID"], second["UUID"]])
        assert admin.list_event_source_mappings(EventSourceArn=queue_arn(name), FunctionName="pair")[
            "EventSourceMappings"] == [shown(admin.get_event_source_mapping(UUID=second["UUID"]))]
        declared = admin.list_event_source_mappings(EventSourceArn=queue_arn(declared_queue.rsplit("/", 1)[1]))
        assert [item["FunctionArn"] for item in declared["EventSourceMappings"]] == [ARN + "declared"]
        assert admin.list_event_source_mappings(EventSourceArn=queue_arn("nobody-maps-it"))[
            "EventSourceMappings"] == []
        # and every mapping when no filter is given, a page at a time
        every = admin.list_event_source_mappings()["EventSourceMappings"]
        assert {first["UUID"], second["UUID"]} <= {item["UUID"] for item in every}
        page = admin.list_event_source_mappings(MaxItems=1)
        assert len(page["EventSourceMappings"]) == 1 and page["NextMarker"]
    finally:
        admin.delete_event_source_mapping(UUID=first["UUID"])
        admin.delete_event_source_mapping(UUID=second["UUID"])


def test_without_a_queue_server_a_mapping_reads_disabled_and_says_why(tmp_path: Path, redis_url: str,
                                                                      declared_queue: str) -> None:
    functions = tmp_path / "functions"
    _folder(functions, "declared", PLAIN_YAML + yaml.safe_dump({"events": [{"sqs": {"queue": declared_queue}}]}))
    gw = start_gateway(tmp_path / "node", redis_url, functions_dir=functions)
    try:
        assert gw.admin_secret
        lam = client(gw, "local-admin", gw.admin_secret)
        (mapping,) = lam.list_event_source_mappings()["EventSourceMappings"]
        assert mapping["State"] == "Disabled" and "sqs.endpoint_url" in mapping["StateTransitionReason"]
    finally:
        gw.stop()


# ---------------------------------------------------------------- end to end


def test_a_mapping_made_with_boto3_is_polled_by_the_streams_role(admin: Any, gateway: Gateway, sqs_endpoint: str,
                                                                 out: Path, tmp_path: Path) -> None:
    # given a real queue and a mapping of it made through the Lambda API
    sqs = sqs_client.sqs(sqs_endpoint)
    name = sqs_client.unique_name("e2e")
    url, _ = sqs_client.make_queue(sqs, name)
    mapping = admin.create_event_source_mapping(FunctionName="consume", EventSourceArn=sqs_client.queue_arn(sqs, url),
                                                BatchSize=1)
    log_path = tmp_path / "streams.log"
    streams = start_role("streams", log_path, config=gateway.config_path).process
    try:
        # when a message is sent
        sqs.send_message(QueueUrl=url, MessageBody="hello from boto3")

        # then the function ran, the message was deleted, and the mapping's last result is OK
        def deleted() -> bool:
            answer = gateway.request("GET", "/functions/consume/streams", timeout=5)
            assert streams.poll() is None, log_path.read_text(errors="replace")
            queues = answer.json()["queues"]
            return bool(queues) and queues[0]["deleted"] == 1

        wait_until(deleted, timeout=60, interval=0.2, message="the message to be handled and deleted")
        assert (out / "got.log").read_text().splitlines() == ["hello from boto3"]
        assert sqs_client.queue_depth(sqs, url) == 0
        got = admin.get_event_source_mapping(UUID=mapping["UUID"])
        assert (got["LastProcessingResult"], got["State"]) == ("OK", "Enabled")
    finally:
        stop_process(streams, timeout_s=30)
        admin.delete_event_source_mapping(UUID=mapping["UUID"])
