"""Day-two endpoints: `GET /metrics` (Prometheus), `GET /functions/{name}/logs`, `GET /functions/{name}/stats`."""

from __future__ import annotations

import re
import time
from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from ..observability import metrics
from ..observability.logs import read_logs
from ..observability.stats import read_stats
from .common import bad_name, request_id, services
from .errors import error

router = APIRouter()
_SINCE = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@router.get("/metrics", tags=["operations"], summary="Prometheus metrics of this gateway and of the cluster")
async def get_metrics(request: Request) -> Response:
    body, content_type = await run_in_threadpool(metrics.render, None)
    return Response(body, media_type=content_type)


def parse_since(value: str | None) -> int | None:
    """`10m`, `2h`, `30s`, `1d` -> epoch ms of that long ago; None when not given. ValueError when malformed."""
    if not value:
        return None
    match = _SINCE.match(value.strip())
    if match is None:
        raise ValueError(f"since '{value}' is not a duration like 30s, 10m, 2h or 1d")
    return int((time.time() - int(match.group(1)) * _UNITS[match.group(2)]) * 1000)


@router.get("/functions/{name}/logs", tags=["operations"],
            summary="Captured invocation logs, newest last (START/END/REPORT framed); a deleted function's too")
async def get_logs(name: str, request: Request, since: str | None = None, request_id_filter: str | None = None,
                   limit: int = 100, after: int | None = None) -> Any:
    rid = request_id(request)
    if (bad := bad_name(request, name)) is not None:
        return bad
    wanted = request.query_params.get("request_id") or request_id_filter
    try:
        since_ms = parse_since(since)
    except ValueError as exc:
        return error(400, "InvalidRequest", str(exc), request_id=rid)
    if after is not None:
        since_ms = max(since_ms or 0, after + 1)
    if not 1 <= limit <= 1000:
        return error(400, "InvalidRequest", "limit is 1..1000", request_id=rid)
    svc = services(request)
    records = await read_logs(svc.redis, name, limit=limit, request_id=wanted, since_ms=since_ms)
    if not records and svc.catalog.latest(name) is None:
        # Unknown is neither in the catalog nor with logs stored: a deleted function's logs stay readable.
        filtered = bool(wanted) or since_ms is not None
        if not filtered or not await read_logs(svc.redis, name, limit=1):
            return error(404, "ResourceNotFound", f"Function not found: {name}", request_id=rid)
    return {"function": name, "records": records}


@router.get("/functions/{name}/stats", tags=["operations"],
            summary="Per-minute invocations, errors, throttles and p50/p99 duration, cluster-wide")
async def get_stats(name: str, request: Request, minutes: int = 60) -> Any:
    if (bad := bad_name(request, name)) is not None:
        return bad
    if not 1 <= minutes <= 120:
        return error(400, "InvalidRequest", "minutes is 1..120", request_id=request_id(request))
    return {"function": name, "points": await read_stats(services(request).redis, name, minutes=minutes)}
