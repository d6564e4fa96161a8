"""The Lambda control plane over the AWS API, the reads of what surrounds a function: GetAccountSettings,
Get/ListFunctionEventInvokeConfig(s) (function.yaml's `async`), Get/ListEventSourceMapping(s) (its `kafka`
events) and Get/ListFunctionUrlConfig(s) (its `http` event). Shapes and errors as in functions.py.
"""

from __future__ import annotations

import re

from fastapi import APIRouter, Request, Response

from ...functions.catalog import Version
from ...functions.spec import AsyncSpec, KafkaEvent
from ..common import services
from .shared import (ApiError, FunctionRef, answer, code_sizes, function_arn, function_ref, kafka_mappings, marker_key,
                     max_items, not_found, page, page_answer, resolve, versions, violation)
from .shapes import for_request

router = APIRouter(tags=["AWS Lambda API"])

AWS_TOTAL_CODE_SIZE = 80530636800    # Lambda's default account limit (75 GB): Lambent sets none but Redis's memory
_ARN_PATTERN = (r"arn:(aws[a-zA-Z0-9-]*):([a-zA-Z0-9\-])+:((eusc-)?[a-z]{2}((-gov)|(-iso([a-z]?)))?-[a-z]+-\d{1})?:"
                r"(\d{12})?:(.*)")
_ARN = re.compile(_ARN_PATTERN)
_URL_QUALIFIER = re.compile(r"^(?!\d+$)[0-9a-zA-Z_-]{1,128}$")


# -- account --------------------------------------------------------------------------------


@router.get("/2016-08-19/account-settings", summary="GetAccountSettings")
async def get_account_settings(request: Request) -> Response:
    """Limits as Lambent applies them: the deploy limits, and this node's sandboxes as the concurrency limit."""
    svc = services(request)
    config = svc.config
    heads = [version for name in svc.catalog.names() if (version := svc.catalog.latest(name)) is not None]
    stored = [version for head in heads for version in await svc.catalog.list_versions(head.function)]
    sizes = await code_sizes(svc, stored)
    limit = config.sandbox.max_per_node
    reserved = sum(head.spec.reserved_concurrency or 0 for head in heads)
    return answer(request, {
        "AccountLimit": {"TotalCodeSize": AWS_TOTAL_CODE_SIZE, "CodeSizeUnzipped": config.deploy.unzipped_limit_bytes,
                         "CodeSizeZipped": config.deploy.zipped_limit_bytes, "ConcurrentExecutions": limit,
                         "UnreservedConcurrentExecutions": max(0, limit - reserved)},
        # Code is stored once per content: the total is of the distinct zips.
        "AccountUsage": {"TotalCodeSize": sum(sizes.get(code, 0) for code in {v.code_hash for v in stored}),
                         "FunctionCount": len(heads)},
    })


# -- asynchronous invocation ----------------------------------------------------------------


def _configured(version: Version) -> bool:
    """Whether function.yaml sets `async`: without it Lambda has no EventInvokeConfig (its defaults apply)."""
    return version.spec.async_ != AsyncSpec()


@router.get("/2019-09-25/functions/{function_name}/event-invoke-config", summary="GetFunctionEventInvokeConfig")
async def get_function_event_invoke_config(function_name: str, request: Request) -> Response:
    svc = services(request)
    ref = function_ref(svc, function_name, request.query_params.get("Qualifier"))
    missing = not_found(f"The function {function_arn(svc, ref.name, ref.label)} doesn't have an EventInvokeConfig")
    try:
        item = await resolve(svc, ref)
    except ApiError:
        raise missing from None
    if not _configured(item.version):
        raise missing
    shapes = await for_request(request, [])
    return answer(request, shapes.event_invoke_config(item, arn_qualifier=ref.label))


@router.get("/2019-09-25/functions/{function_name}/event-invoke-config/list",
            summary="ListFunctionEventInvokeConfigs")
async def list_function_event_invoke_configs(function_name: str, request: Request) -> Response:
    svc = services(request)
    ref = function_ref(svc, function_name)
    size = max_items(request, limit=50) or 50
    configured = [item for item in await versions(svc, ref.name) if _configured(item.version)]
    chosen, marker = page(configured, lambda item: item.key, start=marker_key(request), size=size)
    shapes = await for_request(request, [])
    return page_answer(request, "FunctionEventInvokeConfigs", [
        shapes.event_invoke_config(item, arn_qualifier=item.label) for item in chosen], marker)


# -- event source mappings ------------------------------------------------------------------


@router.get("/2015-03-31/event-source-mappings", summary="ListEventSourceMappings")
async def list_event_source_mappings(request: Request) -> Response:
    svc = services(request)
    source = request.query_params.get("EventSourceArn")
    if source is not None and not _ARN.fullmatch(source):
        raise violation(source, "eventSourceArn", f"Member must satisfy regular expression pattern: {_ARN_PATTERN}")
    named = request.query_params.get("FunctionName")
    ref = function_ref(svc, named) if named is not None else None
    size = max_items(request, limit=10000) or 100
    found = [(f"{version.function}\0{index:05d}", version, index, event)
             for _, version, index, event in kafka_mappings(svc)
             if source is None              # a self-managed Kafka mapping has no event source ARN
             and (ref is None or (version.function == ref.name
                                  and (ref.qualifier is None or event.qualifier == ref.qualifier)))]
    chosen, marker = page(sorted(found, key=lambda entry: entry[0]), lambda entry: entry[0],
                          start=marker_key(request), size=size)
    shapes = await for_request(request, [])
    bootstrap = svc.config.kafka_bootstrap_servers
    return page_answer(request, "EventSourceMappings", [
        shapes.event_source_mapping(version, index, event, bootstrap) for _, version, index, event in chosen], marker)


@router.get("/2015-03-31/event-source-mappings/{mapping}", summary="GetEventSourceMapping")
async def get_event_source_mapping(mapping: str, request: Request) -> Response:
    svc = services(request)
    if len(mapping) != 36:
        relation = "greater" if len(mapping) < 36 else "less"
        raise violation(mapping, "UUID", f"Member must have length {relation} than or equal to 36")
    found: tuple[Version, int, KafkaEvent] | None = next(
        ((version, index, event) for uuid, version, index, event in kafka_mappings(svc) if uuid == mapping.lower()),
        None)
    if found is None:
        raise not_found("The resource you requested does not exist.")
    shapes = await for_request(request, [])
    return answer(request, shapes.event_source_mapping(*found, svc.config.kafka_bootstrap_servers))


# -- function URLs --------------------------------------------------------------------------


def function_url(request: Request, name: str) -> str:
    """Where the function URL answers: its own host, `<name>.<gateway.url_domain>` on the gateway's port (the
    host router compares host names without case, so a name with capitals keeps the `/fn/<name>/` fallback)."""
    domain = services(request).config.gateway.url_domain
    if name == name.lower():
        port = request.url.port
        return f"{request.url.scheme}://{name}.{domain}{f':{port}' if port else ''}/"
    return f"{str(request.base_url).rstrip('/')}/fn/{name}/"


async def _url_config(request: Request, ref: FunctionRef, *, listing: bool) -> dict[str, object] | None:
    """The function URL config of `ref` (an `http` event of $LATEST), None when it has none."""
    svc = services(request)
    if ref.qualifier is not None and not _URL_QUALIFIER.match(ref.qualifier):
        raise violation(ref.qualifier, "qualifier",
                        r"Member must satisfy regular expression pattern: ((?!^\d+$)^[0-9a-zA-Z-_]+$)")
    absent = not_found("Function does not exist" if listing else "The resource you requested does not exist.")
    try:
        history = await versions(svc, ref.name)
    except ApiError:
        raise absent from None
    if ref.qualifier is not None:
        try:
            await resolve(svc, ref)
        except ApiError:
            raise absent from None
        return None                    # an http event serves $LATEST: aliases have no URL of their own
    head, numbered = history[0], history[1:]
    if not head.version.spec.has_http:
        return None
    created = head.version.created         # since the oldest version of the newest run that has the http event
    for item in reversed(numbered):
        if not item.version.spec.has_http:
            break
        created = item.version.created
    auth = "AWS_IAM" if svc.config.auth.require_invoke_key else "NONE"    # AWS_IAM: a key (SigV4 or Bearer)
    shapes = await for_request(request, [])
    return shapes.url_config(ref.name, url=function_url(request, ref.name), auth_type=auth, created=created,
                             modified=head.version.created)


@router.get("/2021-10-31/functions/{function_name}/url", summary="GetFunctionUrlConfig")
async def get_function_url_config(function_name: str, request: Request) -> Response:
    svc = services(request)
    ref = function_ref(svc, function_name, request.query_params.get("Qualifier"), max_length=140)
    config = await _url_config(request, ref, listing=False)
    if config is None:
        raise not_found("The resource you requested does not exist.")
    return answer(request, config)


@router.get("/2021-10-31/functions/{function_name}/urls", summary="ListFunctionUrlConfigs")
async def list_function_url_configs(function_name: str, request: Request) -> Response:
    svc = services(request)
    ref = function_ref(svc, function_name, max_length=140)
    max_items(request, limit=50)
    marker_key(request)
    config = await _url_config(request, FunctionRef(name=ref.name, qualifier=None), listing=True)
    return answer(request, {"FunctionUrlConfigs": [config] if config else []})

