"""The two invoke routes, reached before FastAPI's middleware stack and router.

A warm invocation is the gateway's hot path, and FastAPI's own layers around a route (its error,
exception, telemetry, exit-stack and body-limit middleware, the router's walk, the request/response
wrappers) cost a good part of the gateway's CPU per call. The same route functions answer here
(`invoke.handle_invoke`, `aws.handle_invoke`); only the way to them is shorter. Anything else, the
same paths with another method included, goes through FastAPI as before, which also documents them.
Redis being unreachable is answered here as FastAPI's handler does for the other routes (unavailable.py).
"""

from __future__ import annotations

import re
from typing import Awaitable, Callable

from fastapi import Request, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ..observability.outage import UNREACHABLE
from . import aws, invoke, unavailable

Route = Callable[[Request], Awaitable[Response]]

_ROUTES: list[tuple[re.Pattern[str], Route]] = [
    (re.compile(r"/functions/(?P<name>[^/]+)/invoke"), invoke.handle_invoke),
    (re.compile(r"/2015-03-31/functions/(?P<function_name>[^/]+)/invocations"), aws.handle_invoke),
]


class HotPath:
    def __init__(self, app: ASGIApp, *, owner: ASGIApp) -> None:
        self.app = app
        self._owner = owner          # the FastAPI app: request.app, for its state (the services)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            for pattern, route in _ROUTES:
                if (match := pattern.fullmatch(scope["path"])) is not None:
                    scope["app"] = self._owner
                    scope["path_params"] = match.groupdict()
                    request = Request(scope, receive)
                    try:
                        response = await route(request)
                    except UNREACHABLE as exc:
                        response = unavailable.answer(request, exc)
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)
