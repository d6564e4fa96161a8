"""What every invoking route shares: the request id, a size-capped body, the JSON check."""

from __future__ import annotations

import orjson
from fastapi import Request

from .errors import BodyTooLarge
from ..services import Services


def services(request: Request) -> Services:
    return request.app.state.services


def request_id(request: Request) -> str:
    return request.scope["state"]["request_id"]


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused as soon as it passes `limit` (before reading it all when Content-Length says so)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit)
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def json_problem(body: bytes) -> str | None:
    """Why `body` is not a JSON document, or None when it is (an empty body means `{}`)."""
    if not body.strip():
        return None
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return str(exc)
    return None
