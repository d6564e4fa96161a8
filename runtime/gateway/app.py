"""The gateway application: routes, the request-id middleware, and start-up / shut-down."""

from __future__ import annotations

import contextlib
import gc
import inspect
import os
from typing import Any, AsyncIterator, Callable, Mapping

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from prometheus_client import REGISTRY
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..auth import Authenticator
from ..config import Config
from ..events.trace import new_request_id
from ..executor import pin_server_cpu
from ..observability.metrics import ClusterCollector
from ..wiring import GatewayServices
from ..wiring.deploy import deploy_folders
from . import admin, asyncapi, aws, deploy, invoke, lambda_api, operations, schedules, sns_api, unavailable
from .console.router import router as console_router
from .common import request_id
from .errors import error, is_aws_api
from .guard import AuthMiddleware
from .hot import FunctionUrlHosts, HotPath


# How long one Redis call of the gateway may take before the request is answered 503 (unavailable.py): a
# Redis that does not answer within this is, for a caller waiting on an HTTP answer, one that is down.
REDIS_CONNECT_TIMEOUT_S = 1.0
REDIS_TIMEOUT_S = 2.0


class RequestIdMiddleware:
    """Gives every request an id (the invocation's request id) and every answer `X-Request-Id`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = new_request_id()
        scope.setdefault("state", {})["request_id"] = rid
        header = (b"x-request-id", rid.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        await self.app(scope, receive, send_with_id)


class _Gateway(FastAPI):
    """FastAPI with middleware of our own wrapped around its whole stack (`wrap`)."""

    def __init__(self, *, wrap: Callable[[ASGIApp], ASGIApp], **kwargs: Any) -> None:
        if "telemetry" in inspect.signature(FastAPI.__init__).parameters and not any(
                key.startswith("OTEL_") for key in os.environ):
            # FastAPI's OpenTelemetry bridge (0.16x) asks on every request whether a tracer, meter or logger
            # provider has been set: 2.5 us of a warm call. Nothing sets one unless OpenTelemetry is configured,
            # which is done with OTEL_* variables: without any, the bridge is off.
            kwargs["telemetry"] = {"tracing": False, "metrics": False, "logs": False}
        super().__init__(**kwargs)
        self._wrap = wrap

    def build_middleware_stack(self) -> ASGIApp:
        return self._wrap(super().build_middleware_stack())


def create_app(config: Config, *, environ: Mapping[str, str] | None = None, deploy_functions: bool = True,
               generated_admin_secret: str | None = None) -> FastAPI:
    """The gateway. `environ` holds the secrets named by `auth.keys` (the CLI passes os.environ);
    `generated_admin_secret` is the key of admin_key.py, for when `auth.keys` configures no admin key."""
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        pin_server_cpu(config)      # the gateway alone pins itself (sandbox.separate_cpu): see executor.cpus
        svc = await GatewayServices.start(config, redis_connect_timeout_s=REDIS_CONNECT_TIMEOUT_S,
                                          redis_timeout_s=REDIS_TIMEOUT_S)
        if deploy_functions:
            await deploy_folders(config, svc.catalog, svc.executor)
        app.state.services = svc
        collector = ClusterCollector(lambda: svc.asyncq.depths(svc.catalog.names()), health=svc.health)
        REGISTRY.register(collector)
        # Everything loaded so far lives as long as the process: out of the collector's sight, a full
        # collection no longer walks it. Those walks were the gateway's p99 at 32 callers (50 ms -> 16 ms).
        gc.collect()
        gc.freeze()
        try:
            yield {}
        finally:
            REGISTRY.unregister(collector)
            await svc.stop()

    def outside_fastapi(stack: ASGIApp) -> ASGIApp:
        # Outermost first: every answer carries a request id, keys are checked before any route, and the
        # invoke routes are answered before FastAPI's own layers (hot.py).
        authenticator = Authenticator(config, environ or {}, generated_secret=generated_admin_secret)
        guarded = AuthMiddleware(HotPath(stack, owner=app), authenticator=authenticator,
                                 require_invoke_key=config.auth.require_invoke_key,
                                 max_body_bytes=max(config.deploy.zipped_limit_bytes,
                                                    config.gateway.sync_payload_limit_bytes))
        return RequestIdMiddleware(FunctionUrlHosts(guarded, url_domain=config.gateway.url_domain))

    app = _Gateway(title="Lambent", version="0.1.0", lifespan=lifespan, wrap=outside_fastapi,
                   description="A self-hosted, AWS-Lambda-like function runtime.")
    app.include_router(invoke.router)
    app.include_router(aws.router)
    lambda_api.install(app, config=config, environ=environ or {}, generated_admin_secret=generated_admin_secret)
    app.include_router(admin.router)
    app.include_router(asyncapi.router)
    app.include_router(schedules.router)
    app.include_router(deploy.router)
    app.include_router(operations.router)
    app.include_router(console_router)
    app.include_router(sns_api.router)
    unavailable.install(app)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code in (404, 405) and is_aws_api(request.url.path):
            return lambda_api.unsupported.answer(request)          # AWS's answer, never `no route`
        code = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status_code, "HttpError")
        message = f"no route {request.method} {request.url.path}" if exc.status_code in (404, 405) else exc.detail
        return error(exc.status_code, code, str(message), request_id=request_id(request))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return error(400, "InvalidRequest", problems, request_id=request_id(request))

    return app
