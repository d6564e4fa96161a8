"""`POST /functions/{name}/invoke` and function URLs (`ANY NAME.<url_domain>/{path}`, `ANY /fn/{name}/{path}`)."""

from __future__ import annotations

import time

import orjson
from fastapi import APIRouter, Request, Response

from ..events import apigw
from ..events.trace import trace_header
from ..executor import Busy, InvocationResult, Outcome
from ..functions.catalog import NotFound, Target, split_name
from ..functions.spec import NAME_RE
from ..wiring import GatewayServices
from .common import header, query_param, read_body, request_id, services
from .errors import BodyTooLarge, error
from .invoke_flow import InvokeApi, Ref, Refused

# The request state's key naming the function whose URL host a request came to (set by hot.FunctionUrlHosts).
FUNCTION_URL = "function_url"

router = APIRouter()

_INVOKE_DOC = {
    "requestBody": {"content": {"application/json": {"schema": {"description": "the event, any JSON value"}}}},
    "responses": {
        "200": {"description": "The handler's return value, as JSON."},
        "202": {"description": "Accepted for asynchronous invocation (X-Invocation-Type: Event)."},
        "400": {"description": "The body is not JSON, or the name or qualifier is invalid."},
        "404": {"description": "No such function, version or alias."},
        "413": {"description": "The body is over the payload limit."},
        "429": {"description": "The function is at its reserved concurrency."},
        "500": {"description": "Function error: {errorType, errorMessage, stackTrace, requestId}, "
                               "header X-Function-Error: Unhandled."},
        "504": {"description": "The function timed out: errorType Sandbox.Timedout."},
    },
}

_STATUS = {Outcome.SUCCESS: 200, Outcome.TIMEOUT: 504, Outcome.THROTTLED: 429}


class _Native(InvokeApi):
    """Lambent's own words: `{"error", "message", "requestId"}` errors, the executed version under both headers."""

    type_header = b"x-invocation-type"

    def ref(self, request: Request, svc: GatewayServices, rid: str) -> Ref:
        name = request.path_params["name"]
        qualifier = query_param(request, "qualifier")
        try:
            function, chosen = split_name(name, qualifier)
        except ValueError as exc:
            raise Refused(error(400, "InvalidFunctionName", str(exc), request_id=rid)) from None
        return Ref(function, chosen, ":" in name or bool(qualifier))

    def bad_type(self, invocation_type: str, rid: str) -> Response:
        return error(400, "InvalidInvocationType",
                     f"X-Invocation-Type must be RequestResponse, Event or DryRun, not '{invocation_type}'",
                     request_id=rid)

    def too_large(self, exc: BodyTooLarge, rid: str) -> Response:
        return error(413, "RequestTooLarge", f"{exc}; send a smaller event", request_id=rid, limitBytes=exc.limit)

    def bad_json(self, problem: str, rid: str) -> Response:
        return error(400, "InvalidRequestContent", f"the body is not valid JSON: {problem}", request_id=rid)

    def not_found(self, exc: NotFound, svc: GatewayServices, ref: Ref, rid: str) -> Response:
        return error(404, "ResourceNotFound", str(exc), request_id=rid)

    def dry_run(self, target: Target, rid: str) -> Response:
        return Response(status_code=204, headers=_ran(target.executed_version))

    def accepted(self, trace: str, rid: str) -> Response:
        return Response(orjson.dumps({"requestId": rid, "status": "queued"}), status_code=202,
                        media_type="application/json", headers={"X-Amzn-Trace-Id": trace})

    def busy(self, exc: Busy, rid: str) -> Response:
        return error(429, "TooManyRequests", f"{exc}; retry later", request_id=rid,
                     reason="ConcurrentInvocationLimitExceeded")

    def answer(self, request: Request, svc: GatewayServices, target: Target, result: InvocationResult, trace: str,
               rid: str) -> Response:
        headers = {**_ran(result.executed_version), "X-Amzn-Trace-Id": trace}
        if result.outcome is Outcome.THROTTLED:
            return Response(orjson.dumps({
                "error": "TooManyRequests", "requestId": result.request_id,
                "reason": "ReservedFunctionConcurrentInvocationLimitExceeded",
                "message": f"{result.function} is at its reserved concurrency; retry later"}),
                status_code=429, media_type="application/json", headers={**headers, "Retry-After": "1"})
        if result.outcome.is_function_error:
            headers["X-Function-Error"] = "Unhandled"
        return Response(result.payload, status_code=_STATUS.get(result.outcome, 500),
                        media_type="application/json", headers=headers)


def _ran(version: str) -> dict[str, str]:
    """Which version ran (or would run), under Lambent's header and Lambda's, as README promises."""
    return {"X-Executed-Version": version, "X-Amz-Executed-Version": version}


# The route's body. app.py's HotPath (hot.py) answers the route with it in front of FastAPI, whose route then only
# documents it: FastAPI's parameter machinery costs ~10 % of a warm invocation.
handle_invoke = _Native()


@router.post("/functions/{name}/invoke", summary="Invoke a function", openapi_extra=_INVOKE_DOC,
             tags=["invoke"])
async def invoke(name: str, request: Request, qualifier: str | None = None) -> Response:
    """Synchronous by default; `X-Invocation-Type: Event` queues it; `DryRun` only checks it."""
    return await handle_invoke(request)


_URL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


@router.api_route("/fn/{name}", methods=_URL_METHODS, include_in_schema=False)
async def function_url_root(name: str, request: Request) -> Response:
    return await _function_url(request, name, "/")


@router.api_route("/fn/{name}/{path:path}", methods=_URL_METHODS, tags=["function URLs"],
                  summary="A function URL's fallback: the request becomes an API Gateway HTTP API (2.0) event; "
                          "the function URL itself is http://NAME.<gateway.url_domain>/")
async def function_url(name: str, path: str, request: Request) -> Response:
    # rawPath is what the caller sent after /fn/NAME, percent-encoding kept, as AWS passes a path on.
    raw = request.scope.get("raw_path") or request.scope["path"].encode()
    after = raw.decode("latin-1").split("/", 3)
    return await _function_url(request, name, "/" + (after[3] if len(after) > 3 else ""))


async def handle_function_url(request: Request) -> Response:
    """A request to the host `<name>.<gateway.url_domain>` (hot.py): its whole path is the function URL's."""
    name = request.scope["state"][FUNCTION_URL]
    raw = request.scope.get("raw_path") or request.scope["path"].encode()
    if not NAME_RE.match(name):          # a host label that cannot be a function's name (no qualifier either)
        return error(404, "NotFound", f"no function URL at {request.headers.get('host')}",
                     request_id=request_id(request))
    return await _function_url(request, name, raw.decode("latin-1"))


async def _function_url(request: Request, name: str, raw_path: str) -> Response:
    rid = request_id(request)
    svc = services(request)
    try:
        function, qualifier = split_name(name)
        target = await svc.catalog.resolve(function, qualifier)
    except (ValueError, NotFound):
        return error(404, "NotFound", f"no function URL for '{name}'", request_id=rid)
    if not target.version.spec.has_http:
        return error(404, "NotFound", f"{function} has no function URL: add `- http: {{}}` to its events",
                     request_id=rid)
    cors = next((event.http.cors for event in target.version.spec.events if event.http is not None), None)
    origin = header(request, b"origin")
    if cors is not None and request.method == "OPTIONS" and header(request, b"access-control-request-method"):
        # A browser's preflight: with Cors configured, Lambda answers it itself, without invoking the function.
        return Response(status_code=200, headers=dict(cors.headers(origin, preflight=True)))
    try:
        body = await read_body(request, svc.config.gateway.sync_payload_limit_bytes)
    except BodyTooLarge as exc:
        return error(413, "RequestTooLarge", str(exc), request_id=rid)
    client, server = request.client, request.scope.get("server")
    host = header(request, b"host") or (f"{server[0]}:{server[1]}" if server else "localhost")
    trace = trace_header(header(request, b"x-amzn-trace-id"))
    event = apigw.build_http_event(
        method=request.method, raw_path=raw_path, raw_query=request.scope["query_string"].decode("latin-1"),
        headers=request.scope["headers"], body=body, source_ip=client.host if client else "127.0.0.1",
        request_id=rid, host=host, scheme=request.scope["scheme"], url_id=function, trace_id=trace,
        now_ms=int(time.time() * 1000), account_id=svc.config.account_id)
    try:
        result = await svc.executor.invoke(target, orjson.dumps(event), request_id=rid, trigger="http",
                                           trace_id=trace)
    except Busy:
        return Response(b'{"Message":"Rate Exceeded."}', status_code=429, media_type="application/json")
    if result.outcome is Outcome.THROTTLED:
        return Response(b'{"Message":"Rate Exceeded."}', status_code=429, media_type="application/json")
    # A function error, or a response that cannot become HTTP, is AWS's plain-text 502, never the details.
    if not result.ok:
        return Response(b"Internal Server Error", status_code=502, media_type="text/plain",
                        headers={"X-Function-Error": "Unhandled"})
    try:
        answer = apigw.http_response(orjson.loads(result.payload))
    except apigw.ResponseShapeError:
        return Response(b"Internal Server Error", status_code=502, media_type="text/plain")
    headers = answer.headers
    if cors is not None:
        # Lambda's CORS headers replace any the function set.
        headers = [(key, value) for key, value in headers if not key.lower().startswith("access-control-")]
        headers += cors.headers(origin, preflight=False)
    response = Response(answer.body, status_code=answer.status)
    response.raw_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers] + [
        (b"content-length", str(len(answer.body)).encode())]
    return response
