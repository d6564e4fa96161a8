"""The Lambda control plane's writes of what feeds a function, as boto3 sees them: function URL configs (an `http`
event) and self-managed Kafka event source mappings (a `kafka` event), with one mapping made through the API that
consumes real Kafka and stops when deleted."""

from __future__ import annotations

import textwrap
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from . import kafka_client
from .helpers import UNJAILED, Gateway, fresh_redis_url, start_gateway, start_role, stop_process, wait_until
from .test_lambda_api import ARN, PLAIN_YAML, _folder, refused

# Writes each record's value, one a line, to OUT/<topic>.log.
CONSUMER = textwrap.dedent('''
    import base64, os

    def handler(event, context):
        for batch in event["records"].values():
            for record in batch:
                with open(os.path.join(os.environ["OUT"], record["topic"] + ".log"), "a") as f:
                    f.write(base64.b64decode(record["value"]).decode() + "\\n")
        return {}
''')
SHOP_YAML = PLAIN_YAML + "events:\n  - http: {}\n  - kafka: {topic: carts}\n"
PAIR_YAML = PLAIN_YAML + "events:\n  - kafka: {topic: first}\n  - kafka: {topic: second}\n"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, redis_base_url: str) -> Iterator[Gateway]:
    """Functions `web` and `plain` (no events), `shop` and `store` (a URL, then a kafka event), `pair` (two kafka
    events), `consume` (writes what it receives to a folder); the test Kafka; the generated admin key."""
    workdir = tmp_path_factory.mktemp("lambda-api-sources")
    functions = workdir / "functions"
    for name, spec in (("web", PLAIN_YAML), ("plain", PLAIN_YAML), ("shop", SHOP_YAML), ("store", SHOP_YAML),
                       ("pair", PAIR_YAML), ("browser", PLAIN_YAML)):
        _folder(functions, name, spec)
    out = workdir / "out"
    out.mkdir()
    consume = functions / "consume"
    consume.mkdir()
    (consume / "handler.py").write_text(CONSUMER)
    (consume / "function.yaml").write_text(yaml.safe_dump({"timeout": 30, "environment": {"OUT": str(out)}}))
    config = {**kafka_client.config(), **UNJAILED,
              "streams": {"retry_backoff_s": 0.2, "max_retry_backoff_s": 1.0, "state_interval_s": 0.5}}
    gw = start_gateway(workdir / "node", fresh_redis_url(redis_base_url), functions_dir=functions, config=config)
    try:
        assert gw.request("PUT", "/functions/plain/aliases/live", json={"version": 1}).status_code == 200
        yield gw
    finally:
        gw.stop()




def public_get(gateway: Gateway, name: str, **headers: str) -> Any:
    """A request to the function URL's own host (this machine's resolver may not know *.localhost)."""
    port = gateway.url.rsplit(":", 1)[1]
    with gateway.client(anonymous=True, headers={"Host": f"{name}.lambda-url.localhost:{port}", **headers}) as web:
        return web.get("/")


def kafka_source(**extra: Any) -> dict[str, Any]:
    return {"SelfManagedEventSource": {"Endpoints": {"KAFKA_BOOTSTRAP_SERVERS": [kafka_client.bootstrap()]}},
            "StartingPosition": "TRIM_HORIZON", **extra}


def shown(answer: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in answer.items() if key != "ResponseMetadata"}


# ---------------------------------------------------------------- function URLs


def test_a_function_url_is_created_updated_and_deleted(admin: Any, gateway: Gateway) -> None:
    port = gateway.url.rsplit(":", 1)[1]
    assert public_get(gateway, "web").status_code == 404
    cors = {"AllowOrigins": ["https://app.example"], "AllowMethods": ["GET"], "AllowHeaders": ["x-token"],
            "ExposeHeaders": [], "AllowCredentials": True, "MaxAge": 60}
    created = admin.create_function_url_config(FunctionName="web", AuthType="NONE", Cors=cors)
    assert created["ResponseMetadata"]["HTTPStatusCode"] == 201
    assert (created["FunctionUrl"], created["FunctionArn"], created["AuthType"], created["InvokeMode"]) == (
        f"http://web.lambda-url.localhost:{port}/", ARN + "web", "NONE", "BUFFERED")
    assert created["Cors"] == cors and "LastModifiedTime" not in created
    assert public_get(gateway, "web").json() == {"version": "$LATEST"}
    got = admin.get_function_url_config(FunctionName="web")
    assert got["Cors"] == cors and got["CreationTime"] == created["CreationTime"]
    assert admin.list_function_url_configs(FunctionName="web")["FunctionUrlConfigs"] == [shown(got)]

    updated = admin.update_function_url_config(FunctionName="web", Cors={"AllowOrigins": ["*"]})
    assert updated["ResponseMetadata"]["HTTPStatusCode"] == 200 and updated["LastModifiedTime"]
    assert updated["Cors"]["AllowOrigins"] == ["*"] and updated["Cors"]["AllowCredentials"] is False
    assert "Cors" not in admin.update_function_url_config(FunctionName="web", Cors={})    # {} takes it away
    assert "Cors" in admin.update_function_url_config(FunctionName="web", Cors={"MaxAge": 5})
    assert admin.update_function_url_config(FunctionName="web")["Cors"]["MaxAge"] == 5    # no Cors: kept

    deleted = admin.delete_function_url_config(FunctionName="web")
    assert deleted["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert refused(lambda: admin.get_function_url_config(FunctionName="web"))[:2] == ("ResourceNotFoundException",
                                                                                      404)
    assert public_get(gateway, "web").status_code == 404


def test_a_url_with_cors_answers_preflights_and_adds_the_headers(admin: Any, gateway: Gateway) -> None:
    # given a function URL that allows one origin, as a browser app's API would
    admin.create_function_url_config(FunctionName="browser", AuthType="NONE", Cors={
        "AllowOrigins": ["https://app.example"], "AllowMethods": ["GET", "POST"], "AllowHeaders": ["x-token"],
        "ExposeHeaders": ["x-request-id"], "MaxAge": 300})
    port = gateway.url.rsplit(":", 1)[1]
    host = {"Host": f"browser.lambda-url.localhost:{port}"}
    with gateway.client(anonymous=True, headers=host) as web:
        # when the browser sends its preflight, the URL answers it (the function is not invoked)
        preflight = web.options("/", headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"})
        # and a request from that origin, and one from another
        allowed = web.get("/", headers={"Origin": "https://app.example"})
        other = web.get("/", headers={"Origin": "https://evil.example"})
    assert preflight.status_code == 200 and preflight.content == b""
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    assert preflight.headers["access-control-allow-methods"] == "GET, POST"
    assert preflight.headers["access-control-allow-headers"] == "x-token"
    assert preflight.headers["access-control-max-age"] == "300"
    assert allowed.json() == {"version": "$LATEST"}
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert allowed.headers["access-control-expose-headers"] == "x-request-id"
    assert other.status_code == 200 and "access-control-allow-origin" not in other.headers


def test_a_second_function_url_is_a_conflict(admin: Any) -> None:
    code, status, message = refused(lambda: admin.create_function_url_config(FunctionName="shop", AuthType="NONE"))
    assert (code, status) == ("ResourceConflictException", 409) and "exists" in message


@pytest.mark.parametrize("operation, params", [
    ("create_function_url_config", {"FunctionName": "nosuch", "AuthType": "NONE"}),
    ("update_function_url_config", {"FunctionName": "plain", "AuthType": "NONE"}),
    ("update_function_url_config", {"FunctionName": "nosuch"}),
    ("delete_function_url_config", {"FunctionName": "plain"}),
    ("delete_function_url_config", {"FunctionName": "nosuch"}),
])
def test_a_url_write_of_what_does_not_exist_is_not_found(admin: Any, operation: str, params: dict[str, Any]) -> None:
    code, status, message = refused(lambda: getattr(admin, operation)(**params))
    assert (code, status) == ("ResourceNotFoundException", 404), message


@pytest.mark.parametrize("params, wanted, said", [
    ({"AuthType": "AWS_IAM"}, "InvalidParameterValueException", "auth.require_invoke_key: true"),
    ({"AuthType": "NONE", "InvokeMode": "RESPONSE_STREAM"}, "InvalidParameterValueException", "BUFFERED"),
    ({"AuthType": "NONE", "Qualifier": "live"}, "InvalidParameterValueException", "serves $LATEST"),
    ({"AuthType": "NONE", "Qualifier": "1"}, "ValidationException", "qualifier"),
    ({"AuthType": "SOMETIMES"}, "ValidationException", "authType"),
    ({}, "ValidationException", "authType"),
    ({"AuthType": "NONE", "Cors": {"MaxAge": 86401}}, "InvalidParameterValueException", "max_age"),
])
def test_a_url_parameter_lambent_cannot_honour_is_refused(unchecked: Any, params: dict[str, Any], wanted: str,
                                                          said: str) -> None:
    code, status, message = refused(lambda: unchecked.create_function_url_config(FunctionName="plain", **params))
    assert (code, status) == (wanted, 400) and said in message, message
    assert refused(lambda: unchecked.get_function_url_config(FunctionName="plain"))[0] == "ResourceNotFoundException"


def test_deleting_a_function_url_keeps_the_mapping_after_it(admin: Any, gateway: Gateway) -> None:
    [before] = admin.list_event_source_mappings(FunctionName="store")["EventSourceMappings"]
    admin.delete_function_url_config(FunctionName="store")        # the kafka event moves from 1 to 0
    [after] = admin.list_event_source_mappings(FunctionName="store")["EventSourceMappings"]
    assert (after["UUID"], after["SelfManagedKafkaEventSourceConfig"]) == (
        before["UUID"], {"ConsumerGroupId": "lambent-store-1-carts"})
    assert gateway.request("GET", "/functions/store/streams").json()["mappings"][0]["consumerGroup"] == (
        "lambent-store-1-carts")


# ---------------------------------------------------------------- event source mappings


def test_a_mapping_is_created_updated_and_deleted(admin: Any) -> None:
    created = admin.create_event_source_mapping(
        FunctionName="plain", Topics=["orders"], **kafka_source(StartingPosition="LATEST"), BatchSize=10,
        MaximumBatchingWindowInSeconds=2, MaximumRetryAttempts=3, MaximumRecordAgeInSeconds=600,
        BisectBatchOnFunctionError=True, FunctionResponseTypes=["ReportBatchItemFailures"],
        DestinationConfig={"OnFailure": {"Destination": "kafka://orders-dlq"}})
    mapping = created["UUID"]
    assert created["ResponseMetadata"]["HTTPStatusCode"] == 202 and created["State"] == "Creating"
    assert (created["FunctionArn"], created["Topics"], created["StartingPosition"]) == (ARN + "plain", ["orders"],
                                                                                         "LATEST")
    assert (created["BatchSize"], created["MaximumBatchingWindowInSeconds"], created["MaximumRetryAttempts"],
            created["MaximumRecordAgeInSeconds"]) == (10, 2, 3, 600)
    assert created["BisectBatchOnFunctionError"] is True
    assert created["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert created["DestinationConfig"] == {"OnFailure": {"Destination": "kafka://orders-dlq"}}
    assert created["SelfManagedKafkaEventSourceConfig"] == {"ConsumerGroupId": "lambent-plain-0-orders"}
    got = admin.get_event_source_mapping(UUID=mapping)
    assert shown(got) == {**shown(created), "State": "Enabled"}
    assert [m["UUID"] for m in admin.list_event_source_mappings(FunctionName="plain")["EventSourceMappings"]] == [
        mapping]

    updated = admin.update_event_source_mapping(
        UUID=mapping, FunctionName="plain:live", BatchSize=50, FunctionResponseTypes=[],
        DestinationConfig={"OnFailure": {"Destination": ARN + "web"}})
    assert updated["ResponseMetadata"]["HTTPStatusCode"] == 202 and updated["State"] == "Updating"
    assert (updated["UUID"], updated["BatchSize"], updated["FunctionResponseTypes"]) == (mapping, 50, [])
    assert updated["FunctionArn"] == ARN + "plain:live" and updated["MaximumRetryAttempts"] == 3
    assert updated["DestinationConfig"] == {"OnFailure": {"Destination": ARN + "web"}}
    cleared = admin.update_event_source_mapping(UUID=mapping, DestinationConfig={"OnFailure": {"Destination": ""}})
    assert cleared["DestinationConfig"] == {"OnFailure": {}}

    deleted = admin.delete_event_source_mapping(UUID=mapping)
    assert deleted["ResponseMetadata"]["HTTPStatusCode"] == 202
    assert (deleted["UUID"], deleted["State"]) == (mapping, "Deleting")
    assert refused(lambda: admin.get_event_source_mapping(UUID=mapping))[:2] == ("ResourceNotFoundException", 404)
    assert admin.list_event_source_mappings(FunctionName="plain")["EventSourceMappings"] == []


def test_deleting_the_first_of_two_mappings_keeps_the_second(admin: Any, gateway: Gateway) -> None:
    first, second = sorted(admin.list_event_source_mappings(FunctionName="pair")["EventSourceMappings"],
                           key=lambda m: m["Topics"][0])
    assert second["SelfManagedKafkaEventSourceConfig"] == {"ConsumerGroupId": "lambent-pair-1-second"}
    admin.delete_event_source_mapping(UUID=first["UUID"])
    [kept] = admin.list_event_source_mappings(FunctionName="pair")["EventSourceMappings"]
    assert shown(kept) == {**second, "LastModified": kept["LastModified"]}
    assert gateway.request("GET", "/functions/pair/streams").json()["mappings"][0]["consumerGroup"] == (
        "lambent-pair-1-second")
    # a new mapping does not take a group in use, though the derived name of its place is that one
    again = admin.create_event_source_mapping(FunctionName="pair:1", Topics=["second"], **kafka_source())
    assert again["SelfManagedKafkaEventSourceConfig"]["ConsumerGroupId"] == "lambent-pair-2-second"
    admin.delete_event_source_mapping(UUID=again["UUID"])


def test_a_mapping_that_exists_already_is_a_conflict(admin: Any) -> None:
    existing = admin.list_event_source_mappings(FunctionName="shop")["EventSourceMappings"][0]
    code, status, message = refused(lambda: admin.create_event_source_mapping(
        FunctionName="shop", Topics=["carts"], **kafka_source()))
    assert (code, status) == ("ResourceConflictException", 409) and existing["UUID"] in message
    group = existing["SelfManagedKafkaEventSourceConfig"]["ConsumerGroupId"]
    code, status, message = refused(lambda: admin.create_event_source_mapping(
        FunctionName="plain", Topics=["other"], **kafka_source(SelfManagedKafkaEventSourceConfig={
            "ConsumerGroupId": group})))
    assert (code, status) == ("ResourceConflictException", 409) and group in message


@pytest.mark.parametrize("operation, params", [
    ("get_event_source_mapping", {"UUID": str(uuid.UUID(int=1))}),
    ("update_event_source_mapping", {"UUID": str(uuid.UUID(int=1)), "BatchSize": 5}),
    ("delete_event_source_mapping", {"UUID": str(uuid.UUID(int=1))}),
    ("create_event_source_mapping", {"FunctionName": "nosuch", "Topics": ["t"], **kafka_source()}),
    ("create_event_source_mapping", {"FunctionName": "plain:nosuchalias", "Topics": ["t"], **kafka_source()}),
])
def test_a_mapping_write_of_what_does_not_exist_is_not_found(admin: Any, operation: str,
                                                             params: dict[str, Any]) -> None:
    code, status, message = refused(lambda: getattr(admin, operation)(**params))
    assert (code, status) == ("ResourceNotFoundException", 404), message


MSK = "arn:aws:kafka:us-east-1:000000000000:cluster/demo/abc"
BAD_CREATE: list[tuple[dict[str, Any], str, str]] = [
    ({"EventSourceArn": MSK, "Topics": ["t"], "StartingPosition": "LATEST"}, "InvalidParameterValueException",
     "Amazon MSK"),
    ({**kafka_source(), "SelfManagedEventSource": {"Endpoints": {"KAFKA_BOOTSTRAP_SERVERS": ["elsewhere:9092"]}}},
     "InvalidParameterValueException", "its own Kafka"),
    (kafka_source(StartingPosition="AT_TIMESTAMP"), "InvalidParameterValueException", "AT_TIMESTAMP"),
    (kafka_source(StartingPosition=None), "InvalidParameterValueException", "StartingPosition is required"),
    (kafka_source(Enabled=False), "InvalidParameterValueException", "always enabled"),
    (kafka_source(Topics=["a", "b"]), "ValidationException", "topics"),
    (kafka_source(BatchSize=0), "ValidationException", "batchSize"),
    (kafka_source(MaximumBatchingWindowInSeconds=301), "ValidationException", "maximumBatchingWindowInSeconds"),
    (kafka_source(FunctionResponseTypes=["Everything"]), "ValidationException", "functionResponseTypes"),
    (kafka_source(DestinationConfig={"OnFailure": {"Destination": "arn:aws:sqs:us-east-1:000000000000:q"}}),
     "InvalidParameterValueException", "kafka://topic"),
    (kafka_source(FilterCriteria={"Filters": [{"Pattern": "{}"}]}), "InvalidParameterValueException",
     "FilterCriteria"),
    (kafka_source(Topics=["no spaces"]), "InvalidParameterValueException", "topic"),
]


@pytest.mark.parametrize("params, wanted, said", BAD_CREATE, ids=[said for *_, said in BAD_CREATE])
def test_a_mapping_parameter_lambent_cannot_honour_is_refused(unchecked: Any, params: dict[str, Any], wanted: str,
                                                              said: str) -> None:
    params = {"Topics": ["t"], **params}
    params = {key: value for key, value in params.items() if value is not None}
    code, status, message = refused(lambda: unchecked.create_event_source_mapping(FunctionName="plain", **params))
    assert (code, status) == (wanted, 400) and said in message, message
    assert unchecked.list_event_source_mappings(FunctionName="plain")["EventSourceMappings"] == []


def test_an_update_that_would_move_or_regroup_a_mapping_is_refused(admin: Any) -> None:
    mapping = admin.list_event_source_mappings(FunctionName="shop")["EventSourceMappings"][0]
    code, status, message = refused(lambda: admin.update_event_source_mapping(UUID=mapping["UUID"],
                                                                              FunctionName="plain"))
    assert (code, status) == ("InvalidParameterValueException", 400) and "cannot move" in message
    code, _, message = refused(lambda: admin.update_event_source_mapping(
        UUID=mapping["UUID"], SelfManagedKafkaEventSourceConfig={"ConsumerGroupId": "another"}))
    assert code == "InvalidParameterValueException" and "cannot be changed" in message
    assert shown(admin.get_event_source_mapping(UUID=mapping["UUID"])) == shown(mapping)


# ---------------------------------------------------------------- with Kafka


def _group_state(kafka: KafkaAdminClient, group: str) -> Any:
    described = kafka.describe_groups([group])[group]
    return described.get("group_state", described.get("state"))


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_a_mapping_made_through_the_api_consumes_until_it_is_deleted(admin: Any, gateway: Gateway) -> None:
    topic, marker = f"api-{uuid.uuid4().hex[:8]}", f"marker-{uuid.uuid4().hex[:8]}"
    kafka = KafkaAdminClient(**kafka_client.client_options())
    kafka.create_topics([NewTopic(topic, 1, 1), NewTopic(marker, 1, 1)])
    producer = KafkaProducer(**kafka_client.client_options())
    out = gateway.log_path.parent.parent / "out"
    streams = start_role("streams", gateway.log_path.parent / "streams.log", config=gateway.config_path).process
    try:
        assert admin.list_event_source_mappings(FunctionName="consume")["EventSourceMappings"] == []
        mapping = admin.create_event_source_mapping(FunctionName="consume", Topics=[topic],
                                                    **kafka_source(MaximumBatchingWindowInSeconds=0))
        for value in (b"one", b"two", b"three"):
            producer.send(topic, value=value)
        producer.flush()
        wait_until(lambda: _lines(out / f"{topic}.log") == ["one", "two", "three"], timeout=45,
                   message="the three records at the function")

        admin.delete_event_source_mapping(UUID=mapping["UUID"])
        group = mapping["SelfManagedKafkaEventSourceConfig"]["ConsumerGroupId"]
        wait_until(lambda: _group_state(kafka, group) == "Empty", timeout=30, interval=0.2,
                   message="the mapping's consumer to leave its group")
        producer.send(topic, value=b"after").get(timeout=10)
        # A mapping made after the deletion delivers: the streams process has caught up with both changes.
        admin.create_event_source_mapping(FunctionName="consume", Topics=[marker], **kafka_source())
        producer.send(marker, value=b"ping").get(timeout=10)
        wait_until(lambda: _lines(out / f"{marker}.log") == ["ping"], timeout=45, message="the marker record")
        assert _lines(out / f"{topic}.log") == ["one", "two", "three"]
        assert streams.poll() is None
    finally:
        producer.close()
        kafka.close()
        stop_process(streams, timeout_s=30)
