"""The Lambda control plane over the AWS API, the writes of functions: CreateFunction, UpdateFunctionCode,
UpdateFunctionConfiguration, DeleteFunction, PublishVersion, CreateAlias, UpdateAlias, DeleteAlias.

They write the catalog that `lambent deploy` writes, with Lambda's version model: CreateFunction and the updates
change $LATEST, `Publish` and PublishVersion freeze it as the next number, aliases point at published versions (or
$LATEST). As `lambent deploy` does, a write is checked before it is stored (the zip's limits, the handler
imports, requirements.txt installs): a refused write changes nothing. Configuration that the zip's function.yaml
gives is the starting point of CreateFunction; UpdateFunctionCode keeps the configuration, as on AWS.
"""

from __future__ import annotations

import base64
import binascii
import platform
import re
from typing import Any, Callable

from fastapi import APIRouter, Request, Response

from ...functions.catalog import LATEST, Change, InUse, NotFound, Version
from ...functions.deps import DepsError
from ...functions.spec import ALIAS_RE, NAME_RE, FunctionSpec
from ...functions.package import CodeError, Package
from ...wiring import GatewayServices
from ...wiring import deploy as pipeline
from ..common import request_id, services
from .shared import (JSON_BODY_LIMIT, ApiError, FunctionRef, Published, alias_shapes, answer, conflict,
                     function_arn, function_ref, invalid, json_body, not_found, resolve, spec_of, typed, violation)
from .shapes import for_request, revision_id
from .tags import checked_tags

router = APIRouter(tags=["AWS Lambda API"])

_HOST_ARCHITECTURE = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}.get(
    platform.machine().lower(), "x86_64")
# Parameters of Lambda that Lambent has nothing for, and what to do instead. A value that asks for nothing (an
# empty VpcConfig, as some tools send) passes.
_UNSUPPORTED = {
    "VpcConfig": "a sandbox reaches the server's own networks (function.yaml's `network: none` cuts it off)",
    "Layers": "put dependencies in the zip or in requirements.txt, which Lambent installs",
    "DeadLetterConfig": "give PutFunctionEventInvokeConfig an OnFailure destination instead",
    "KMSKeyArn": "environment variables are stored as given", "FileSystemConfigs": "there is no EFS",
    "ImageConfig": "Lambent runs zips, not images", "CodeSigningConfigArn": "code is not signed",
    "PublishTo": "there are no capacity providers", "TenancyConfig": "every sandbox is a jail of its own",
    "CapacityProviderConfig": "there are no capacity providers", "DurableConfig": "there are no durable functions",
    "AcceleratorConfig": "there are no accelerators", "S3ObjectStorageMode": "there is no S3",
    "SourceKMSKeyArn": "code is stored as given",
}
_RUNTIME = re.compile(r"^python3\.\d+$")
_ROLE = re.compile(r"^arn:(aws[a-zA-Z-]*)?:iam::\d{12}:role/?[a-zA-Z_0-9+=,.@\-_/]+$")


# -- what a request asks for ----------------------------------------------------------------


def _empty(value: Any) -> bool:
    if isinstance(value, dict):
        return all(_empty(item) for item in value.values())
    return value in (None, "", [], False)


def _refuse_unsupported(body: dict[str, Any]) -> None:
    for field, instead in _UNSUPPORTED.items():
        if not _empty(body.get(field)):
            raise invalid(f"Lambent does not support {field}: {instead}")
    tracing = typed(body, "TracingConfig", dict, "tracingConfig") or {}
    if tracing.get("Mode", "PassThrough") != "PassThrough":
        raise invalid("Lambent does not support TracingConfig Mode Active: there is no X-Ray; trace headers pass "
                      "through to the function (PassThrough)")
    if (typed(body, "SnapStart", dict, "snapStart") or {}).get("ApplyOn", "None") != "None":
        raise invalid("Lambent does not support SnapStart: its cold starts are a fresh import (see README)")
    if body.get("PackageType", "Zip") != "Zip":
        raise invalid("Lambent runs zip packages only (PackageType Zip)")
    architectures = typed(body, "Architectures", list, "architectures")
    if architectures is not None and architectures != [_HOST_ARCHITECTURE]:
        raise invalid(f"This server runs {_HOST_ARCHITECTURE} only: give Architectures [\"{_HOST_ARCHITECTURE}\"] "
                      "or leave it out")
    runtime = typed(body, "Runtime", str, "runtime")
    if runtime is not None and not _RUNTIME.match(runtime):
        raise invalid(f"The runtime parameter of {runtime} is not supported by Lambent: it runs Python functions "
                      "(python3.x; the sandboxes run the server's Python)")
    role = typed(body, "Role", str, "role")
    if role is not None and not _ROLE.match(role):
        raise violation(role, "role", "Member must satisfy regular expression pattern: "
                                      r"arn:(aws[a-zA-Z-]*)?:iam::\d{12}:role/?[a-zA-Z_0-9+=,.@\-_/]+")


def _configure(data: dict[str, Any], body: dict[str, Any], name: str) -> dict[str, Any]:
    """function.yaml's fields (JSON) with the configuration parameters of the request applied."""
    data = dict(data)
    handler = typed(body, "Handler", str, "handler")
    if handler is not None:
        if len(handler) > 128 or not re.fullmatch(r"[^\s]+", handler):
            raise violation(handler, "handler", r"Member must satisfy regular expression pattern: [^\s]+")
        data["handler"] = handler
    description = typed(body, "Description", str, "description")
    if description is not None:
        if len(description) > 256:
            raise violation(description, "description", "Member must have length less than or equal to 256")
        data["description"] = description
    timeout = typed(body, "Timeout", int, "timeout")
    if timeout is not None:
        if timeout < 1:
            raise violation(timeout, "timeout", "Member must have value greater than or equal to 1")
        data["timeout"] = timeout
    memory = typed(body, "MemorySize", int, "memorySize")
    if memory is not None:
        if not 128 <= memory <= 10240:
            raise invalid(f"'MemorySize' value failed to satisfy constraint: Member must have value between 128 "
                          f"and 10240 (given {memory})")
        data["memory_mb"] = memory
    if "Environment" in body:
        environment = typed(body, "Environment", dict, "environment") or {}
        variables = environment.get("Variables") or {}
        if not isinstance(variables, dict) or not all(isinstance(value, str) for value in variables.values()):
            raise invalid("Environment.Variables must map names to string values")
        data["environment"] = variables
    storage = typed(body, "EphemeralStorage", dict, "ephemeralStorage")
    if storage is not None:
        size = storage.get("Size")
        if not isinstance(size, int) or isinstance(size, bool) or not 512 <= size <= 10240:
            raise violation(size, "ephemeralStorage.size", "Member must have value between 512 and 10240")
        data["ephemeral_storage_mb"] = size
    logging = typed(body, "LoggingConfig", dict, "loggingConfig")
    if logging is not None:
        data["logging_config"] = _logging(data.get("logging_config") or {}, logging, name)
    return data


def _logging(current: dict[str, Any], given: dict[str, Any], name: str) -> dict[str, Any]:
    """Lambda's LoggingConfig over function.yaml's logging_config: the given fields replace theirs; Text drops
    the levels (Lambda keeps levels for JSON only)."""
    if given.get("LogGroup") not in (None, f"/aws/lambda/{name}"):
        raise invalid("Lambent keeps each function's logs itself (lambent logs, GetFunction's LogGroup "
                      "/aws/lambda/NAME): a custom LogGroup is not supported")
    merged = dict(current)
    for field, key in (("LogFormat", "log_format"), ("ApplicationLogLevel", "application_log_level"),
                       ("SystemLogLevel", "system_log_level")):
        if given.get(field) is not None:
            merged[key] = given[field]
    if merged.get("log_format", "Text") == "Text":
        merged.pop("application_log_level", None)
        merged.pop("system_log_level", None)
    return merged


def _zip_of(body: dict[str, Any]) -> bytes:
    """Code.ZipFile (UpdateFunctionCode: ZipFile), which botocore sends as base64."""
    code = body.get("Code", body)
    if not isinstance(code, dict):
        raise violation(code, "code", "Member must be a structure")
    if code.get("S3Bucket") or code.get("S3Key"):
        raise invalid("Lambent has no S3: send the zip itself (ZipFile, or `--zip-file fileb://function.zip`)")
    if code.get("ImageUri"):
        raise invalid("Lambent runs zips, not images: send ZipFile")
    raw = code.get("ZipFile")
    if not isinstance(raw, str) or not raw:
        raise invalid("Please provide a source for function code: the zip (ZipFile)")
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise invalid("ZipFile is not base64 (botocore encodes the zip's bytes so)") from None


def _body_limit(svc: GatewayServices) -> int:
    return svc.config.deploy.zipped_limit_bytes * 4 // 3 + JSON_BODY_LIMIT      # the zip in base64, and the rest


def _unqualified_name(svc: GatewayServices, body: dict[str, Any]) -> str:
    name = body.get("FunctionName")
    if not isinstance(name, str):
        raise violation(name, "functionName", "Member must not be null")
    ref = function_ref(svc, name, max_length=140)
    if ref.qualifier is not None:
        raise invalid("Qualifiers are not allowed in the function name of CreateFunction: publish versions with "
                      "Publish or PublishVersion")
    if not NAME_RE.match(ref.name):
        raise violation(ref.name, "functionName", "Member must satisfy regular expression pattern: "
                                                  "[a-zA-Z0-9-_]+ (Lambent's names have no dots)")
    return ref.name


# -- checks before a write ------------------------------------------------------------------


async def _package(svc: GatewayServices, zip_bytes: bytes, configure: Callable[[FunctionSpec], FunctionSpec]
                   ) -> Package:
    """The checked zip with the configuration `configure(its function.yaml)` gives."""
    limit = pipeline.limits(svc.config).zipped_bytes
    if len(zip_bytes) > limit:
        raise ApiError(413, "RequestEntityTooLargeException", f"Zipped file size {len(zip_bytes)} exceeds the "
                       f"server's limit of {limit} bytes (deploy.zipped_limit_bytes)")
    try:
        return await pipeline.checked(svc.config, zip_bytes, configure=configure)
    except CodeError as exc:
        raise invalid(f"Could not use the uploaded zip: {exc}") from None


async def _trial(svc: GatewayServices, name: str, package: Package) -> None:
    """The handler imports with this code and configuration (as `lambent deploy` checks); InvalidParameterValue
    otherwise, so that no $LATEST is stored that could not start."""
    try:
        await pipeline.trial(svc.executor, name, package)
    except DepsError as exc:
        raise invalid(f"pip could not install requirements.txt: {exc}") from None
    except CodeError as exc:
        raise invalid(f"Could not use the uploaded zip: {exc}") from None
    except pipeline.InitFailed as exc:
        raise invalid(f"The handler does not import: {exc.error['errorType']}: {exc.error['errorMessage']}"
                      ) from None


async def _stored_zip(svc: GatewayServices, version: Version) -> bytes:
    blob = await svc.catalog.code_zip(version.code_hash)
    if blob is None:
        raise ApiError(500, "ServiceException", f"the code {version.code_hash[:12]} of {version.function} is missing "
                                                "from Redis: deploy the function again")
    return blob


def _same_revision(svc: GatewayServices, body: dict[str, Any]) -> Callable[[Version], None]:
    """A check of RevisionId (when given) against $LATEST, as Lambda's PreconditionFailedException."""
    wanted = typed(body, "RevisionId", str, "revisionId")

    def check(current: Version) -> None:
        if wanted is not None and wanted != revision_id(Published(version=current)):
            raise ApiError(412, "PreconditionFailedException", "The Revision Id provided does not match the latest "
                           "Revision Id. Call the GetFunction/GetAlias API to retrieve the latest Revision Id")
    return check


def _of_latest(svc: GatewayServices, function_name: str, operation: str) -> FunctionRef:
    """The FunctionName of an operation on $LATEST: a version or alias is refused."""
    ref = function_ref(svc, function_name, max_length=140)
    if ref.qualifier is not None:
        raise invalid(f"{operation} $LATEST: give the function's name or unqualified ARN")
    return ref


def _existing(svc: GatewayServices, name: str) -> Version:
    current = svc.catalog.latest(name)
    if current is None:
        raise not_found(f"Function not found: {function_arn(svc, name)}")
    return current


def _no_content(request: Request) -> Response:
    return Response(status_code=204, headers={"x-amzn-RequestId": request_id(request)})


async def _configuration(request: Request, version: Version, *, status: int = 200) -> Response:
    shapes = await for_request(request, [version])
    item = Published(version=version)
    return answer(request, shapes.configuration(item, arn_qualifier=None if version.is_latest else version.label),
                  status)


# -- functions ------------------------------------------------------------------------------


@router.post("/2015-03-31/functions", summary="CreateFunction")
async def create_function(request: Request) -> Response:
    svc = services(request)
    body = await json_body(request, limit=_body_limit(svc))
    name = _unqualified_name(svc, body)
    _refuse_unsupported(body)
    tags = checked_tags(typed(body, "Tags", dict, "tags") or {})
    publish = bool(typed(body, "Publish", bool, "publish"))
    exists = conflict(f"Function already exist: {name}")
    if svc.catalog.latest(name) is not None:
        raise exists                   # before the upload is unpacked and tried
    package = await _package(svc, _zip_of(body), lambda spec: spec_of(_configure(spec.to_json(), body, name)))
    await _trial(svc, name, package)

    def create(current: Version | None) -> Change:
        if current is not None:
            raise exists
        return Change.of(package)

    result = await svc.catalog.write(name, create, publish=publish)
    if tags:
        await svc.catalog.tag(name, tags)
    return await _configuration(request, result.version or result.latest, status=201)


@router.put("/2015-03-31/functions/{function_name}/code", summary="UpdateFunctionCode")
async def update_function_code(function_name: str, request: Request) -> Response:
    svc = services(request)
    ref = _of_latest(svc, function_name, "UpdateFunctionCode changes")
    body = await json_body(request, limit=_body_limit(svc))
    _refuse_unsupported({key: body.get(key) for key in ("Architectures", "S3ObjectStorageMode", "SourceKMSKeyArn",
                                                        "PublishTo")})
    check = _same_revision(svc, body)
    check(_existing(svc, ref.name))
    current = _existing(svc, ref.name)
    # The configuration stays what it is, as on AWS (function.yaml in the zip is read by CreateFunction and
    # `lambent deploy`, not here).
    package = await _package(svc, _zip_of(body), lambda _zipped: current.spec)
    await _trial(svc, ref.name, package)
    if typed(body, "DryRun", bool, "dryRun"):
        return await _configuration(request, Version(function=ref.name, number=0, code_hash=package.code_hash,
                                                     spec=current.spec, created=current.created,
                                                     revision=current.revision))

    def update(now: Version | None) -> Change:
        if now is None:
            raise not_found(f"Function not found: {function_arn(svc, ref.name)}")
        check(now)
        return Change(code_hash=package.code_hash, spec=now.spec, zip_bytes=package.zip_bytes)

    result = await svc.catalog.write(ref.name, update, publish=bool(typed(body, "Publish", bool, "publish")))
    return await _configuration(request, result.version or result.latest)


@router.put("/2015-03-31/functions/{function_name}/configuration", summary="UpdateFunctionConfiguration")
async def update_function_configuration(function_name: str, request: Request) -> Response:
    svc = services(request)
    ref = _of_latest(svc, function_name, "UpdateFunctionConfiguration changes")
    body = await json_body(request)
    _refuse_unsupported(body)
    check = _same_revision(svc, body)
    current = _existing(svc, ref.name)
    check(current)
    spec = spec_of(_configure(current.spec.to_json(), body, ref.name))
    if (spec.handler, spec.environment) != (current.spec.handler, current.spec.environment):
        # What the import depends on changed: try it before $LATEST says so.
        await _trial(svc, ref.name, Package(zip_bytes=await _stored_zip(svc, current), code_hash=current.code_hash,
                                            spec=spec))

    def update(now: Version | None) -> Change:
        if now is None:
            raise not_found(f"Function not found: {function_arn(svc, ref.name)}")
        check(now)
        return Change(code_hash=now.code_hash, spec=spec_of(_configure(now.spec.to_json(), body, ref.name)))

    result = await svc.catalog.write(ref.name, update)
    return await _configuration(request, result.latest)


@router.delete("/2015-03-31/functions/{function_name}", summary="DeleteFunction")
async def delete_function(function_name: str, request: Request) -> Response:
    svc = services(request)
    ref = function_ref(svc, function_name, request.query_params.get("Qualifier"), max_length=140)
    if ref.qualifier is None:
        if not await svc.catalog.delete(ref.name):
            raise not_found(f"Function not found: {function_arn(svc, ref.name)}")
        return _no_content(request)
    if ref.qualifier == LATEST:
        raise invalid("$LATEST version cannot be deleted without deleting the function.")
    if not ref.qualifier.isdigit():
        raise invalid("Deletion of aliases is not supported: call DeleteAlias")
    try:
        await svc.catalog.delete_version(ref.name, int(ref.qualifier))
    except NotFound:
        raise not_found(f"Function not found: {function_arn(svc, ref.name, ref.qualifier)}") from None
    except InUse as exc:
        raise conflict(str(exc)) from None
    return _no_content(request)


@router.post("/2015-03-31/functions/{function_name}/versions", summary="PublishVersion")
async def publish_version(function_name: str, request: Request) -> Response:
    svc = services(request)
    ref = _of_latest(svc, function_name, "PublishVersion publishes")
    body = await json_body(request)
    revision = _same_revision(svc, body)
    code_sha = typed(body, "CodeSha256", str, "codeSha256")

    def check(current: Version) -> None:
        revision(current)
        if code_sha is not None and code_sha != base64.b64encode(bytes.fromhex(current.code_hash)).decode():
            raise invalid(f"CodeSHA256 ({code_sha}) is different from current CodeSHA256 in $LATEST. Please try "
                          "again with the CodeSHA256 in $LATEST.")

    try:
        result = await svc.catalog.publish(ref.name, check)
    except NotFound:
        raise not_found(f"Function not found: {function_arn(svc, ref.name)}") from None
    assert result.version is not None
    return await _configuration(request, result.version, status=201)


# -- aliases --------------------------------------------------------------------------------


def _version_number(value: Any) -> int:
    """FunctionVersion of an alias: a published number, or $LATEST (0)."""
    if value == LATEST:
        return 0
    if not isinstance(value, str) or not value.isdigit() or len(value) > 1024:
        raise violation(value, "functionVersion", r"Member must satisfy regular expression pattern: "
                                                  r"(\$(LATEST|LATEST\.PUBLISHED)|[0-9]+)")
    return int(value)


def _alias_name(value: Any) -> str:
    if not isinstance(value, str) or not ALIAS_RE.match(value) or value.isdigit():
        raise violation(value, "name", "Member must satisfy regular expression pattern: (?!^[0-9]+$)([a-zA-Z0-9-_]+)")
    return value


def _refuse_routing(body: dict[str, Any]) -> None:
    routing = typed(body, "RoutingConfig", dict, "routingConfig") or {}
    if routing.get("AdditionalVersionWeights"):
        raise invalid("Lambent's aliases point at one version: weighted aliases (RoutingConfig) are not supported")


async def _alias_answer(request: Request, name: str, alias: str, *, status: int = 200) -> Response:
    svc = services(request)
    shapes = await for_request(request, ())
    return answer(request, (await alias_shapes(svc, shapes, name, [alias]))[0], status)


async def _set_alias(svc: GatewayServices, ref: FunctionRef, alias: str, number: int, description: str | None,
                     check: Callable[[int | None], None]) -> None:
    try:
        await svc.catalog.set_alias(ref.name, alias, number, check, description=description)
    except NotFound:
        missing = function_arn(svc, ref.name, None if number == 0 else str(number))
        raise not_found(f"Function not found: {missing}") from None


@router.post("/2015-03-31/functions/{function_name}/aliases", summary="CreateAlias")
async def create_alias(function_name: str, request: Request) -> Response:
    svc = services(request)
    ref = function_ref(svc, function_name, max_length=140)
    body = await json_body(request)
    alias = _alias_name(body.get("Name"))
    number = _version_number(body.get("FunctionVersion"))
    _refuse_routing(body)
    await resolve(svc, FunctionRef(name=ref.name, qualifier=None))

    def absent(now: int | None) -> None:
        if now is not None:
            raise conflict(f"Alias already exists: {function_arn(svc, ref.name, alias)}")

    await _set_alias(svc, ref, alias, number, typed(body, "Description", str, "description"), absent)
    return await _alias_answer(request, ref.name, alias, status=201)


@router.put("/2015-03-31/functions/{function_name}/aliases/{alias}", summary="UpdateAlias")
async def update_alias(function_name: str, alias: str, request: Request) -> Response:
    svc = services(request)
    ref = function_ref(svc, function_name, max_length=140)
    alias = _alias_name(alias)
    body = await json_body(request)
    _refuse_routing(body)
    await resolve(svc, FunctionRef(name=ref.name, qualifier=None))
    given = body.get("FunctionVersion")
    missing = not_found(f"Cannot find alias arn: {function_arn(svc, ref.name, alias)}")
    now = svc.catalog.aliases(ref.name).get(alias)
    if now is None:
        raise missing
    wanted = typed(body, "RevisionId", str, "revisionId")
    if wanted is not None:
        shown = (await alias_shapes(svc, await for_request(request, ()), ref.name, [alias]))[0]
        if wanted != shown["RevisionId"]:
            raise ApiError(412, "PreconditionFailedException", "The Revision Id provided does not match the latest "
                           "Revision Id. Call the GetFunction/GetAlias API to retrieve the latest Revision Id")

    def present(current: int | None) -> None:
        if current is None:
            raise missing

    number = now if given is None else _version_number(given)
    await _set_alias(svc, ref, alias, number, typed(body, "Description", str, "description"), present)
    return await _alias_answer(request, ref.name, alias)


@router.delete("/2015-03-31/functions/{function_name}/aliases/{alias}", summary="DeleteAlias")
async def delete_alias(function_name: str, alias: str, request: Request) -> Response:
    svc = services(request)
    ref = function_ref(svc, function_name, max_length=140)
    alias = _alias_name(alias)
    await resolve(svc, FunctionRef(name=ref.name, qualifier=None))
    if not await svc.catalog.delete_alias(ref.name, alias):
        raise not_found(f"Cannot find alias arn: {function_arn(svc, ref.name, alias)}")
    return _no_content(request)
