"""The Lambda control plane over the AWS API, the writes of a function's settings: Put/DeleteFunctionConcurrency,
Put/Update/DeleteFunctionEventInvokeConfig.

Both change $LATEST's function.yaml fields (edit_latest), which every node follows: `reserved_concurrency` is the
function's on Lambda and in Lambent alike, and `async` is $LATEST's (a published version is frozen, so its async
settings cannot change: Lambent refuses a qualifier naming one). function.yaml's `retry_delays` has no Lambda field
and is left as it is by Put and Update.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from ...functions.catalog import LATEST, Version
from ...functions.spec import AsyncSpec
from ...wiring import GatewayServices
from ..common import services
from .shared import (ApiError, FunctionRef, Published, answer, destination_of, edit_latest, function_arn,
                     function_ref, in_range, invalid, json_body, not_found, resolve, typed, unqualified, violation)
from .shapes import for_request

router = APIRouter(tags=["AWS Lambda API"])

_DEFAULTS = AsyncSpec()


# -- concurrency ----------------------------------------------------------------------------


@router.put("/2017-10-31/functions/{function_name}/concurrency", summary="PutFunctionConcurrency")
async def put_function_concurrency(function_name: str, request: Request) -> Response:
    svc = services(request)
    ref = function_ref(svc, function_name, max_length=140)
    unqualified(ref)
    body = await json_body(request)
    reserved = typed(body, "ReservedConcurrentExecutions", int, "reservedConcurrentExecutions")
    if reserved is None:
        raise violation(None, "reservedConcurrentExecutions", "Member must not be null")
    if reserved < 0:
        raise violation(reserved, "reservedConcurrentExecutions", "Member must have value greater than or equal to 0")
    await edit_latest(svc, ref.name, lambda data: {**data, "reserved_concurrency": reserved})
    return answer(request, {"ReservedConcurrentExecutions": reserved})


@router.delete("/2017-10-31/functions/{function_name}/concurrency", summary="DeleteFunctionConcurrency")
async def delete_function_concurrency(function_name: str, request: Request) -> Response:
    svc = services(request)
    ref = function_ref(svc, function_name, max_length=140)
    unqualified(ref)

    def unreserve(data: dict[str, Any]) -> dict[str, Any]:
        return {key: value for key, value in data.items() if key != "reserved_concurrency"}

    await edit_latest(svc, ref.name, unreserve)
    return Response(status_code=204)


# -- asynchronous invocation ----------------------------------------------------------------


def _configured(data: dict[str, Any]) -> bool:
    """Whether function.yaml's fields (JSON) have an EventInvokeConfig: as configs.py reads it, an `async` at
    Lambda's defaults is none."""
    return AsyncSpec.model_validate(data.get("async") or {}) != _DEFAULTS


def _missing(svc: GatewayServices, ref: FunctionRef) -> ApiError:
    return not_found(f"The function {function_arn(svc, ref.name, LATEST)} doesn't have an EventInvokeConfig")


async def _latest_ref(request: Request, function_name: str) -> FunctionRef:
    """The function, unqualified or $LATEST: Lambent's async settings are $LATEST's; a published version is
    frozen. ResourceNotFoundException for a function, version or alias that does not exist."""
    svc = services(request)
    ref = function_ref(svc, function_name, request.query_params.get("Qualifier"))
    await resolve(svc, ref)
    if ref.label != LATEST:
        raise invalid(f"Lambent keeps a function's asynchronous invocation settings on $LATEST only (its "
                      f"function.yaml's `async`); published versions are frozen and aliases follow them, so "
                      f"{ref.qualifier} cannot have settings of its own: configure the unqualified function")
    return ref


def _async_of(body: dict[str, Any]) -> dict[str, Any]:
    """The fields of function.yaml's `async` that the request gives (None: a destination removed)."""
    given: dict[str, Any] = {}
    retries = typed(body, "MaximumRetryAttempts", int, "maximumRetryAttempts")
    if retries is not None:
        given["max_retry_attempts"] = in_range(retries, "maximumRetryAttempts", 0, 2)
    age = typed(body, "MaximumEventAgeInSeconds", int, "maximumEventAgeInSeconds")
    if age is not None:
        given["max_event_age"] = in_range(age, "maximumEventAgeInSeconds", 60, 21600)
    destinations = typed(body, "DestinationConfig", dict, "destinationConfig")
    for field, key, member in (("OnSuccess", "on_success", "destinationConfig.onSuccess"),
                               ("OnFailure", "on_failure", "destinationConfig.onFailure")):
        if destinations is not None and field in destinations:
            given[key] = destination_of(destinations[field], member)
    return given


def _with_async(data: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """function.yaml's fields with `async` made of `settings` (None values left out: no destination)."""
    return {**data, "async": {key: value for key, value in settings.items() if value is not None}}


async def _answer(request: Request, version: Version) -> Response:
    shapes = await for_request(request, [])
    return answer(request, shapes.event_invoke_config(Published(version=version),
                                                      arn_qualifier=LATEST))


@router.put("/2019-09-25/functions/{function_name}/event-invoke-config", summary="PutFunctionEventInvokeConfig")
async def put_function_event_invoke_config(function_name: str, request: Request) -> Response:
    """Replaces the whole configuration: what the request leaves out takes Lambda's default (2 retries, 6 hours,
    no destinations). function.yaml's retry_delays stay."""
    svc = services(request)
    ref = await _latest_ref(request, function_name)
    given = _async_of(await json_body(request))

    def replace(data: dict[str, Any]) -> dict[str, Any]:
        kept = {"retry_delays": data["async"]["retry_delays"]} if "retry_delays" in data.get("async", {}) else {}
        return _with_async(data, {**kept, **given})

    return await _answer(request, await edit_latest(svc, ref.name, replace))


@router.post("/2019-09-25/functions/{function_name}/event-invoke-config", summary="UpdateFunctionEventInvokeConfig")
async def update_function_event_invoke_config(function_name: str, request: Request) -> Response:
    """Changes what the request gives and keeps the rest (OnSuccess and OnFailure apart: an empty Destination
    removes one)."""
    svc = services(request)
    ref = await _latest_ref(request, function_name)
    given = _async_of(await json_body(request))

    def merge(data: dict[str, Any]) -> dict[str, Any]:
        if not _configured(data):
            raise _missing(svc, ref)
        return _with_async(data, {**data.get("async", {}), **given})

    return await _answer(request, await edit_latest(svc, ref.name, merge))


@router.delete("/2019-09-25/functions/{function_name}/event-invoke-config",
               summary="DeleteFunctionEventInvokeConfig")
async def delete_function_event_invoke_config(function_name: str, request: Request) -> Response:
    """Back to Lambda's defaults: function.yaml's whole `async` goes (its retry_delays too, else a config would
    remain)."""
    svc = services(request)
    ref = await _latest_ref(request, function_name)

    def reset(data: dict[str, Any]) -> dict[str, Any]:
        if not _configured(data):
            raise _missing(svc, ref)
        return {key: value for key, value in data.items() if key != "async"}

    await edit_latest(svc, ref.name, reset)
    return Response(status_code=204)
