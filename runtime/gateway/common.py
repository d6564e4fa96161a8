"""What every invoking route shares: the request id, a size-capped body, the JSON check."""

from __future__ import annotations

from typing import overload

import orjson
from fastapi import Request, Response
from starlette.requests import ClientDisconnect

from ..functions.catalog import Version
from ..functions.spec import name_problem
from ..wiring import GatewayServices
from .errors import BodyTooLarge, error


def services(request: Request) -> GatewayServices:
    return request.app.state.services


def request_id(request: Request) -> str:
    return request.scope["state"]["request_id"]


@overload
def header(request: Request, name: bytes, default: str) -> str: ...


@overload
def header(request: Request, name: bytes, default: None = None) -> str | None: ...


def header(request: Request, name: bytes, default: str | None = None) -> str | None:
    """One request header (`name` in lower case), without building Starlette's Headers (the hot path)."""
    for key, value in request.scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return default


def query_param(request: Request, name: str) -> str | None:
    """One query parameter. Starlette parses the query string anew for each request that asks, and most
    invocations send none (the hot path)."""
    return request.query_params.get(name) if request.scope["query_string"] else None


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused as soon as it passes `limit` (before reading it all when Content-Length says so)."""
    declared = header(request, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit)
    chunks = []
    size = 0
    more = True
    while more:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


# The deepest nesting of arrays and objects an event may have: the sandbox decodes it with the standard
# library's json, whose recursion stops near 1,000 levels (orjson here allows 1,024). What the gateway accepts,
# the sandbox decodes.
MAX_JSON_DEPTH = 512


def json_problem(body: bytes) -> str | None:
    """Why `body` is not a JSON document the sandbox can decode, or None when it is (empty means `{}`)."""
    if not body.strip():
        return None
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return str(exc)
    # Counting brackets is cheap; only a body with that many of them is walked for its depth.
    if body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH and _depth(body) > MAX_JSON_DEPTH:
        return f"it nests arrays and objects deeper than {MAX_JSON_DEPTH} levels"
    return None


def _depth(body: bytes) -> int:
    """The deepest nesting of a valid JSON document (brackets inside strings do not count)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:         # backslash
                escaped = True
            elif byte == 0x22:         # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):     # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):     # ] }
            depth -= 1
    return deepest


def bad_name(request: Request, name: str) -> Response | None:
    """A 400 answer when `name` breaks Lambda's naming rule, else None."""
    if (problem := name_problem(name)) is None:
        return None
    return error(400, "InvalidFunctionName", problem, request_id=request_id(request))


def latest_or_error(request: Request, name: str) -> Version | Response:
    """The function's newest version, or the 400 / 404 answer to give instead."""
    if (bad := bad_name(request, name)) is not None:
        return bad
    latest = services(request).catalog.latest(name)
    if latest is None:
        return error(404, "ResourceNotFound", f"Function not found: {name}", request_id=request_id(request))
    return latest
