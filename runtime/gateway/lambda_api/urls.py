"""The Lambda control plane over the AWS API, function URL configs: Create, Update, Delete, Get and List
FunctionUrlConfig(s). A function URL is an `http` event of the function's $LATEST (HttpEvent), served at
`<name>.<gateway.url_domain>` and `/fn/<name>/`.

What Lambda sets per URL, Lambent sets for the server: AuthType follows auth.require_invoke_key (AWS_IAM: a key is
needed, SigV4 or Bearer), the URL serves $LATEST (no alias has one of its own), and answers are buffered.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Request, Response

from ..common import request_id, services
from .shared import (ApiError, FunctionRef, answer, conflict, edit_latest, function_arn, function_ref, invalid,
                     json_body, marker_key, max_items, not_found, resolve, typed, versions, violation)
from .shapes import for_request
from .sources import without_event

router = APIRouter(tags=["AWS Lambda API"])

_URL_QUALIFIER = re.compile(r"^(?!\d+$)[0-9a-zA-Z_-]{1,128}$")
_MISSING = "The resource you requested does not exist."
# Lambda's Cors members -> an http event's `cors` keys (function.yaml's names).
_CORS = {"AllowCredentials": "allow_credentials", "AllowHeaders": "allow_headers", "AllowMethods": "allow_methods",
         "AllowOrigins": "allow_origins", "ExposeHeaders": "expose_headers", "MaxAge": "max_age"}


def function_url(request: Request, name: str) -> str:
    """Where the function URL answers: its own host, `<name>.<gateway.url_domain>` on the gateway's port (the
    host router compares host names without case, so a name with capitals keeps the `/fn/<name>/` fallback)."""
    domain = services(request).config.gateway.url_domain
    if name == name.lower():
        port = request.url.port
        return f"{request.url.scheme}://{name}.{domain}{f':{port}' if port else ''}/"
    return f"{str(request.base_url).rstrip('/')}/fn/{name}/"


def _auth_type(request: Request) -> str:
    return "AWS_IAM" if services(request).config.auth.require_invoke_key else "NONE"


def _qualifier(ref: FunctionRef) -> None:
    if ref.qualifier is not None and not _URL_QUALIFIER.match(ref.qualifier):
        raise violation(ref.qualifier, "qualifier",
                        r"Member must satisfy regular expression pattern: ((?!^\d+$)^[0-9a-zA-Z-_]+$)")


async def _url_config(request: Request, ref: FunctionRef, *, listing: bool) -> dict[str, object] | None:
    """The function URL config of `ref` (an `http` event of $LATEST), None when it has none."""
    svc = services(request)
    _qualifier(ref)
    absent = not_found("Function does not exist" if listing else _MISSING)
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
    http = next((event.http for event in head.version.spec.events if event.http is not None), None)
    if http is None:
        return None
    created = head.version.created         # since the oldest version of the newest run that has the http event
    for item in reversed(numbered):
        if not item.version.spec.has_http:
            break
        created = item.version.created
    shapes = await for_request(request, [])
    return shapes.url_config(ref.name, url=function_url(request, ref.name), auth_type=_auth_type(request),
                             created=created, modified=head.version.created, cors=http.cors)


@router.get("/2021-10-31/functions/{function_name}/url", summary="GetFunctionUrlConfig")
async def get_function_url_config(function_name: str, request: Request) -> Response:
    svc = services(request)
    ref = function_ref(svc, function_name, request.query_params.get("Qualifier"), max_length=140)
    config = await _url_config(request, ref, listing=False)
    if config is None:
        raise not_found(_MISSING)
    return answer(request, config)


@router.get("/2021-10-31/functions/{function_name}/urls", summary="ListFunctionUrlConfigs")
async def list_function_url_configs(function_name: str, request: Request) -> Response:
    svc = services(request)
    ref = function_ref(svc, function_name, max_length=140)
    max_items(request, limit=50)
    marker_key(request)
    config = await _url_config(request, FunctionRef(name=ref.name, qualifier=None), listing=True)
    return answer(request, {"FunctionUrlConfigs": [config] if config else []})


# -- writes ---------------------------------------------------------------------------------


def _target(request: Request, function_name: str) -> FunctionRef:
    """The function of a write: its URL is $LATEST's, so a qualifier is refused, saying why."""
    svc = services(request)
    ref = function_ref(svc, function_name, request.query_params.get("Qualifier"), max_length=140)
    _qualifier(ref)
    if ref.qualifier is not None:
        raise invalid(f"Lambent's function URL serves $LATEST, and an alias has no URL of its own: give "
                      f"FunctionName {ref.name} without a Qualifier (an alias is invoked through the Invoke API "
                      f"or /fn/{ref.name}:{ref.qualifier}/)")
    return ref


def _http_settings(request: Request, body: dict[str, Any], *, required: bool) -> dict[str, Any] | None:
    """The `cors` of the http event the request asks for (None: not given); AWS's errors for AuthType and
    InvokeMode, and Lambent's when they differ from what the server does."""
    auth = typed(body, "AuthType", str, "authType")
    if auth is None and required:
        raise violation(None, "authType", "Member must not be null")
    if auth is not None and auth not in ("NONE", "AWS_IAM"):
        raise violation(auth, "authType", "Member must satisfy enum value set: [NONE, AWS_IAM]")
    server = _auth_type(request)
    if auth is not None and auth != server:
        does, setting = (("need a key (SigV4 or Bearer)", "false") if server == "AWS_IAM"
                         else ("are public", "true"))
        raise invalid(f"Lambent's function URLs {does} on this server: AuthType is {server} for every function. "
                      f"To make it {auth}, set auth.require_invoke_key: {setting} in the server's config.yaml (it "
                      "applies to every invocation too)")
    mode = typed(body, "InvokeMode", str, "invokeMode")
    if mode == "RESPONSE_STREAM":
        raise invalid("Lambent's function URLs answer BUFFERED only: RESPONSE_STREAM is not supported")
    if mode not in (None, "BUFFERED"):
        raise violation(mode, "invokeMode", "Member must satisfy enum value set: [BUFFERED, RESPONSE_STREAM]")
    cors = typed(body, "Cors", dict, "cors")
    if cors is None:
        return None
    return {_CORS[field]: value for field, value in cors.items() if field in _CORS and value is not None}


def _http_events(data: dict[str, Any]) -> tuple[list[Any], list[int]]:
    """function.yaml's events (a copy to edit) and the places of its http events; ResourceNotFound when none."""
    events = list(data.get("events", []))
    places = [index for index, event in enumerate(events) if "http" in event]
    if not places:
        raise not_found(_MISSING)
    return events, places


async def _written(request: Request, name: str, status: int, *, created: bool) -> Response:
    config = await _url_config(request, FunctionRef(name=name, qualifier=None), listing=False)
    assert config is not None
    if created:
        config.pop("LastModifiedTime")            # CreateFunctionUrlConfig's answer has none
    return answer(request, config, status)


@router.post("/2021-10-31/functions/{function_name}/url", summary="CreateFunctionUrlConfig")
async def create_function_url_config(function_name: str, request: Request) -> Response:
    svc = services(request)
    ref = _target(request, function_name)
    cors = _http_settings(request, await json_body(request), required=True)

    def add(data: dict[str, Any]) -> dict[str, Any]:
        events = list(data.get("events", []))
        if any("http" in event for event in events):
            raise conflict(f"Failed to create function url config for [functionArn = "
                           f"{function_arn(svc, ref.name)}]. Error message:  FunctionUrlConfig exists for this "
                           "Lambda function")
        return {**data, "events": [*events, {"http": {"cors": cors} if cors else {}}]}

    await edit_latest(svc, ref.name, add)
    return await _written(request, ref.name, 201, created=True)


@router.put("/2021-10-31/functions/{function_name}/url", summary="UpdateFunctionUrlConfig")
async def update_function_url_config(function_name: str, request: Request) -> Response:
    svc = services(request)
    ref = _target(request, function_name)
    cors = _http_settings(request, await json_body(request), required=False)

    def update(data: dict[str, Any]) -> dict[str, Any]:
        events, places = _http_events(data)
        if cors is not None:               # Cors replaces the one there was; {} takes it away
            events[places[0]] = {"http": {"cors": cors} if cors else {}}
        return {**data, "events": events}

    await edit_latest(svc, ref.name, update)
    return await _written(request, ref.name, 200, created=False)


@router.delete("/2021-10-31/functions/{function_name}/url", summary="DeleteFunctionUrlConfig")
async def delete_function_url_config(function_name: str, request: Request) -> Response:
    svc = services(request)
    ref = _target(request, function_name)

    def remove(data: dict[str, Any]) -> dict[str, Any]:
        events, places = _http_events(data)
        for index in reversed(places):     # the kafka events after it keep their consumer groups
            events = without_event(ref.name, events, index)
        return {**data, "events": events}

    await edit_latest(svc, ref.name, remove)
    return Response(status_code=204, headers={"x-amzn-RequestId": request_id(request)})
