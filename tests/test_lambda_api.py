"""The Lambda control plane's reads over the AWS API, as boto3 and the AWS CLI see them: GetFunction (with a Code
Location that downloads the zip), GetFunctionConfiguration, ListFunctions, ListVersionsByFunction, aliases,
concurrency, account settings, event invoke configs, event source mappings, function URL configs, tags, the
waiters, who may call what, and AWS's answer for the operations not built."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import threading
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator

import boto3
import httpx
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, WaiterError

from runtime.functions.package import pack_folder

from .helpers import Gateway, fresh_redis_url, start_gateway

REGION, ACCOUNT = "us-east-1", "000000000000"
ARN = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:"
READER = {"TEST_READER_SECRET": "reader-secret-value"}
BOOTSTRAP = "kafka-a:9092,kafka-b:9092"
PUBLISHERS = {"SigningProfileVersionArns": ["arn:aws:signer:us-east-1:000000000000:/signing-profiles/p"]}

HANDLER = '''import json


def lambda_handler(event, context):
    return {"statusCode": 200, "body": json.dumps({"version": context.function_version})}
'''
API_YAML = """
handler: handler.lambda_handler
description: Orders API
timeout: 2.5
memory_mb: 256
environment: {TOKEN: s3cr3t}
reserved_concurrency: 5
logging_config: {log_format: JSON, application_log_level: WARN}
async:
  max_retry_attempts: 1
  max_event_age: 3600
  on_failure: {function: sink}
  on_success: {topic: audit}
events:
  - http: {}
  - kafka:
      topic: orders
      batch_size: 10
      batch_window: 2.5
      starting_position: LATEST
      max_retry_attempts: 3
      max_record_age: 600
      bisect_on_error: true
      report_batch_item_failures: true
      on_failure: {topic: orders-dlq}
"""
PLAIN_YAML = "handler: handler.lambda_handler\n"
STREAM_YAML = PLAIN_YAML + "events:\n  - kafka: {topic: clicks}\n"


def _folder(root: Path, name: str, spec: str, note: str = "") -> Path:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "handler.py").write_text(HANDLER + note)
    (folder / "function.yaml").write_text(spec)
    return folder


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, redis_base_url: str) -> Iterator[Gateway]:
    """Functions `api` (every setting), `plain` (versions 1 and 2, alias live -> 1), `sink`, `stream` (a kafka
    event); an invoke key `reader` and the generated admin key."""
    workdir = tmp_path_factory.mktemp("lambda-api")
    functions = workdir / "functions"
    _folder(functions, "api", API_YAML)
    _folder(functions, "plain", PLAIN_YAML)
    _folder(functions, "sink", PLAIN_YAML)
    _folder(functions, "stream", STREAM_YAML)
    config = {"kafka_bootstrap_servers": BOOTSTRAP, "auth": {"keys": [
        {"id": "reader", "secret_env": "TEST_READER_SECRET", "role": "invoke"}]}}
    gw = start_gateway(workdir, fresh_redis_url(redis_base_url), functions_dir=functions, config=config, env=READER)
    try:
        deploy(gw, _folder(workdir / "v2", "plain", PLAIN_YAML, note="# version 2\n"))
        assert gw.request("PUT", "/functions/plain/aliases/live", json={"version": 1}).status_code == 200
        yield gw
    finally:
        gw.stop()


def deploy(gateway: Gateway, folder: Path) -> dict[str, Any]:
    """Deploy a folder through Lambent's own API, as `lambent deploy` does."""
    answer = gateway.request("PUT", f"/functions/{folder.name}/code", content=pack_folder(folder),
                             headers={"Content-Type": "application/zip"})
    assert answer.status_code in (200, 201), answer.text
    return dict(answer.json())


def client(gateway: Gateway, key_id: str, secret: str, **options: Any) -> Any:
    return boto3.client("lambda", endpoint_url=gateway.url, region_name=REGION, aws_access_key_id=key_id,
                        aws_secret_access_key=secret,
                        config=Config(retries={"mode": "standard", "total_max_attempts": 1}, **options))



@pytest.fixture(scope="module")
def reader(gateway: Gateway) -> Any:
    return client(gateway, "reader", READER["TEST_READER_SECRET"])


def names(gateway: Gateway) -> list[str]:
    """The functions, as Lambent's own API lists them (tests may deploy more)."""
    return [f["name"] for f in gateway.request("GET", "/functions").json()["functions"]]


def refused(call: Callable[[], Any]) -> tuple[str, int, str]:
    """(error code, HTTP status, message) of a call that must fail."""
    with pytest.raises(ClientError) as caught:
        call()
    response = caught.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Message"]


# ---------------------------------------------------------------- functions


def test_get_function_gives_the_configuration_as_lambda_does(admin: Any) -> None:
    # given api, whose function.yaml sets nearly everything
    # when an admin key gets it
    answer = admin.get_function(FunctionName="api")
    # then its configuration is Lambda's FunctionConfiguration, with the environment values
    config = answer["Configuration"]
    assert config["FunctionName"] == "api" and config["FunctionArn"] == ARN + "api"
    assert config["Runtime"] == f"python{sys.version_info.major}.{sys.version_info.minor}"
    assert config["Role"] == f"arn:aws:iam::{ACCOUNT}:role/lambda-role"
    assert config["Handler"] == "handler.lambda_handler" and config["Description"] == "Orders API"
    assert config["Timeout"] == 3 and config["MemorySize"] == 256            # 2.5 s: whole seconds on Lambda
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+0000", config["LastModified"])
    assert config["Version"] == "$LATEST" and config["State"] == "Active"
    assert config["LastUpdateStatus"] == "Successful" and config["PackageType"] == "Zip"
    assert config["Environment"] == {"Variables": {"TOKEN": "s3cr3t"}}
    assert config["TracingConfig"] == {"Mode": "PassThrough"} and config["EphemeralStorage"] == {"Size": 512}
    assert config["LoggingConfig"] == {"LogFormat": "JSON", "ApplicationLogLevel": "WARN", "SystemLogLevel": "INFO",
                                       "LogGroup": "/aws/lambda/api"}
    assert config["SnapStart"] == {"ApplyOn": "None", "OptimizationStatus": "Off"}
    assert config["Architectures"][0] in ("x86_64", "arm64")
    assert re.fullmatch(r"[0-9a-f-]{36}", config["RevisionId"])
    assert answer["Concurrency"] == {"ReservedConcurrentExecutions": 5}
    assert answer["Code"]["RepositoryType"] == "S3"


def test_code_location_downloads_the_exact_zip_without_credentials(admin: Any, gateway: Gateway) -> None:
    # given a version's Code.Location
    answer = admin.get_function(FunctionName="plain", Qualifier="1")
    location = answer["Code"]["Location"]
    # when it is fetched with no key at all, as a presigned S3 URL is
    download = httpx.get(location, timeout=10)
    # then it is the zip whose sha256 and size the configuration gives
    assert download.status_code == 200 and download.headers["content-type"] == "application/zip"
    digest = base64.b64encode(hashlib.sha256(download.content).digest()).decode()
    assert digest == answer["Configuration"]["CodeSha256"]
    assert len(download.content) == answer["Configuration"]["CodeSize"]
    assert "# version 2" not in zipfile.ZipFile(io.BytesIO(download.content)).read("handler.py").decode()
    # and a link that was changed, or that expired, is refused
    other = admin.get_function(FunctionName="plain")["Configuration"]["CodeSha256"]
    forged = re.sub(r"code/[0-9a-f]{64}", f"code/{base64.b64decode(other).hex()}", location)
    assert forged != location
    assert httpx.get(forged, timeout=10).status_code == 403
    expired = re.sub(r"expires=\d+", "expires=1000", location)
    assert httpx.get(expired, timeout=10).json()["error"] == "AccessDenied"


def test_environment_values_are_named_but_not_shown_to_invoke_keys(reader: Any) -> None:
    assert reader.get_function_configuration(FunctionName="api")["Environment"] == {"Variables": {"TOKEN": "***"}}
    listed = {f["FunctionName"]: f for f in reader.list_functions()["Functions"]}
    assert listed["api"]["Environment"] == {"Variables": {"TOKEN": "***"}}
    assert "Environment" not in listed["plain"]          # no variables: no Environment, as on Lambda


def test_a_qualifier_names_a_published_version_or_an_alias(admin: Any) -> None:
    # given plain: version 1, version 2 (= $LATEST), alias live -> 1
    one = admin.get_function_configuration(FunctionName="plain", Qualifier="1")
    assert one["Version"] == "1" and one["FunctionArn"] == ARN + "plain:1"
    live = admin.get_function_configuration(FunctionName="plain:live")
    assert live["Version"] == "1" and live["FunctionArn"] == ARN + "plain:live"
    assert live["CodeSha256"] == one["CodeSha256"]
    latest = admin.get_function_configuration(FunctionName=ARN + "plain", Qualifier="$LATEST")
    assert latest["Version"] == "$LATEST" and latest["FunctionArn"] == ARN + "plain:$LATEST"
    two = admin.get_function_configuration(FunctionName=f"{ACCOUNT}:function:plain:2")
    assert two["CodeSha256"] == latest["CodeSha256"] != one["CodeSha256"]
    # a name whose qualifier disagrees with Qualifier, or an ARN of another region, is refused as Lambda does
    assert refused(lambda: admin.get_function(FunctionName="plain:1", Qualifier="2"))[:2] == (
        "InvalidParameterValueException", 400)
    code, status, message = refused(lambda: admin.get_function(FunctionName="arn:aws:lambda:eu-west-1:"
                                                                            f"{ACCOUNT}:function:plain"))
    assert (code, status) == ("ResourceNotFoundException", 404) and "eu-west-1" in message


def test_list_functions_pages_with_max_items(admin: Any, gateway: Gateway) -> None:
    # when functions are listed one per page
    listed, marker, pages = [], None, 0
    while True:
        answer = admin.list_functions(MaxItems=1, **({"Marker": marker} if marker else {}))
        pages += 1
        assert len(answer["Functions"]) == 1
        listed += [f["FunctionName"] for f in answer["Functions"]]
        marker = answer.get("NextMarker")
        if not marker:
            break
    # then every function comes once, in order, and the last page has no NextMarker
    assert listed == sorted(names(gateway)) and pages == len(listed)
    assert "State" not in answer["Functions"][0]          # ListFunctions leaves the state fields out, as Lambda
    everything = [f for page in admin.get_paginator("list_functions").paginate(
        FunctionVersion="ALL", PaginationConfig={"PageSize": 2}) for f in page["Functions"]]
    versions = [(f["FunctionName"], f["Version"]) for f in everything]
    assert versions[:5] == [("api", "$LATEST"), ("api", "1"), ("plain", "$LATEST"), ("plain", "1"), ("plain", "2")]
    assert len(versions) == len(set(versions)) and ("sink", "1") in versions
    assert everything[2]["FunctionArn"] == ARN + "plain:$LATEST"


def test_list_versions_starts_with_latest_and_pages(admin: Any) -> None:
    first = admin.list_versions_by_function(FunctionName="plain", MaxItems=2)
    assert [v["Version"] for v in first["Versions"]] == ["$LATEST", "1"]
    assert [v["FunctionArn"] for v in first["Versions"]] == [ARN + "plain:$LATEST", ARN + "plain:1"]
    rest = admin.list_versions_by_function(FunctionName="plain", Marker=first["NextMarker"])
    assert [v["Version"] for v in rest["Versions"]] == ["2"] and "NextMarker" not in rest


def test_aliases(admin: Any) -> None:
    alias = admin.get_alias(FunctionName="plain", Name="live")
    assert {k: alias[k] for k in ("AliasArn", "Name", "FunctionVersion", "Description")} == {
        "AliasArn": ARN + "plain:live", "Name": "live", "FunctionVersion": "1", "Description": ""}
    assert [a["Name"] for a in admin.list_aliases(FunctionName="plain")["Aliases"]] == ["live"]
    assert admin.list_aliases(FunctionName="plain", FunctionVersion="2")["Aliases"] == []
    code, status, message = refused(lambda: admin.get_alias(FunctionName="plain", Name="gone"))
    assert (code, status, message) == ("ResourceNotFoundException", 404, f"Cannot find alias arn: {ARN}plain:gone")


def test_concurrency_and_account_settings(admin: Any, gateway: Gateway) -> None:
    assert admin.get_function_concurrency(FunctionName="api")["ReservedConcurrentExecutions"] == 5
    assert "ReservedConcurrentExecutions" not in admin.get_function_concurrency(FunctionName="plain")
    assert refused(lambda: admin.get_function_concurrency(FunctionName="plain:1"))[0] == (
        "InvalidParameterValueException")
    settings = admin.get_account_settings()
    assert settings["AccountUsage"]["FunctionCount"] == len(names(gateway))
    assert settings["AccountUsage"]["TotalCodeSize"] > 0
    assert settings["AccountLimit"]["CodeSizeZipped"] == 50 * 1024 * 1024
    assert settings["AccountLimit"]["UnreservedConcurrentExecutions"] == (
        settings["AccountLimit"]["ConcurrentExecutions"] - 5)


# ---------------------------------------------------------------- what surrounds a function


def test_event_invoke_config_comes_from_function_yaml_async(admin: Any) -> None:
    config = admin.get_function_event_invoke_config(FunctionName="api")
    assert config["FunctionArn"] == ARN + "api:$LATEST"
    assert config["MaximumRetryAttempts"] == 1 and config["MaximumEventAgeInSeconds"] == 3600
    assert config["DestinationConfig"] == {"OnSuccess": {"Destination": "kafka://audit"},
                                           "OnFailure": {"Destination": ARN + "sink"}}
    listed = admin.list_function_event_invoke_configs(FunctionName="api")["FunctionEventInvokeConfigs"]
    assert [c["FunctionArn"] for c in listed] == [ARN + "api:$LATEST", ARN + "api:1"]
    # without `async`, Lambda's defaults apply and there is no config
    code, status, message = refused(lambda: admin.get_function_event_invoke_config(FunctionName="plain"))
    assert (code, status) == ("ResourceNotFoundException", 404) and "doesn't have an EventInvokeConfig" in message
    assert admin.list_function_event_invoke_configs(FunctionName="plain")["FunctionEventInvokeConfigs"] == []


def test_kafka_events_are_self_managed_kafka_event_source_mappings(admin: Any, gateway: Gateway,
                                                                   tmp_path: Path) -> None:
    mappings = {m["FunctionArn"]: m for m in admin.list_event_source_mappings()["EventSourceMappings"]}
    assert set(mappings) == {ARN + "api", ARN + "stream"}
    mapping = mappings[ARN + "api"]
    assert mapping["FunctionArn"] == ARN + "api" and mapping["Topics"] == ["orders"]
    assert mapping["SelfManagedEventSource"] == {"Endpoints": {"KAFKA_BOOTSTRAP_SERVERS": ["kafka-a:9092",
                                                                                          "kafka-b:9092"]}}
    assert mapping["SelfManagedKafkaEventSourceConfig"]["ConsumerGroupId"] == "lambent-api-1-orders"
    assert (mapping["BatchSize"], mapping["MaximumBatchingWindowInSeconds"], mapping["StartingPosition"]) == (
        10, 2, "LATEST")
    assert (mapping["MaximumRetryAttempts"], mapping["MaximumRecordAgeInSeconds"]) == (3, 600)
    assert mapping["BisectBatchOnFunctionError"] is True
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert mapping["DestinationConfig"] == {"OnFailure": {"Destination": "kafka://orders-dlq"}}
    assert mapping["State"] == "Enabled"
    assert mapping["EventSourceMappingArn"].endswith(f":event-source-mapping:{mapping['UUID']}")
    fetched = admin.get_event_source_mapping(UUID=mapping["UUID"])
    assert {k: v for k, v in fetched.items() if k != "ResponseMetadata"} == mapping
    assert admin.list_event_source_mappings(FunctionName="plain")["EventSourceMappings"] == []
    assert len(admin.list_event_source_mappings(FunctionName=ARN + "api")["EventSourceMappings"]) == 1
    # the UUID is stable: a deploy of new code with the same events keeps it
    stream = mappings[ARN + "stream"]
    assert stream["MaximumBatchingWindowInSeconds"] == 0           # Lambent's 0.5 s default: Lambda's 0 (500 ms)
    assert deploy(gateway, _folder(tmp_path, "stream", STREAM_YAML, note="# new code\n"))["version"] == 2
    assert admin.get_event_source_mapping(UUID=stream["UUID"])["FunctionArn"] == ARN + "stream"
    assert refused(lambda: admin.get_event_source_mapping(UUID="6d1e9a4e-0000-4000-8000-000000000000"))[:2] == (
        "ResourceNotFoundException", 404)


def test_an_http_event_is_a_function_url_config(admin: Any, gateway: Gateway) -> None:
    port = gateway.url.rsplit(":", 1)[1]
    config = admin.get_function_url_config(FunctionName="api")
    assert config["FunctionUrl"] == f"http://api.lambda-url.localhost:{port}/"
    assert (config["FunctionArn"], config["AuthType"], config["InvokeMode"]) == (ARN + "api", "NONE", "BUFFERED")
    assert admin.list_function_url_configs(FunctionName="api")["FunctionUrlConfigs"] == [
        {k: v for k, v in config.items() if k != "ResponseMetadata"}]
    # the URL answers (the Host names the function; this machine's resolver may not know *.localhost)
    with gateway.client(anonymous=True, headers={"Host": f"api.lambda-url.localhost:{port}"}) as public:
        assert public.get("/").json() == {"version": "$LATEST"}
    assert refused(lambda: admin.get_function_url_config(FunctionName="plain"))[:2] == (
        "ResourceNotFoundException", 404)
    assert admin.list_function_url_configs(FunctionName="plain")["FunctionUrlConfigs"] == []
    assert refused(lambda: admin.get_function_url_config(FunctionName="api", Qualifier="1"))[0] == (
        "ValidationException")


def test_tags_are_empty(admin: Any) -> None:
    assert admin.list_tags(Resource=ARN + "api")["Tags"] == {}
    mapping = admin.list_event_source_mappings(FunctionName="api")["EventSourceMappings"][0]["EventSourceMappingArn"]
    assert admin.list_tags(Resource=mapping)["Tags"] == {}
    assert refused(lambda: admin.list_tags(Resource=ARN + "api:1"))[0] == "InvalidParameterValueException"
    assert refused(lambda: admin.list_tags(Resource="arn:aws:s3:::bucket"))[0] == "ValidationException"
    assert refused(lambda: admin.list_tags(Resource=ARN + "nosuch"))[:2] == ("ResourceNotFoundException", 404)


# ---------------------------------------------------------------- errors


NOT_FOUND: list[tuple[str, dict[str, Any]]] = [
    ("get_function", {"FunctionName": "nosuch"}),
    ("get_function", {"FunctionName": "plain", "Qualifier": "99"}),
    ("get_function", {"FunctionName": "plain:nosuchalias"}),
    ("get_function_configuration", {"FunctionName": "nosuch"}),
    ("list_versions_by_function", {"FunctionName": "nosuch"}),
    ("list_aliases", {"FunctionName": "nosuch"}),
    ("get_alias", {"FunctionName": "nosuch", "Name": "live"}),
    ("get_function_concurrency", {"FunctionName": "nosuch"}),
    ("get_function_event_invoke_config", {"FunctionName": "nosuch"}),
    ("list_function_event_invoke_configs", {"FunctionName": "nosuch"}),
    ("get_function_url_config", {"FunctionName": "nosuch"}),
    ("list_function_url_configs", {"FunctionName": "nosuch"}),
    ("list_tags", {"Resource": ARN + "nosuch"}),
]


@pytest.mark.parametrize("operation, params", NOT_FOUND, ids=[f"{op}-{'-'.join(map(str, p.values()))}"
                                                              for op, p in NOT_FOUND])
def test_what_does_not_exist_is_resource_not_found(admin: Any, operation: str, params: dict[str, Any]) -> None:
    code, status, message = refused(lambda: getattr(admin, operation)(**params))
    assert (code, status) == ("ResourceNotFoundException", 404), message


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("list_functions", {"MaxItems": 0}, "ValidationException"),
    ("list_functions", {"FunctionVersion": "SOME"}, "ValidationException"),
    ("list_functions", {"Marker": "!!not-a-marker!!"}, "InvalidParameterValueException"),
    ("list_versions_by_function", {"FunctionName": "plain", "MaxItems": 0}, "ValidationException"),
    ("get_function", {"FunctionName": "not a name!"}, "ValidationException"),
    ("get_function", {"FunctionName": "x" * 65}, "InvalidParameterValueException"),
    ("get_alias", {"FunctionName": "plain", "Name": "123"}, "ValidationException"),
    ("get_event_source_mapping", {"UUID": "short"}, "ValidationException"),
    ("list_function_event_invoke_configs", {"FunctionName": "api", "MaxItems": 51}, "ValidationException"),
]


@pytest.mark.parametrize("operation, params, wanted", BAD, ids=[f"{op}-{'-'.join(map(str, p))}" for op, p, _ in BAD])
def test_a_bad_parameter_is_refused_as_lambda_refuses_it(gateway: Gateway, operation: str, params: dict[str, Any],
                                                         wanted: str) -> None:
    # botocore checks some of these itself: switched off, so that the server's answer is what is seen
    assert gateway.admin_secret
    unchecked = client(gateway, "local-admin", gateway.admin_secret, parameter_validation=False)
    code, status, message = refused(lambda: getattr(unchecked, operation)(**params))
    assert (code, status) == (wanted, 400), message


def test_operations_not_built_answer_unsupported_operation(admin: Any, reader: Any, gateway: Gateway) -> None:
    # an operation of the API that Lambent does not serve: a ClientError naming it, not `404 no route`
    code, status, message = refused(lambda: admin.create_code_signing_config(AllowedPublishers=PUBLISHERS))
    assert (code, status) == ("UnsupportedOperationException", 501) and "CreateCodeSigningConfig" in message
    code, status, message = refused(lambda: reader.list_layers())       # a read: any key may learn it
    assert (code, status) == ("UnsupportedOperationException", 501) and "ListLayers" in message
    assert refused(lambda: admin.get_policy(FunctionName="api"))[0] == "UnsupportedOperationException"
    # a path of no operation at all, in AWS's shape too
    answer = gateway.request("GET", "/2015-03-31/no-such-thing")
    assert answer.status_code == 404 and answer.headers["x-amzn-errortype"] == "UnknownOperationException"
    assert set(answer.json()) == {"Type", "message"}


# ---------------------------------------------------------------- waiters and keys


def test_waiters_see_functions_active_and_appearing(admin: Any, gateway: Gateway, tmp_path: Path) -> None:
    admin.get_waiter("function_active_v2").wait(FunctionName="api", WaiterConfig={"Delay": 1, "MaxAttempts": 3})
    admin.get_waiter("function_updated_v2").wait(FunctionName="api", WaiterConfig={"Delay": 1, "MaxAttempts": 3})
    admin.get_waiter("published_version_active").wait(FunctionName="plain", Qualifier="1",
                                                      WaiterConfig={"Delay": 1, "MaxAttempts": 3})
    # given a waiter for a function that does not exist yet
    outcome: list[BaseException | None] = []

    def wait() -> None:
        try:
            admin.get_waiter("function_exists").wait(FunctionName="late", WaiterConfig={"Delay": 1, "MaxAttempts": 20})
            outcome.append(None)
        except BaseException as exc:      # handed to the test's thread
            outcome.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    try:
        # when it is deployed
        deploy(gateway, _folder(tmp_path, "late", PLAIN_YAML))
    finally:
        waiter.join(30)
    # then the waiter returns
    assert outcome == [None], outcome
    with pytest.raises(WaiterError):
        admin.get_waiter("function_exists").wait(FunctionName="never", WaiterConfig={"Delay": 1, "MaxAttempts": 1})


def test_invoke_keys_read_but_may_not_write(reader: Any, gateway: Gateway) -> None:
    assert "Functions" in reader.list_functions()
    assert reader.get_function(FunctionName="plain")["Configuration"]["FunctionName"] == "plain"
    for write in (lambda: reader.delete_function(FunctionName="plain"),
                  lambda: reader.create_code_signing_config(AllowedPublishers=PUBLISHERS),
                  lambda: reader.put_function_concurrency(FunctionName="plain", ReservedConcurrentExecutions=1)):
        assert refused(write)[:2] == ("AccessDeniedException", 403)
    stranger = client(gateway, "nobody", "nothing")
    assert refused(lambda: stranger.list_functions())[:2] == ("UnrecognizedClientException", 403)
    assert gateway.request("GET", "/2015-03-31/functions", anonymous=True).status_code == 401


# ---------------------------------------------------------------- the AWS CLI


def aws_cli(gateway: Gateway, home: Path, *args: str) -> Any:
    """`aws lambda ...` (the awscli package) with the generated admin key, nothing of the host's AWS config, run in
    `home` (where `fileb://` and output files are); its JSON answer, None when it prints nothing (`wait`)."""
    assert gateway.admin_secret
    env = {key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "LAMBENT_"))}
    env.update(HOME=str(home), AWS_CONFIG_FILE=str(home / "config"), AWS_SHARED_CREDENTIALS_FILE=str(home / "creds"),
               AWS_ACCESS_KEY_ID="local-admin", AWS_SECRET_ACCESS_KEY=gateway.admin_secret, AWS_MAX_ATTEMPTS="1")
    done = subprocess.run([sys.executable, "-m", "awscli", "lambda", *args, "--endpoint-url", gateway.url,
                           "--region", REGION, "--output", "json"], capture_output=True, text=True, env=env,
                          cwd=home, timeout=90)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout) if done.stdout.strip() else None


def test_the_aws_cli_lists_and_gets_functions(gateway: Gateway, tmp_path: Path) -> None:
    listed = aws_cli(gateway, tmp_path, "list-functions")
    assert [f["FunctionName"] for f in listed["Functions"]] == sorted(names(gateway))
    got = aws_cli(gateway, tmp_path, "get-function", "--function-name", "plain", "--qualifier", "1")
    assert got["Configuration"]["Version"] == "1"
    download = httpx.get(got["Code"]["Location"], timeout=10)
    assert base64.b64encode(hashlib.sha256(download.content).digest()).decode() == got["Configuration"]["CodeSha256"]
