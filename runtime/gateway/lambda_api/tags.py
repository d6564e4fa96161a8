"""The Lambda control plane over the AWS API, tags: ListTags, TagResource, UntagResource.

Tags belong to a function (catalog.tags), not to its versions or aliases, as on Lambda; Lambent's event source
mappings are events in function.yaml and carry none.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from fastapi import APIRouter, Request, Response

from ...functions.catalog import NotFound
from ...wiring import GatewayServices
from ..common import services
from .sources import mappings
from .shared import FunctionRef, answer, invalid, json_body, not_found, resolve, typed, violation

router = APIRouter(tags=["AWS Lambda API"])

# ListTags' Resource, as the model's TaggableResource pattern (quoted in its ValidationException).
_TAGGABLE_PATTERN = (r"arn:(aws[a-zA-Z-]*):lambda:(eusc-)?[a-z]{2}((-gov)|(-iso([a-z]?)))?-[a-z]+-\d{1}:\d{12}:"
                     r"(function:[a-zA-Z0-9-_]+(:(\$LATEST|[a-zA-Z0-9-_]+))?|code-signing-config:csc-[a-z0-9]{17}|"
                     r"event-source-mapping:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                     r"[0-9a-fA-F]{12}|(capacity-provider|network-connector):[a-zA-Z0-9-_]{1,64})")
_TAGGABLE = re.compile(r"^arn:aws[a-zA-Z-]*:lambda:(?P<region>[a-z0-9-]+):(?P<account>\d{12}):(?:"
                       r"function:(?P<name>[a-zA-Z0-9_-]+)(?::(?P<qualifier>\$LATEST|[a-zA-Z0-9_-]+))?|"
                       r"event-source-mapping:(?P<mapping>[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12})|"
                       r"(?P<other>code-signing-config:csc-[a-z0-9]{17}|"
                       r"(?:capacity-provider|network-connector):[a-zA-Z0-9_-]{1,64}))$")

_TAG_PATTERN = r"([\p{L}\p{Z}\p{N}_.:/=+\-@]*)"
_TAG_PUNCTUATION = frozenset("_.:/=+-@")
MAX_TAGS = 50                # Lambda's limit of tags on one function


async def _tagged(svc: GatewayServices, resource: str) -> str | None:
    """The function a taggable ARN names (None: an event source mapping of Lambent's); ValidationException,
    InvalidParameterValueException or ResourceNotFoundException as Lambda answers for the others."""
    match = _TAGGABLE.match(resource)
    if match is None:
        raise violation(resource, "resource", f"Member must satisfy regular expression pattern: {_TAGGABLE_PATTERN}")
    foreign = match["region"] != svc.config.region or match["account"] != svc.config.account_id
    if match["name"]:
        if match["qualifier"]:
            raise invalid("Tags on function aliases and versions are not supported. Please specify a function ARN.")
        if foreign:
            raise not_found(f"Function not found: {resource}")
        await resolve(svc, FunctionRef(name=match["name"], qualifier=None))
        return str(match["name"])
    if match["mapping"]:
        if foreign or all(mapping.uuid != match["mapping"].lower() for mapping in mappings(svc)):
            raise not_found(f"Event source mapping not found: {resource}")
        return None
    raise not_found("The resource you requested does not exist.")


def _function_only(name: str | None) -> str:
    if name is None:
        raise invalid("Lambent keeps no tags on event source mappings: a mapping is an event of its function's "
                      "function.yaml; tag the function instead")
    return name


def _check_tag(text: Any, member: str, *, low: int, high: int, key: bool = False) -> str:
    """A TagKey or TagValue as the model constrains it (length, and the pattern of letters, separators,
    numbers and _.:/=+-@, which Python's re cannot write as \\p{L})."""
    if not isinstance(text, str):
        raise violation(text, member, "Member must be of type string")
    if len(text) < low:
        raise violation(text, member, f"Member must have length greater than or equal to {low}")
    if len(text) > high:
        raise violation(text, member, f"Member must have length less than or equal to {high}")
    if not all(char in _TAG_PUNCTUATION or unicodedata.category(char)[0] in "LZN" for char in text):
        raise violation(text, member, f"Member must satisfy regular expression pattern: {_TAG_PATTERN}")
    if key and text.lower().startswith("aws:"):
        raise invalid(f"Tag key {text} is not allowed: the prefix aws: is reserved for AWS's own tags")
    return text


def checked_tags(tags: dict[Any, Any]) -> dict[str, str]:
    """Tags as the model and Lambda's limits allow them (TagResource's, CreateFunction's Tags)."""
    for key, value in tags.items():
        _check_tag(key, "tags", low=1, high=128, key=True)
        _check_tag(value, "tags", low=0, high=256)
    if len(tags) > MAX_TAGS:
        raise invalid(f"Number of tags exceeds resource tag limit: a function has at most {MAX_TAGS} tags")
    return tags


@router.get("/2017-03-31/tags/{resource}", summary="ListTags")
async def list_tags(resource: str, request: Request) -> Response:
    """A function's tags; an event source mapping has none in Lambent."""
    svc = services(request)
    name = await _tagged(svc, resource)
    return answer(request, {"Tags": await svc.catalog.tags(name) if name is not None else {}})


@router.post("/2017-03-31/tags/{resource}", summary="TagResource")
async def tag_resource(resource: str, request: Request) -> Response:
    """Adds tags (a key given again gets the new value), up to Lambda's 50 on a function."""
    svc = services(request)
    name = _function_only(await _tagged(svc, resource))
    body = await json_body(request)
    tags = typed(body, "Tags", dict, "tags")
    if tags is None:
        raise violation(None, "tags", "Member must not be null")
    # Counted before the write: two nodes tagging one function at once may pass 50 together.
    checked_tags({**await svc.catalog.tags(name), **checked_tags(tags)})
    try:
        await svc.catalog.tag(name, tags)
    except NotFound:
        raise not_found(f"Function not found: {resource}") from None
    return Response(status_code=204)


@router.delete("/2017-03-31/tags/{resource}", summary="UntagResource")
async def untag_resource(resource: str, request: Request) -> Response:
    """Removes the keys named by the `tagKeys` query list; a key the function does not have is no error."""
    svc = services(request)
    name = _function_only(await _tagged(svc, resource))
    tag_keys = request.query_params.getlist("tagKeys")
    if not tag_keys:
        raise violation(None, "tagKeys", "Member must not be null")
    for key in tag_keys:
        _check_tag(key, "tagKeys", low=1, high=128, key=True)
    try:
        await svc.catalog.untag(name, tag_keys)
    except NotFound:
        raise not_found(f"Function not found: {resource}") from None
    return Response(status_code=204)
