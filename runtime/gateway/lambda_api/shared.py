"""What the Lambda control-plane routes share: AWS's errors, function names and ARNs, paging, and the one place
where Lambent's versions are mapped onto Lambda's ($LATEST and published versions).

Errors are those the Lambda service answers, checked against AWS-recorded responses: a value that breaks the
API model's constraints (pattern, length, range, enum) is `ValidationException` with AWS's "1 validation error
detected: ..." message; a value that is well-formed but wrong is `InvalidParameterValueException`.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterable, TypeVar

import orjson
from fastapi import Request, Response

from ...functions.catalog import LATEST, Change, NotFound, Version
from ...functions.spec import QUALIFIER_RE, FunctionSpec, SpecError
from ...wiring import GatewayServices
from ..common import read_body, request_id
from ..errors import BodyTooLarge, aws_error

T = TypeVar("T")

# The model's pattern of a function name or ARN, as AWS quotes it in its ValidationException messages.
FUNCTION_NAME_PATTERN = (r"(arn:(aws[a-zA-Z-]*)?:lambda:)?((eusc-)?[a-z]{2}((-gov)|(-iso([a-z]?)))?-[a-z]+-\d{1}:)?"
                         r"(\d{12}:)?(function:)?([a-zA-Z0-9-_\.]+)(:(\$LATEST(\.PUBLISHED)?|[a-zA-Z0-9-_]+))?")
_FUNCTION = re.compile(r"^(?:arn:aws[a-zA-Z-]*:lambda:(?P<region>[a-z0-9-]+):)?(?:(?P<account>\d{12}):)?"
                       r"(?:function:)?(?P<name>[A-Za-z0-9._-]+)(?::(?P<qualifier>[A-Za-z0-9$._-]+))?$")
_QUALIFIER = re.compile(r"^(\$(LATEST(\.PUBLISHED)?)|[a-zA-Z0-9-_$]+)$")
_QUALIFIER_PATTERN = r"\$(LATEST(\.PUBLISHED)?)|[a-zA-Z0-9-_$]+"


class ApiError(Exception):
    """An answer in AWS's error shape: `x-amzn-ErrorType` names the exception, botocore raises it."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def response(self, request: Request) -> Response:
        return aws_error(self.status, self.code, self.message, request_id=request_id(request))


def not_found(message: str) -> ApiError:
    return ApiError(404, "ResourceNotFoundException", message)


def invalid(message: str) -> ApiError:
    return ApiError(400, "InvalidParameterValueException", message)


def violation(value: Any, field: str, constraint: str) -> ApiError:
    """AWS's answer to a value outside the API model's constraints."""
    return ApiError(400, "ValidationException", f"1 validation error detected: Value '{value}' at '{field}' "
                                                f"failed to satisfy constraint: {constraint}")


def answer(request: Request, body: dict[str, Any], status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json",
                    headers={"x-amzn-RequestId": request_id(request)})


def page_answer(request: Request, field: str, items: list[Any], marker: str | None) -> Response:
    """One page of a List operation: `{field: items}`, and `NextMarker` when there is a next page."""
    body: dict[str, Any] = {field: items}
    if marker:
        body["NextMarker"] = marker
    return answer(request, body)


def conflict(message: str) -> ApiError:
    return ApiError(409, "ResourceConflictException", message)


# -- request bodies -------------------------------------------------------------------------

JSON_BODY_LIMIT = 1024 * 1024      # every write but CreateFunction / UpdateFunctionCode (they carry a zip)


async def json_body(request: Request, *, limit: int = JSON_BODY_LIMIT) -> dict[str, Any]:
    """The request's JSON object ({} when empty); AWS's errors for one too large or not a JSON object."""
    try:
        raw = await read_body(request, limit)
    except BodyTooLarge as exc:
        raise ApiError(413, "RequestTooLargeException", f"Request must be smaller than {exc.limit} bytes for "
                                                        "this operation") from None
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "InvalidRequestContentException", f"Could not parse request body into json: {exc}"
                       ) from None
    if not isinstance(body, dict):
        raise ApiError(400, "InvalidRequestContentException", "The request body must be a JSON object")
    return body


def typed(body: dict[str, Any], field: str, kind: type | tuple[type, ...], member: str) -> Any:
    """body[field] when absent (None) or of `kind`; otherwise AWS's SerializationException-like answer."""
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise violation(value, member, f"Member must be of type {getattr(kind, '__name__', kind)}")
    return value


# -- destinations ---------------------------------------------------------------------------

_DESTINATION_PATTERN = (r"$|kafka://([^.]([a-zA-Z0-9\-_.]{0,248}))|arn:(aws[a-zA-Z0-9-]*):([a-zA-Z0-9\-])+:"
                        r"((eusc-)?[a-z]{2}((-gov)|(-iso([a-z]?)))?-[a-z]+-\d{1})?:(\d{12})?:(.*)")
_DESTINATION = re.compile(_DESTINATION_PATTERN)
_DESTINATION_TOPIC = re.compile(r"^kafka://(?P<topic>[^.][a-zA-Z0-9\-_.]{0,248})$")
_DESTINATION_FUNCTION = re.compile(r"^arn:aws[a-zA-Z-]*:lambda:(?P<region>[a-z0-9-]+):(?P<account>\d{12}):function:"
                                   r"(?P<function>[A-Za-z0-9_-]+(?::[A-Za-z0-9$_-]+)?)$")
_DESTINATION_SNS = re.compile(r"^arn:aws[a-zA-Z-]*:sns:(?P<region>[a-z0-9-]+):(?P<account>\d{12}):"
                              r"(?P<topic>[A-Za-z0-9_-]{1,256}(\.fifo)?)$")


def destination_of(value: Any, member: str) -> dict[str, str] | None:
    """{"Destination": ARN} (an event invoke config's OnSuccess / OnFailure, a mapping's OnFailure) -> function.yaml's
    destination: a Lambda function by its ARN (`function: name[:qualifier]`), a Kafka topic (`kafka://topic` ->
    `topic`) or a topic of the gateway's SNS API by its ARN (`sns: name`); None for no destination."""
    target = value.get("Destination") if isinstance(value, dict) else None
    if target is None or target == "":
        return None
    if not isinstance(target, str):
        raise violation(target, f"{member}.destination", "Member must be of type string")
    if len(target) > 350:
        raise violation(target, f"{member}.destination", "Member must have length less than or equal to 350")
    if not _DESTINATION.fullmatch(target):
        raise violation(target, f"{member}.destination",
                        f"Member must satisfy regular expression pattern: {_DESTINATION_PATTERN}")
    if (topic := _DESTINATION_TOPIC.match(target)) is not None:
        return {"topic": topic["topic"]}
    if (function := _DESTINATION_FUNCTION.match(target)) is not None:
        return {"function": function["function"]}
    if (sns := _DESTINATION_SNS.match(target)) is not None:
        return {"sns": sns["topic"]}
    raise invalid(f"Lambent supports function, SNS topic and kafka:// destinations only: give a Lambda function's "
                  f"ARN (arn:aws:lambda:REGION:ACCOUNT:function:NAME), a topic's ARN (arn:aws:sns:REGION:ACCOUNT:NAME, "
                  f"a topic of the gateway's SNS API) or kafka://topic (a topic of the server's own Kafka); {target} "
                  f"is none of them (SQS, EventBridge and S3 destinations are not supported)")


# -- changing $LATEST -----------------------------------------------------------------------


def spec_of(data: dict[str, Any]) -> FunctionSpec:
    """function.yaml's fields (JSON, as FunctionSpec.to_json gives them) -> a checked FunctionSpec;
    InvalidParameterValueException saying what is wrong otherwise."""
    try:
        return FunctionSpec.from_json(data, source="the request")
    except SpecError as exc:
        raise invalid(str(exc)) from None


async def edit_latest(svc: GatewayServices, name: str, edit: Callable[[dict[str, Any]], dict[str, Any]]) -> Version:
    """Change $LATEST's configuration: `edit` gets function.yaml's fields as JSON and returns the new ones (it may
    raise ApiError), called under the function's lock. Every node then serves the change (its schedules,
    consumers and URL too). ResourceNotFoundException without the function."""
    def change(current: Version | None) -> Change:
        if current is None:
            raise not_found(f"Function not found: {function_arn(svc, name)}")
        return Change(code_hash=current.code_hash, spec=spec_of(edit(current.spec.to_json())))

    return (await svc.catalog.write(name, change)).latest


# -- function names and ARNs ----------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class FunctionRef:
    """A FunctionName parameter, taken apart: the name, and the qualifier the caller wrote (inline or apart)."""
    name: str
    qualifier: str | None

    @property
    def label(self) -> str:
        return self.qualifier or LATEST


def function_ref(svc: GatewayServices, value: str, qualifier: str | None = None, *, max_length: int = 256
                 ) -> FunctionRef:
    """Name, `name:qualifier`, partial or full ARN (+ a Qualifier parameter) -> FunctionRef, checked as Lambda
    checks it; ApiError otherwise."""
    if len(value) > max_length:
        raise violation(value, "functionName", f"Member must have length less than or equal to {max_length}")
    match = _FUNCTION.match(value)
    if match is None:
        raise violation(value, "functionName", f"Member must satisfy regular expression pattern: "
                                               f"{FUNCTION_NAME_PATTERN}")
    if len(match["name"]) > 64:
        raise invalid(f"1 validation error detected: Value '{match['name']}' at 'functionName' failed to satisfy "
                      "constraint: Member must have length less than or equal to 64")
    config = svc.config
    if match["region"] and match["region"] != config.region:
        raise not_found(f"Functions from '{match['region']}' are not reachable in this region ('{config.region}')")
    if match["account"] and match["account"] != config.account_id:
        raise ApiError(403, "AccessDeniedException", f"Account {match['account']} is not this server's account "
                                                     f"({config.account_id}): its functions are not reachable here")
    if qualifier is not None and (len(qualifier) > 128 or not _QUALIFIER.match(qualifier)):
        raise violation(qualifier, "qualifier", f"Member must satisfy regular expression pattern: "
                                                f"{_QUALIFIER_PATTERN}")
    inline = match["qualifier"]
    if inline and qualifier and inline != qualifier:
        raise invalid("The derived qualifier from the function name does not match the specified qualifier.")
    return FunctionRef(name=match["name"], qualifier=inline or qualifier)


def function_arn(svc: GatewayServices, name: str, qualifier: str | None = None) -> str:
    base = f"arn:aws:lambda:{svc.config.region}:{svc.config.account_id}:function:{name}"
    return f"{base}:{qualifier}" if qualifier else base


def unqualified(ref: FunctionRef) -> None:
    """Operations on the function itself (its concurrency) refuse a version or an alias."""
    if ref.qualifier is not None:
        raise invalid("This operation is permitted on Lambda functions only. Aliases and versions do not support "
                      "this operation. Please specify either a function name or an unqualified function ARN.")


# -- the version model ----------------------------------------------------------------------
# Lambent's catalog has Lambda's model (functions/catalog.py): $LATEST is what a deploy or an update writes, and
# the numbered versions are published from it, frozen.


@dataclass(frozen=True, kw_only=True)
class Published:
    """One of a function's versions as Lambda names it: `label` is "$LATEST" or the version number."""
    version: Version

    @property
    def label(self) -> str:
        return self.version.label

    @property
    def key(self) -> str:
        """Sorts as ListVersionsByFunction lists: $LATEST first, then by number."""
        return f"{self.version.number:010d}"


def latest(svc: GatewayServices, name: str) -> Published | None:
    """$LATEST from this node's catalog (no Redis), or None when there is no such function."""
    version = svc.catalog.latest(name)
    return Published(version=version) if version is not None else None


async def resolve(svc: GatewayServices, ref: FunctionRef) -> Published:
    """The version a qualifier ($LATEST, a number, an alias) names; ResourceNotFoundException as Lambda says it."""
    missing = not_found(f"Function not found: {function_arn(svc, ref.name, ref.qualifier)}")
    if not QUALIFIER_RE.match(ref.label):
        raise missing          # well-formed for the API, but no qualifier Lambent has ($LATEST.PUBLISHED, a$b)
    try:
        target = await svc.catalog.resolve(ref.name, ref.label)
    except NotFound:
        raise missing from None
    return Published(version=target.version)


async def versions(svc: GatewayServices, name: str) -> list[Published]:
    """$LATEST, then every published version by number (ListVersionsByFunction's order)."""
    head = latest(svc, name)
    if head is None:
        head = await resolve(svc, FunctionRef(name=name, qualifier=None))     # another node may have it already
    numbered = await svc.catalog.list_versions(name)
    return [head, *(Published(version=version) for version in numbered)]


async def alias_shapes(svc: GatewayServices, shapes: Any, name: str, aliases: Iterable[str]) -> list[dict[str, Any]]:
    """AliasConfiguration of each alias (in the order given), with its description, read in one round trip."""
    described = await svc.catalog.described_aliases(name)
    found = []
    for alias in aliases:
        number, description = described[alias].number, described[alias].description
        found.append({"AliasArn": shapes.arn(name, alias), "Name": alias,
                      "FunctionVersion": LATEST if number == 0 else str(number), "Description": description,
                      "RevisionId": stable_id(f"alias:{name}:{alias}:{number}:{description}")})
    return found


_IDS = uuid.UUID("5f0c6f7e-7d55-4d43-9a59-6b2c1d0a9e13")   # the namespace of Lambent's stable AWS ids (uuid5)


def stable_id(name: str) -> str:
    return str(uuid.uuid5(_IDS, name))


# -- paging ---------------------------------------------------------------------------------


def max_items(request: Request, *, limit: int) -> int | None:
    """The MaxItems parameter (1..limit, as the model says), or None when not given."""
    raw = request.query_params.get("MaxItems")
    if raw is None:
        return None
    if not raw.lstrip("-").isdigit():
        raise violation(raw, "maxItems", "Member must be a number")
    value = int(raw)
    if value < 1:
        raise violation(value, "maxItems", "Member must have value greater than or equal to 1")
    if value > limit:
        raise violation(value, "maxItems", f"Member must have value less than or equal to {limit}")
    return value


def marker_key(request: Request) -> str:
    """The position a Marker stands for ("" without one). A marker is the key of the first item of its page."""
    raw = request.query_params.get("Marker")
    if not raw:
        return ""
    try:
        return base64.urlsafe_b64decode(raw.encode() + b"=" * (-len(raw) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise invalid(f"Invalid marker: {raw}") from None


def page(items: Iterable[T], key: Callable[[T], str], *, start: str, size: int) -> tuple[list[T], str | None]:
    """Up to `size` items from `start` (items come in the order of their keys), and the next page's marker."""
    out: list[T] = []
    for item in items:
        item_key = key(item)
        if item_key < start:
            continue
        if len(out) == size:
            return out, base64.urlsafe_b64encode(item_key.encode()).decode().rstrip("=")
        out.append(item)
    return out, None


def mapping_numbers(body: dict[str, Any], numbers: tuple[tuple[str, str, str, int, int], ...]) -> dict[str, Any]:
    """The numbers an event source mapping's request sets, as function.yaml names them: `numbers` holds (request
    field, function.yaml key, model member, low, high); out of range is AWS's ValidationException."""
    found: dict[str, Any] = {}
    for field, key, member, low, high in numbers:
        value = typed(body, field, int, member)
        if value is not None:
            found[key] = in_range(value, member, low, high)
    return found


def in_range(value: int, member: str, low: int, high: int) -> int:
    """`value`, refused as AWS's ValidationException when it is outside low..high."""
    if value < low:
        raise violation(value, member, f"Member must have value greater than or equal to {low}")
    if value > high:
        raise violation(value, member, f"Member must have value less than or equal to {high}")
    return value


async def mapped_qualifier(svc: GatewayServices, body: dict[str, Any], name: str, mapping: str,
                           instead: str) -> str | None:
    """The qualifier that UpdateEventSourceMapping's FunctionName names (None when the request has none); a
    mapping cannot move to another function (`instead` ends the message: how to do it anyway)."""
    named = typed(body, "FunctionName", str, "functionName")
    if named is None:
        return None
    ref = function_ref(svc, named)
    if ref.name != name:
        raise invalid(f"Lambent's mapping {mapping} is an event of {name} and cannot move to {ref.name}: "
                      f"delete it and create one on {ref.name}{instead}")
    await resolve(svc, ref)
    return ref.label


def report_batch_item_failures(body: dict[str, Any]) -> bool | None:
    """FunctionResponseTypes: whether the mapping reads batchItemFailures; None when the request leaves it."""
    responses = typed(body, "FunctionResponseTypes", list, "functionResponseTypes")
    if responses is None:
        return None
    if any(kind != "ReportBatchItemFailures" for kind in responses) or len(responses) > 1:
        raise violation(responses, "functionResponseTypes", "Member must satisfy constraint: [Member must satisfy "
                        "enum value set: [ReportBatchItemFailures]]")
    return bool(responses)
