"""The routes answered before FastAPI's middleware stack and router: function URL hosts and the two invoke routes.

A warm invocation is the gateway's hot path, and FastAPI's own layers around a route (its error,
exception, telemetry, exit-stack and body-limit middleware, the router's walk, the request/response
wrappers) cost a good part of the gateway's CPU per call. The same route bodies answer here
(`invoke.handle_invoke`, `aws.handle_invoke`: invoke_flow.py's one flow); only the way to them is shorter.
Anything else, the same paths with another method included, goes through FastAPI as before, which also
documents them.
Redis being unreachable is answered here as FastAPI's handler does for the other routes (unavailable.py).

A function URL has a host of its own, as on AWS (`<url-id>.lambda-url.<region>.on.aws`): every request
whose Host is `<name>.<gateway.url_domain>` is that function's, whatever its path and method, so that an
app behind it owns `/` (its redirects, `/docs`, `/openapi.json`); nothing of Lambent's API answers there.
`FunctionUrlHosts` tells them apart in front of the key check, `HotPath` answers them (invoke.handle_function_url).
"""

from __future__ import annotations

import re
from typing import Awaitable, Callable

from fastapi import Request, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ..observability.outage import UNREACHABLE
from . import aws, invoke, unavailable
from .invoke import FUNCTION_URL

Route = Callable[[Request], Awaitable[Response]]

_ROUTES: list[tuple[re.Pattern[str], Route]] = [
    (re.compile(r"/functions/(?P<name>[^/]+)/invoke"), invoke.handle_invoke),
    (re.compile(r"/2015-03-31/functions/(?P<function_name>[^/]+)/invocations"), aws.handle_invoke),
]


class FunctionUrlHosts:
    """Marks the requests to a function URL's host, before the key check sees them.

    The guard decides what a request needs by its path (guard.need_of); a function URL is an invocation
    there, public unless `auth.require_invoke_key`, as its `/fn/{name}` fallback is. So the guard is shown
    that path; the route itself reads the path the caller sent (`raw_path`, which a signature covers too).
    """

    def __init__(self, app: ASGIApp, *, url_domain: str) -> None:
        self.app = app
        self._suffix = b"." + url_domain.encode("ascii")      # config.py keeps it lower-case DNS labels

    def function_of(self, scope: Scope) -> str | None:
        """The label in front of `.<url_domain>` in the request's Host (its port left out, case ignored), or None
        for any other host. Every request passes here: bytes, and no more parsing than that."""
        for key, value in scope["headers"]:
            if key == b"host":
                name = value.strip().lower()
                head, colon, port = name.rpartition(b":")
                if colon and port.isdigit():
                    name = head
                if name.endswith(self._suffix) and len(name) > len(self._suffix):
                    return name[: -len(self._suffix)].decode("latin-1")
                return None
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (name := self.function_of(scope)) is not None:
            scope.setdefault("state", {})[FUNCTION_URL] = name
            scope = {**scope, "path": f"/fn/{name}{scope['path']}",
                     "raw_path": scope.get("raw_path") or scope["path"].encode()}
        await self.app(scope, receive, send)


class HotPath:
    def __init__(self, app: ASGIApp, *, owner: ASGIApp) -> None:
        self.app = app
        self._owner = owner          # the FastAPI app: request.app, for its state (the services)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if FUNCTION_URL in scope.get("state", ()):
            await self._answer(invoke.handle_function_url, scope, receive, send)
            return
        if scope["method"] == "POST":
            for pattern, route in _ROUTES:
                if (match := pattern.fullmatch(scope["path"])) is not None:
                    scope["path_params"] = match.groupdict()
                    await self._answer(route, scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _answer(self, route: Route, scope: Scope, receive: Receive, send: Send) -> None:
        scope["app"] = self._owner
        request = Request(scope, receive)
        try:
            response = await route(request)
        except UNREACHABLE as exc:
            response = unavailable.answer(request, exc)
        await response(scope, receive, send)
