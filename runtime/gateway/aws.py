"""The AWS Lambda Invoke API, so that boto3 and the AWS CLI work unchanged against Lambent.

`POST /2015-03-31/functions/{FunctionName}/invocations`, with FunctionName as a name, a name with a
qualifier, a partial ARN (`123456789012:function:name`) or a full ARN.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses

import orjson
from fastapi import APIRouter, Request, Response

from ..events.trace import trace_header
from ..executor import Busy, Outcome
from ..functions.catalog import NotFound
from .asyncapi import accept
from .common import header, json_problem, read_body, request_id, services
from .errors import BodyTooLarge, aws_error
from .lambda_api.shared import ApiError, function_ref

router = APIRouter()


_DOC = {
    "parameters": [
        {"name": "X-Amz-Invocation-Type", "in": "header", "schema": {
            "type": "string", "enum": ["RequestResponse", "Event", "DryRun"]}},
        {"name": "X-Amz-Log-Type", "in": "header", "schema": {"type": "string", "enum": ["None", "Tail"]}},
        {"name": "X-Amz-Client-Context", "in": "header", "schema": {"type": "string"},
         "description": "base64 of a JSON object, passed as context.client_context"},
    ],
    "requestBody": {"content": {"application/json": {"schema": {"description": "the event"}}}},
    "responses": {"200": {"description": "The result, or the error with X-Amz-Function-Error: Unhandled"},
                  "204": {"description": "DryRun: the function exists and may be invoked"}},
}


@router.post("/2015-03-31/functions/{function_name}/invocations", tags=["AWS Lambda API"],
             summary="Invoke (AWS Lambda API)", openapi_extra=_DOC)
async def invoke(function_name: str, request: Request, Qualifier: str | None = None) -> Response:
    return await handle_invoke(request)


async def handle_invoke(request: Request) -> Response:
    """The route's body, also mounted as a plain Starlette route (see invoke.handle_invoke)."""
    function_name = request.path_params["function_name"]
    Qualifier = request.query_params.get("Qualifier")
    rid = request_id(request)
    svc = services(request)
    invocation_type = header(request, b"x-amz-invocation-type", "RequestResponse")
    if invocation_type not in ("RequestResponse", "Event", "DryRun"):
        return aws_error(400, "InvalidParameterValueException",
                         f"Invalid invocation type: {invocation_type}", request_id=rid)
    try:
        ref = function_ref(svc, function_name, Qualifier)       # as the control plane's operations take names
    except ApiError as exc:
        return exc.response(request)
    name, qualifier = ref.name, ref.label
    limit = (svc.config.gateway.async_payload_limit_bytes if invocation_type == "Event"
             else svc.config.gateway.sync_payload_limit_bytes)
    try:
        body = await read_body(request, limit)
    except BodyTooLarge:
        return aws_error(413, "RequestTooLargeException",
                         f"Request must be smaller than {limit} bytes for the InvokeFunction operation",
                         request_id=rid)
    if (problem := json_problem(body)) is not None:
        return aws_error(400, "InvalidRequestContentException",
                         f"Could not parse request body into json: {problem}", request_id=rid)
    client_context = None
    if (encoded := header(request, b"x-amz-client-context")):
        try:
            client_context = orjson.loads(base64.b64decode(encoded, validate=True))
        except (binascii.Error, orjson.JSONDecodeError):
            return aws_error(400, "InvalidRequestContentException",
                             "X-Amz-Client-Context must be base64-encoded JSON", request_id=rid)
    try:
        target = await svc.catalog.resolve(name, qualifier)
    except NotFound:
        arn = svc.executor.arn(name, qualifier)
        return aws_error(404, "ResourceNotFoundException", f"Function not found: {arn}", request_id=rid)
    if Qualifier or ":" in function_name.rsplit("function:", 1)[-1]:
        target = dataclasses.replace(target, named=True)
    headers = {"x-amzn-RequestId": rid, "X-Amz-Executed-Version": target.executed_version}
    if invocation_type == "DryRun":
        return Response(status_code=204, headers=headers)
    if invocation_type == "Event":
        trace = await accept(svc, target, body, rid, header(request, b"x-amzn-trace-id"))
        return Response(status_code=202, headers={"x-amzn-RequestId": rid, "X-Amzn-Trace-Id": trace})
    trace = trace_header(header(request, b"x-amzn-trace-id"))
    headers["X-Amzn-Trace-Id"] = trace
    try:
        # json_problem takes a blank body (whitespace only) as `{}`: send that, not the blank bytes.
        result = await svc.executor.invoke(target, body if body.strip() else b"{}", request_id=rid, trigger="sync",
                                           client_context=client_context, trace_id=trace)
    except Busy:
        return aws_error(429, "TooManyRequestsException", "Rate Exceeded.", request_id=rid,
                         Reason="ConcurrentInvocationLimitExceeded")
    if result.outcome is Outcome.THROTTLED:
        return aws_error(429, "TooManyRequestsException", "Rate Exceeded.", request_id=rid,
                         Reason="ReservedFunctionConcurrentInvocationLimitExceeded")
    if result.outcome.is_function_error:
        headers["X-Amz-Function-Error"] = "Unhandled"
    if header(request, b"x-amz-log-type") == "Tail":
        tail = result.logs.encode()[-svc.config.logs.tail_bytes:]
        headers["X-Amz-Log-Result"] = base64.b64encode(tail).decode()
    return Response(result.payload, status_code=200, media_type="application/json", headers=headers)
