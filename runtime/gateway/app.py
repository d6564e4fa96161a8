"""The gateway application: routes, the request-id middleware, and start-up / shut-down."""

from __future__ import annotations

import contextlib
import uuid
from typing import Any, AsyncIterator, Mapping

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from prometheus_client import REGISTRY
from starlette.exceptions import HTTPException
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..config import Config
from ..console.router import router as console_router
from ..observability.metrics import ClusterCollector
from ..services import Services
from . import admin, asyncapi, aws, deploy, invoke, operations, schedules
from .auth import Authenticator
from .common import request_id
from .errors import error
from .guard import AuthMiddleware


class RequestIdMiddleware:
    """Gives every request an id (the invocation's request id) and every answer `X-Request-Id`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = str(uuid.uuid4())
        scope.setdefault("state", {})["request_id"] = rid
        header = (b"x-request-id", rid.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        await self.app(scope, receive, send_with_id)


def create_app(config: Config, *, environ: Mapping[str, str] | None = None, services: Services | None = None,
               deploy_functions: bool = True) -> FastAPI:
    """The gateway. `environ` holds the secrets named by `auth.keys` (the CLI passes os.environ)."""
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        own = services is None
        svc = services or await Services.start(config, deploy_functions=deploy_functions)
        app.state.services = svc
        collector = ClusterCollector(svc.blocking_redis, queue=config.async_.queue, functions=svc.catalog.names)
        REGISTRY.register(collector)
        try:
            yield {}
        finally:
            REGISTRY.unregister(collector)
            if own:
                await svc.stop()

    app = FastAPI(title="Lambent", version="0.1.0", lifespan=lifespan,
                  description="A self-hosted, AWS-Lambda-like function runtime.")
    app.include_router(invoke.router)
    app.include_router(aws.router)
    app.include_router(admin.router)
    app.include_router(asyncapi.router)
    app.include_router(schedules.router)
    app.include_router(deploy.router)
    app.include_router(operations.router)
    app.include_router(console_router)
    # The hot routes again, as plain Starlette routes matched first (the FastAPI ones document them).
    app.router.routes[0:0] = [
        Route("/functions/{name}/invoke", invoke.handle_invoke, methods=["POST"]),
        Route("/2015-03-31/functions/{function_name}/invocations", aws.handle_invoke, methods=["POST"]),
    ]
    app.add_middleware(AuthMiddleware, authenticator=Authenticator(config, environ or {}),
                       require_invoke_key=config.auth.require_invoke_key,
                       max_body_bytes=max(config.deploy.zipped_limit_bytes, config.gateway.sync_payload_limit_bytes))
    app.add_middleware(RequestIdMiddleware)                 # added last: outermost, so refusals carry an id

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        code = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status_code, "HttpError")
        message = f"no route {request.method} {request.url.path}" if exc.status_code in (404, 405) else exc.detail
        return error(exc.status_code, code, str(message), request_id=request_id(request))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return error(400, "InvalidRequest", problems, request_id=request_id(request))

    return app
