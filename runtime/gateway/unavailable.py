"""A Redis outage as a caller sees it: 503 with `Retry-After`, in Lambent's JSON error shape, or AWS's on
the AWS API paths (`x-amzn-ErrorType: ServiceException`: botocore retries a 503 in every retry mode, and a
caller whose retries run out catches Lambda's own modeled `ServiceException`).

Routes do not check Redis first: whatever needs Redis raises the driver's ConnectionError or TimeoutError (or
RedisUnavailable, when this process knows already), and it is turned into the answer here, at the edge.
A route that needs no Redis (a warm sync invocation) answers as always.
"""

from __future__ import annotations

from fastapi import FastAPI, Request, Response

from ..observability.outage import UNREACHABLE
from .common import request_id, services
from .errors import aws_error, error, is_aws_api

RETRY_AFTER_S = 2      # an outage ends about a second after Redis answers again (outage.PROBE_MAX_S)


def answer(request: Request, exc: BaseException) -> Response:
    """The 503 for a request that needed Redis; the outage is reported (and logged once, there)."""
    health = services(request).health
    health.failed(exc)
    message = health.message()
    rid = request_id(request)
    if is_aws_api(request.url.path):
        response = aws_error(503, "ServiceException", message, request_id=rid, Type="Service")
    else:
        response = error(503, "ServiceUnavailable", message, request_id=rid)
    response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response


def install(app: FastAPI) -> None:
    """Answer Redis's unreachability with the 503 on every FastAPI route (hot.py does it for its two)."""
    async def unreachable(request: Request, exc: Exception) -> Response:
        return answer(request, exc)

    for kind in UNREACHABLE:
        app.add_exception_handler(kind, unreachable)
