"""The Lambda control plane's writes of a function's settings over the AWS API: reserved concurrency, event invoke
configs (function.yaml's `async`) and tags, on the catalog that `lambent deploy` writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from .helpers import Gateway, fresh_redis_url, start_gateway
from .test_lambda_api import ARN, PLAIN_YAML, _folder, refused


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, redis_base_url: str) -> Iterator[Gateway]:
    """Functions `quota`, `events` and `labels`, deployed from their folders (each published as version 1)."""
    workdir = tmp_path_factory.mktemp("lambda-api-settings")
    functions = workdir / "functions"
    for name in ("quota", "events", "labels"):
        _folder(functions, name, PLAIN_YAML)
    gw = start_gateway(workdir, fresh_redis_url(redis_base_url), functions_dir=functions)
    try:
        yield gw
    finally:
        gw.stop()




def test_reserved_concurrency_zero_throttles_and_deleting_it_lets_invocations_run(admin: Any,
                                                                                  gateway: Gateway) -> None:
    # when the function's reserved concurrency is set to 0
    answer = admin.put_function_concurrency(FunctionName="quota", ReservedConcurrentExecutions=0)
    assert answer["ReservedConcurrentExecutions"] == 0
    assert admin.get_function_concurrency(FunctionName="quota")["ReservedConcurrentExecutions"] == 0
    # then every invocation is throttled, as on Lambda, whichever version it names
    assert refused(lambda: admin.invoke(FunctionName="quota"))[:2] == ("TooManyRequestsException", 429)
    assert refused(lambda: admin.invoke(FunctionName="quota:1"))[:2] == ("TooManyRequestsException", 429)
    assert gateway.request("GET", "/functions/quota").json()["reserved_concurrency"] == 0
    # and after deleting it the function runs again, its code untouched by the API's changes
    assert admin.delete_function_concurrency(FunctionName="quota")["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert "ReservedConcurrentExecutions" not in admin.get_function_concurrency(FunctionName="quota")
    assert admin.invoke(FunctionName="quota")["StatusCode"] == 200


@pytest.mark.parametrize("call, wanted", [
    (lambda c: c.put_function_concurrency(FunctionName="nosuch", ReservedConcurrentExecutions=1),
     ("ResourceNotFoundException", 404)),
    (lambda c: c.put_function_concurrency(FunctionName="quota:1", ReservedConcurrentExecutions=1),
     ("InvalidParameterValueException", 400)),
    (lambda c: c.put_function_concurrency(FunctionName="quota", ReservedConcurrentExecutions=-1),
     ("ValidationException", 400)),
    (lambda c: c.delete_function_concurrency(FunctionName="nosuch"), ("ResourceNotFoundException", 404)),
], ids=["missing", "qualified", "negative", "delete-missing"])
def test_a_bad_concurrency_write_is_refused(unchecked: Any, call: Any, wanted: tuple[str, int]) -> None:
    assert refused(lambda: call(unchecked))[:2] == wanted


def test_event_invoke_config_put_update_and_delete(admin: Any) -> None:
    on_failure = {"Destination": ARN + "labels"}
    # Put replaces the whole config, Lambda's defaults where a field is left out
    put = admin.put_function_event_invoke_config(FunctionName="events", MaximumRetryAttempts=1,
                                                 DestinationConfig={"OnFailure": on_failure})
    assert (put["MaximumRetryAttempts"], put["MaximumEventAgeInSeconds"]) == (1, 21600)
    assert put["DestinationConfig"]["OnFailure"] == on_failure and put["FunctionArn"] == ARN + "events:$LATEST"
    got = admin.get_function_event_invoke_config(FunctionName="events")
    assert got["MaximumRetryAttempts"] == 1 and got["DestinationConfig"]["OnFailure"] == on_failure
    # Update merges into it
    updated = admin.update_function_event_invoke_config(
        FunctionName="events", MaximumEventAgeInSeconds=600,
        DestinationConfig={"OnSuccess": {"Destination": "kafka://audit"}})
    assert (updated["MaximumRetryAttempts"], updated["MaximumEventAgeInSeconds"]) == (1, 600)
    assert updated["DestinationConfig"] == {"OnSuccess": {"Destination": "kafka://audit"}, "OnFailure": on_failure}
    listed = admin.list_function_event_invoke_configs(FunctionName="events")["FunctionEventInvokeConfigs"]
    assert [config["FunctionArn"] for config in listed] == [ARN + "events:$LATEST"]
    # Delete takes it away
    assert admin.delete_function_event_invoke_config(FunctionName="events")["ResponseMetadata"][
        "HTTPStatusCode"] == 204
    assert refused(lambda: admin.get_function_event_invoke_config(FunctionName="events"))[0] == (
        "ResourceNotFoundException")
    assert refused(lambda: admin.update_function_event_invoke_config(FunctionName="events",
                                                                     MaximumRetryAttempts=0))[0] == (
        "ResourceNotFoundException")


@pytest.mark.parametrize("params, wanted", [
    ({"FunctionName": "nosuch", "MaximumRetryAttempts": 1}, ("ResourceNotFoundException", 404)),
    ({"FunctionName": "events", "Qualifier": "1", "MaximumRetryAttempts": 1}, ("InvalidParameterValueException", 400)),
    ({"FunctionName": "events", "MaximumRetryAttempts": 3}, ("ValidationException", 400)),
    ({"FunctionName": "events", "MaximumEventAgeInSeconds": 30}, ("ValidationException", 400)),
    ({"FunctionName": "events", "DestinationConfig": {"OnFailure": {
        "Destination": "arn:aws:sqs:us-east-1:000000000000:dlq"}}}, ("InvalidParameterValueException", 400)),
], ids=["missing", "published-version", "retries", "event-age", "sqs-destination"])
def test_a_bad_event_invoke_config_is_refused(unchecked: Any, params: dict[str, Any], wanted: tuple[str, int]) -> None:
    assert refused(lambda: unchecked.put_function_event_invoke_config(**params))[:2] == wanted
    assert refused(lambda: unchecked.get_function_event_invoke_config(FunctionName="events"))[0] == (
        "ResourceNotFoundException")                # nothing was stored


def test_tags_round_trip_and_show_in_get_function(admin: Any) -> None:
    arn = ARN + "labels"
    assert admin.tag_resource(Resource=arn, Tags={"team": "shop", "cost-center": "42"})[
        "ResponseMetadata"]["HTTPStatusCode"] == 204
    assert admin.list_tags(Resource=arn)["Tags"] == {"team": "shop", "cost-center": "42"}
    assert admin.get_function(FunctionName="labels")["Tags"] == {"team": "shop", "cost-center": "42"}
    admin.untag_resource(Resource=arn, TagKeys=["cost-center"])
    assert admin.list_tags(Resource=arn)["Tags"] == {"team": "shop"}


@pytest.mark.parametrize("call, wanted", [
    (lambda c: c.tag_resource(Resource=ARN + "nosuch", Tags={"a": "b"}), ("ResourceNotFoundException", 404)),
    (lambda c: c.tag_resource(Resource=ARN + "labels:1", Tags={"a": "b"}), ("InvalidParameterValueException", 400)),
    (lambda c: c.tag_resource(Resource=ARN + "labels", Tags={"aws:owner": "me"}),
     ("InvalidParameterValueException", 400)),
    (lambda c: c.tag_resource(Resource=ARN + "labels", Tags={"k" * 129: "v"}), ("ValidationException", 400)),
    (lambda c: c.tag_resource(Resource=ARN + "labels", Tags={f"k{i}": "v" for i in range(51)}),
     ("InvalidParameterValueException", 400)),
    (lambda c: c.untag_resource(Resource=ARN + "nosuch", TagKeys=["a"]), ("ResourceNotFoundException", 404)),
], ids=["missing", "qualified", "aws-prefix", "long-key", "too-many", "untag-missing"])
def test_a_bad_tag_write_is_refused(unchecked: Any, call: Any, wanted: tuple[str, int]) -> None:
    assert refused(lambda: call(unchecked))[:2] == wanted
    assert "aws:owner" not in unchecked.list_tags(Resource=ARN + "labels")["Tags"]


def test_settings_made_through_the_api_leave_the_code_running(admin: Any, tmp_path: Path) -> None:
    admin.put_function_concurrency(FunctionName="labels", ReservedConcurrentExecutions=3)
    admin.put_function_event_invoke_config(FunctionName="labels", MaximumRetryAttempts=0)
    assert admin.invoke(FunctionName="labels")["StatusCode"] == 200
    latest = admin.get_function_configuration(FunctionName="labels")
    assert latest["CodeSha256"] == admin.get_function_configuration(FunctionName="labels:1")["CodeSha256"]
