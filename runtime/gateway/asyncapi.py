"""Asynchronous invocation over HTTP: accept (202), status, and the dead-letter queue admin API."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response

from ..asyncq.record import InvocationRecord, Status
from ..events.destination import iso_ms
from ..events.trace import trace_header
from ..functions.catalog import Target
from ..wiring import GatewayServices
from .common import bad_name, request_id, services
from .errors import error

router = APIRouter()
MAX_OFFSET = 2**31 - 1        # a page's offset; Redis takes nothing larger as a range index


async def accept(svc: GatewayServices, target: Target, body: bytes, rid: str, incoming_trace: str | None = None) -> str:
    """Durably queue the event (record and RQ job in one Redis transaction) before the caller hears 202, with
    its trace (the caller's X-Amzn-Trace-Id, else a new one), which its attempts carry on; returns the trace.
    Refused at once while Redis is known to be down: no thread waits on it (see unavailable.py)."""
    if svc.health.down:
        raise svc.health.unavailable()
    trace = trace_header(incoming_trace)
    await asyncio.to_thread(svc.asyncq.accept, function=target.version.function, qualifier=target.qualifier,
                            payload=body if body.strip() else b"{}", trigger="async", request_id=rid,
                            trace_id=trace)
    return trace


def _status(rid: str, record: InvocationRecord) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "requestId": rid, "function": record.function, "qualifier": record.qualifier,
        "status": record.status.value, "trigger": record.trigger, "attempts": record.history,
        "attemptCount": record.attempts, "receivedAt": iso_ms(record.received_ms),
        "updatedAt": iso_ms(record.updated_ms),
    }
    if record.executed_version is not None:
        answer["executedVersion"] = record.executed_version
    if record.next_ms is not None and record.status in (Status.RETRYING, Status.QUEUED):
        answer["nextAttemptAt"] = iso_ms(record.next_ms)
    if record.status is Status.SUCCEEDED and record.result is not None:
        answer["result"] = orjson.loads(record.result)
    if record.error is not None and record.status is not Status.SUCCEEDED:
        answer["error"] = orjson.loads(record.error)
    return answer


@router.get("/invocations/{rid}", tags=["async"], summary="Status of an asynchronous invocation")
async def invocation_status(rid: str, request: Request) -> Response:
    svc = services(request)
    record = await asyncio.to_thread(svc.asyncq.status, rid) if len(rid) <= 64 else None
    if record is None:
        return error(404, "InvocationNotFound", f"no asynchronous invocation {rid} (finished ones are kept "
                     f"{svc.config.async_.result_ttl_s} s)", request_id=request_id(request))
    return Response(orjson.dumps(_status(rid, record)), media_type="application/json")


@router.get("/functions/{name}/dlq", tags=["async"], summary="List a function's dead letters (paged)")
async def dlq_list(name: str, request: Request, offset: int = 0, limit: int = 50) -> Response:
    if (bad := bad_name(request, name)) is not None:
        return bad
    if not 0 <= offset <= MAX_OFFSET or not 1 <= limit <= 1000:
        return error(400, "InvalidRequest", f"offset must be 0..{MAX_OFFSET} and limit 1..1000",
                     request_id=request_id(request))
    page = await asyncio.to_thread(services(request).dead_letters.page, name, offset=offset, limit=limit)
    return Response(orjson.dumps(page), media_type="application/json")


@router.get("/functions/{name}/dlq/{rid}", tags=["async"], summary="One dead letter")
async def dlq_get(name: str, rid: str, request: Request) -> Response:
    if (bad := bad_name(request, name)) is not None:
        return bad
    entry = await asyncio.to_thread(services(request).dead_letters.get, name, rid)
    if entry is None:
        return error(404, "NotFound", f"no dead letter {rid} for {name}", request_id=request_id(request))
    return Response(orjson.dumps(entry.to_json()), media_type="application/json")


@router.post("/functions/{name}/dlq/redrive", tags=["async"],
             summary="Queue dead letters again with fresh attempts: all, or one with {\"requestId\": ...}")
async def dlq_redrive(name: str, request: Request) -> Response:
    if (bad := bad_name(request, name)) is not None:
        return bad
    body = await request.body()
    wanted = None
    if body.strip():
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict) or not isinstance(parsed.get("requestId"), (str, type(None))):
            return error(400, "InvalidRequestContent", 'the body is optional; if given it is {"requestId": "..."}',
                         request_id=request_id(request))
        wanted = parsed.get("requestId")
    redriven = await asyncio.to_thread(services(request).dead_letters.redrive, name, wanted)
    if wanted and not redriven:
        return error(404, "NotFound", f"no dead letter {wanted} for {name}", request_id=request_id(request))
    return Response(orjson.dumps({"redriven": redriven}), media_type="application/json")


@router.delete("/functions/{name}/dlq", tags=["async"], summary="Purge a function's dead letters")
async def dlq_purge(name: str, request: Request) -> Response:
    if (bad := bad_name(request, name)) is not None:
        return bad
    purged = await asyncio.to_thread(services(request).dead_letters.purge, name)
    return Response(orjson.dumps({"purged": purged}), media_type="application/json")
