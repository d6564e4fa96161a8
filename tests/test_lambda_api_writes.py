"""The Lambda control plane's writes of functions over the AWS API, as boto3 and the AWS CLI use them:
CreateFunction, UpdateFunctionCode, UpdateFunctionConfiguration, PublishVersion, aliases, DeleteFunction, with
Lambda's version model ($LATEST is written, versions are published from it) on the catalog `lambent deploy`
writes."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any, Iterator

import pytest

from .helpers import Gateway, fresh_redis_url, start_gateway
from .test_lambda_api import PLAIN_YAML, _folder, deploy, refused
from .test_lambda_api import aws_cli as aws

ROLE = "arn:aws:iam::000000000000:role/lambda-role"
# Written the way AWS's Lambda developer guide shows a Python handler (lambda_function.lambda_handler).
SOURCE = '''import json
import logging
import os

logger = logging.getLogger()
logger.setLevel("INFO")


def lambda_handler(event, context):
    logger.info("Processing event %s", json.dumps(event))
    return {"release": RELEASE, "greeting": os.environ.get("GREETING"), "version": context.function_version,
            "memory": context.memory_limit_in_mb, "event": event}
'''


def code(release: str, *, extra: str = "") -> bytes:
    """A zip as `zip function.zip lambda_function.py` makes one."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("lambda_function.py", f"RELEASE = {release!r}\n" + SOURCE + extra)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, redis_base_url: str) -> Iterator[Gateway]:
    workdir = tmp_path_factory.mktemp("lambda-api-writes")
    gw = start_gateway(workdir, fresh_redis_url(redis_base_url), functions_dir=workdir / "functions")
    try:
        yield gw
    finally:
        gw.stop()




def create(admin: Any, name: str, release: str = "one", **extra: Any) -> dict[str, Any]:
    answer = admin.create_function(FunctionName=name, Runtime="python3.11", Role=ROLE,
                                   Handler="lambda_function.lambda_handler", Code={"ZipFile": code(release)}, **extra)
    assert answer["ResponseMetadata"]["HTTPStatusCode"] == 201
    return dict(answer)


def invoke(admin: Any, name: str, payload: Any = None) -> dict[str, Any]:
    answer = admin.invoke(FunctionName=name, Payload=json.dumps(payload or {}).encode())
    assert "FunctionError" not in answer, answer["Payload"].read()
    return dict(json.loads(answer["Payload"].read()))


# ---------------------------------------------------------------- CreateFunction


def test_a_created_function_is_active_and_runs_with_its_configuration(admin: Any, gateway: Gateway) -> None:
    # when a function is created from a zip with its configuration
    answer = create(admin, "orders", Timeout=7, MemorySize=256, Description="Orders",
                    Environment={"Variables": {"GREETING": "hi"}}, Tags={"team": "shop"})
    # then the answer is $LATEST's configuration, ready
    assert answer["FunctionName"] == "orders" and answer["Version"] == "$LATEST"
    assert answer["FunctionArn"].endswith(":function:orders")
    assert (answer["Handler"], answer["Timeout"], answer["MemorySize"], answer["Description"]) == (
        "lambda_function.lambda_handler", 7, 256, "Orders")
    assert answer["Environment"] == {"Variables": {"GREETING": "hi"}}
    assert (answer["State"], answer["LastUpdateStatus"]) == ("Active", "Successful")
    admin.get_waiter("function_active_v2").wait(FunctionName="orders", WaiterConfig={"Delay": 1, "MaxAttempts": 3})
    # and it runs as $LATEST with that configuration
    ran = invoke(admin, "orders", {"n": 1})
    assert ran == {"release": "one", "greeting": "hi", "version": "$LATEST", "memory": "256", "event": {"n": 1}}
    # and no version is published: ListVersionsByFunction has $LATEST alone
    assert [v["Version"] for v in admin.list_versions_by_function(FunctionName="orders")["Versions"]] == ["$LATEST"]
    # and it is the same function Lambent's own API shows, tags included
    own = gateway.request("GET", "/functions/orders").json()
    assert own["handler"] == "lambda_function.lambda_handler" and own["memory_mb"] == 256 and own["version"] is None
    assert admin.list_tags(Resource=answer["FunctionArn"])["Tags"] == {"team": "shop"}


def test_create_with_publish_answers_version_1(admin: Any) -> None:
    answer = create(admin, "billing", Publish=True)
    assert answer["Version"] == "1" and answer["FunctionArn"].endswith(":function:billing:1")
    versions = admin.list_versions_by_function(FunctionName="billing")["Versions"]
    assert [v["Version"] for v in versions] == ["$LATEST", "1"]
    assert invoke(admin, "billing:1")["version"] == "1"


def test_creating_a_function_that_exists_is_a_conflict(admin: Any) -> None:
    create(admin, "twice")
    code_, status, message = refused(lambda: create(admin, "twice", release="two"))
    assert (code_, status) == ("ResourceConflictException", 409) and "twice" in message
    assert invoke(admin, "twice")["release"] == "one"          # nothing changed


@pytest.mark.parametrize("change, wanted, words", [
    ({"Runtime": "nodejs20.x"}, "InvalidParameterValueException", "Python"),
    ({"Code": {"ZipFile": b"not a zip"}}, "InvalidParameterValueException", "not a zip"),
    ({"Code": {"S3Bucket": "bucket", "S3Key": "function.zip"}}, "InvalidParameterValueException", "S3"),
    ({"Handler": "missing_module.handler"}, "InvalidParameterValueException", "no file missing_module.py"),
    ({"Code": {"ZipFile": code("one", extra="import not_installed_anywhere\n")}}, "InvalidParameterValueException",
     "does not import"),
    ({"Timeout": 0}, "ValidationException", "timeout"),
    ({"Timeout": 901}, "InvalidParameterValueException", "timeout"),
    ({"MemorySize": 64}, "InvalidParameterValueException", "MemorySize"),
    ({"Layers": ["arn:aws:lambda:us-east-1:000000000000:layer:deps:1"]}, "InvalidParameterValueException", "Layers"),
    ({"TracingConfig": {"Mode": "Active"}}, "InvalidParameterValueException", "TracingConfig"),
    ({"FunctionName": "bad.name"}, "ValidationException", "functionName"),
    ({"Tags": {"aws:owner": "me"}}, "InvalidParameterValueException", "aws:"),
])
def test_a_bad_create_is_refused_and_stores_nothing(unchecked: Any, change: dict[str, Any], wanted: str,
                                                    words: str) -> None:
    params = {"FunctionName": "refused", "Runtime": "python3.11", "Role": ROLE,
              "Handler": "lambda_function.lambda_handler", "Code": {"ZipFile": code("one")}, **change}
    code_, status, message = refused(lambda: unchecked.create_function(**params))
    assert (code_, status) == (wanted, 400) and words.lower() in message.lower(), message
    assert refused(lambda: unchecked.get_function(FunctionName="refused"))[0] == "ResourceNotFoundException"


# ---------------------------------------------------------------- updates


def test_update_code_keeps_the_configuration_and_checks_the_revision(admin: Any) -> None:
    created = create(admin, "catalogue", Environment={"Variables": {"GREETING": "hello"}})
    # a stale RevisionId is refused, and changes nothing
    stale = "00000000-0000-0000-0000-000000000000"
    assert refused(lambda: admin.update_function_code(FunctionName="catalogue", ZipFile=code("two"),
                                                      RevisionId=stale))[:2] == ("PreconditionFailedException", 412)
    # when the code is updated with the RevisionId GetFunction gave
    updated = admin.update_function_code(FunctionName="catalogue", ZipFile=code("two"),
                                         RevisionId=created["RevisionId"])
    admin.get_waiter("function_updated_v2").wait(FunctionName="catalogue", WaiterConfig={"Delay": 1, "MaxAttempts": 3})
    # then $LATEST runs the new code with the configuration it had
    assert updated["CodeSha256"] != created["CodeSha256"] and updated["RevisionId"] != created["RevisionId"]
    assert invoke(admin, "catalogue") | {"event": None} == {
        "release": "two", "greeting": "hello", "version": "$LATEST", "memory": "128", "event": None}
    # and a dry run checks without storing
    dry = admin.update_function_code(FunctionName="catalogue", ZipFile=code("three"), DryRun=True)
    assert dry["CodeSha256"] != updated["CodeSha256"] and invoke(admin, "catalogue")["release"] == "two"
    assert refused(lambda: admin.update_function_code(FunctionName="nosuch", ZipFile=code("x")))[:2] == (
        "ResourceNotFoundException", 404)


def test_update_configuration_changes_what_the_next_invocation_sees(admin: Any) -> None:
    create(admin, "profile")
    answer = admin.update_function_configuration(FunctionName="profile", MemorySize=512,
                                                 Environment={"Variables": {"GREETING": "hey"}},
                                                 LoggingConfig={"LogFormat": "JSON", "ApplicationLogLevel": "WARN"})
    assert answer["MemorySize"] == 512 and answer["LoggingConfig"]["LogFormat"] == "JSON"
    assert answer["LoggingConfig"]["ApplicationLogLevel"] == "WARN"
    ran = invoke(admin, "profile")
    assert (ran["greeting"], ran["memory"]) == ("hey", "512")
    # a handler that does not import is refused before $LATEST says so
    code_, status, message = refused(lambda: admin.update_function_configuration(FunctionName="profile",
                                                                                 Handler="nowhere.handler"))
    assert (code_, status) == ("InvalidParameterValueException", 400) and "import" in message
    assert admin.get_function_configuration(FunctionName="profile")["Handler"] == "lambda_function.lambda_handler"
    assert refused(lambda: admin.update_function_configuration(FunctionName="profile:1", Timeout=5))[0] == (
        "InvalidParameterValueException")
    assert refused(lambda: admin.update_function_configuration(FunctionName="nosuch", Timeout=5))[0] == (
        "ResourceNotFoundException")


# ---------------------------------------------------------------- versions and aliases


def test_publish_freezes_latest_and_aliases_follow_versions(admin: Any) -> None:
    create(admin, "pricing")
    # PublishVersion freezes $LATEST as 1; publishing again without a change gives 1 again
    first = admin.publish_version(FunctionName="pricing", Description="first")
    assert first["Version"] == "1" and first["FunctionArn"].endswith(":pricing:1")
    assert admin.publish_version(FunctionName="pricing")["Version"] == "1"
    admin.get_waiter("published_version_active").wait(FunctionName="pricing", Qualifier="1",
                                                      WaiterConfig={"Delay": 1, "MaxAttempts": 3})
    # an alias points at it
    alias = admin.create_alias(FunctionName="pricing", Name="live", FunctionVersion="1", Description="production")
    assert (alias["Name"], alias["FunctionVersion"], alias["Description"]) == ("live", "1", "production")
    assert refused(lambda: admin.create_alias(FunctionName="pricing", Name="live", FunctionVersion="1"))[:2] == (
        "ResourceConflictException", 409)
    # a new $LATEST does not change version 1 or the alias
    admin.update_function_code(FunctionName="pricing", ZipFile=code("two"))
    assert invoke(admin, "pricing")["release"] == "two"
    assert invoke(admin, "pricing:1") | {"event": None} == {
        "release": "one", "greeting": None, "version": "1", "memory": "128", "event": None}
    assert invoke(admin, "pricing:live")["version"] == "1"
    # a publish with the wrong CodeSha256 is refused; with the right one it makes 2
    assert refused(lambda: admin.publish_version(FunctionName="pricing", CodeSha256=first["CodeSha256"]))[0] == (
        "InvalidParameterValueException")
    latest = admin.get_function_configuration(FunctionName="pricing")
    assert admin.publish_version(FunctionName="pricing", CodeSha256=latest["CodeSha256"])["Version"] == "2"
    # rolling the alias forward, with its RevisionId
    moved = admin.update_alias(FunctionName="pricing", Name="live", FunctionVersion="2", RevisionId=alias["RevisionId"])
    assert moved["FunctionVersion"] == "2" and moved["Description"] == "production"
    assert invoke(admin, "pricing:live")["release"] == "two"
    assert refused(lambda: admin.update_alias(FunctionName="pricing", Name="live", FunctionVersion="1",
                                              RevisionId=alias["RevisionId"]))[0] == "PreconditionFailedException"
    assert refused(lambda: admin.update_alias(FunctionName="pricing", Name="nosuch", FunctionVersion="1"))[0] == (
        "ResourceNotFoundException")
    assert refused(lambda: admin.create_alias(FunctionName="pricing", Name="beta", FunctionVersion="9"))[0] == (
        "ResourceNotFoundException")
    assert refused(lambda: admin.create_alias(FunctionName="pricing", Name="split", FunctionVersion="1",
                                              RoutingConfig={"AdditionalVersionWeights": {"2": 0.1}}))[0] == (
        "InvalidParameterValueException")
    # an alias may point at $LATEST
    admin.create_alias(FunctionName="pricing", Name="edge", FunctionVersion="$LATEST")
    assert invoke(admin, "pricing:edge")["version"] == "$LATEST"
    listed = {a["Name"]: a["FunctionVersion"] for a in admin.list_aliases(FunctionName="pricing")["Aliases"]}
    assert listed == {"edge": "$LATEST", "live": "2"}
    # deleting an alias
    admin.delete_alias(FunctionName="pricing", Name="edge")
    assert refused(lambda: admin.get_alias(FunctionName="pricing", Name="edge"))[0] == "ResourceNotFoundException"
    assert refused(lambda: admin.delete_alias(FunctionName="pricing", Name="edge"))[0] == "ResourceNotFoundException"


def test_delete_a_version_or_the_whole_function(admin: Any, gateway: Gateway) -> None:
    create(admin, "cleanup", Publish=True)
    admin.update_function_code(FunctionName="cleanup", ZipFile=code("two"), Publish=True)
    admin.create_alias(FunctionName="cleanup", Name="live", FunctionVersion="2")
    # a version an alias points at stays
    code_, status, message = refused(lambda: admin.delete_function(FunctionName="cleanup", Qualifier="2"))
    assert (code_, status) == ("ResourceConflictException", 409) and "live" in message
    assert refused(lambda: admin.delete_function(FunctionName="cleanup", Qualifier="$LATEST"))[0] == (
        "InvalidParameterValueException")
    # another version goes
    assert admin.delete_function(FunctionName="cleanup", Qualifier="1")["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert [v["Version"] for v in admin.list_versions_by_function(FunctionName="cleanup")["Versions"]] == [
        "$LATEST", "2"]
    assert refused(lambda: admin.invoke(FunctionName="cleanup:1"))[0] == "ResourceNotFoundException"
    # and the function, with everything of it
    admin.delete_function(FunctionName="cleanup")
    assert refused(lambda: admin.get_function(FunctionName="cleanup"))[0] == "ResourceNotFoundException"
    assert gateway.request("GET", "/functions/cleanup").status_code == 404
    assert refused(lambda: admin.delete_function(FunctionName="cleanup"))[:2] == ("ResourceNotFoundException", 404)


# ---------------------------------------------------------------- one catalog


def test_a_folder_deploy_and_the_api_change_one_function(admin: Any, gateway: Gateway, tmp_path: Path) -> None:
    # given a function deployed from its folder, as `lambent deploy` does (it publishes)
    first = deploy(gateway, _folder(tmp_path, "shared", PLAIN_YAML))
    assert (first["version"], first["created"]) == (1, True)
    # when the API changes its configuration
    admin.update_function_configuration(FunctionName="shared", Environment={"Variables": {"MODE": "api"}})
    # then Lambent's own API shows the change on $LATEST, version 1 frozen as it was
    own = gateway.request("GET", "/functions/shared").json()
    assert own["configuration"]["environment"] == {"MODE": "api"}
    assert [v["version"] for v in own["versions"]] == [1]
    assert admin.get_function_configuration(FunctionName="shared:1").get("Environment") is None
    # and deploying the folder again makes the folder's function.yaml $LATEST again: that is version 1's content,
    # so no version is made
    again = deploy(gateway, _folder(tmp_path, "shared", PLAIN_YAML))
    assert (again["version"], again["created"]) == (1, False)
    assert admin.get_function_configuration(FunctionName="shared").get("Environment") is None
    # while a changed folder makes version 2
    changed = deploy(gateway, _folder(tmp_path, "shared", PLAIN_YAML, note="# two\n"))
    assert (changed["version"], changed["created"]) == (2, True)


# ---------------------------------------------------------------- the AWS CLI


def test_the_aws_cli_creates_updates_publishes_and_invokes(gateway: Gateway, tmp_path: Path) -> None:
    (tmp_path / "function.zip").write_bytes(code("cli-one"))
    created = aws(gateway, tmp_path, "create-function", "--function-name", "cli", "--runtime", "python3.11",
                  "--role", ROLE, "--handler", "lambda_function.lambda_handler", "--zip-file", "fileb://function.zip")
    assert created["State"] == "Active"
    assert aws(gateway, tmp_path, "wait", "function-active-v2", "--function-name", "cli") is None
    (tmp_path / "function.zip").write_bytes(code("cli-two"))
    updated = aws(gateway, tmp_path, "update-function-code", "--function-name", "cli",
                  "--zip-file", "fileb://function.zip")
    assert updated["CodeSha256"] != created["CodeSha256"]
    assert aws(gateway, tmp_path, "wait", "function-updated-v2", "--function-name", "cli") is None
    published = aws(gateway, tmp_path, "publish-version", "--function-name", "cli")
    assert published["Version"] == "1"
    alias = aws(gateway, tmp_path, "create-alias", "--function-name", "cli", "--name", "prod",
                "--function-version", "1")
    assert alias["FunctionVersion"] == "1"
    ran = aws(gateway, tmp_path, "invoke", "--function-name", "cli:prod", "--payload", '{"from": "cli"}', "out.json")
    assert ran["StatusCode"] == 200 and ran["ExecutedVersion"] == "1"
    assert json.loads((tmp_path / "out.json").read_text())["release"] == "cli-two"
    assert "cli" in [f["FunctionName"] for f in aws(gateway, tmp_path, "list-functions")["Functions"]]
    got = aws(gateway, tmp_path, "get-function", "--function-name", "cli")
    assert got["Configuration"]["CodeSha256"] == updated["CodeSha256"]
