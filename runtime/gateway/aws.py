"""The AWS Lambda Invoke API, so that boto3 and the AWS CLI work unchanged against Lambent.

`POST /2015-03-31/functions/{FunctionName}/invocations`, with FunctionName as a name, a name with a
qualifier, a partial ARN (`123456789012:function:name`) or a full ARN.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response

from ..executor import Busy, InvocationResult, Outcome
from ..functions.catalog import NotFound, Target
from ..wiring import GatewayServices
from .common import header, query_param
from .errors import BodyTooLarge, aws_error
from .invoke_flow import InvokeApi, Ref, Refused
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


class _Aws(InvokeApi):
    """AWS's words: errors as botocore reads them (aws_error), `x-amzn-RequestId` on every answer, a function error
    as 200 with X-Amz-Function-Error, the log tail and the client context of the API."""

    type_header = b"x-amz-invocation-type"

    def ref(self, request: Request, svc: GatewayServices, rid: str) -> Ref:
        function_name = request.path_params["function_name"]
        qualifier = query_param(request, "Qualifier")
        try:
            ref = function_ref(svc, function_name, qualifier)   # as the control plane's operations take names
        except ApiError as exc:
            raise Refused(exc.response(request)) from None
        return Ref(ref.name, ref.label, bool(qualifier) or ":" in function_name.rsplit("function:", 1)[-1])

    def client_context(self, request: Request, rid: str) -> Any:
        if not (encoded := header(request, b"x-amz-client-context")):
            return None
        try:
            return orjson.loads(base64.b64decode(encoded, validate=True))
        except (binascii.Error, orjson.JSONDecodeError):
            raise Refused(aws_error(400, "InvalidRequestContentException",
                                    "X-Amz-Client-Context must be base64-encoded JSON", request_id=rid)) from None

    def bad_type(self, invocation_type: str, rid: str) -> Response:
        return aws_error(400, "InvalidParameterValueException", f"Invalid invocation type: {invocation_type}",
                         request_id=rid)

    def too_large(self, exc: BodyTooLarge, rid: str) -> Response:
        return aws_error(413, "RequestTooLargeException",
                         f"Request must be smaller than {exc.limit} bytes for the InvokeFunction operation",
                         request_id=rid)

    def bad_json(self, problem: str, rid: str) -> Response:
        return aws_error(400, "InvalidRequestContentException", f"Could not parse request body into json: {problem}",
                         request_id=rid)

    def not_found(self, exc: NotFound, svc: GatewayServices, ref: Ref, rid: str) -> Response:
        return aws_error(404, "ResourceNotFoundException",
                         f"Function not found: {svc.executor.arn(ref.function, ref.qualifier)}", request_id=rid)

    def dry_run(self, target: Target, rid: str) -> Response:
        return Response(status_code=204, headers={"x-amzn-RequestId": rid,
                                                  "X-Amz-Executed-Version": target.executed_version})

    def accepted(self, trace: str, rid: str) -> Response:
        return Response(status_code=202, headers={"x-amzn-RequestId": rid, "X-Amzn-Trace-Id": trace})

    def busy(self, exc: Busy, rid: str) -> Response:
        return aws_error(429, "TooManyRequestsException", "Rate Exceeded.", request_id=rid,
                         Reason="ConcurrentInvocationLimitExceeded")

    def answer(self, request: Request, svc: GatewayServices, target: Target, result: InvocationResult, trace: str,
               rid: str) -> Response:
        if result.outcome is Outcome.THROTTLED:
            return aws_error(429, "TooManyRequestsException", "Rate Exceeded.", request_id=rid,
                             Reason="ReservedFunctionConcurrentInvocationLimitExceeded")
        headers = {"x-amzn-RequestId": rid, "X-Amz-Executed-Version": target.executed_version,
                   "X-Amzn-Trace-Id": trace}
        if result.outcome.is_function_error:
            headers["X-Amz-Function-Error"] = "Unhandled"
        if header(request, b"x-amz-log-type") == "Tail":
            tail = result.logs.encode()[-svc.config.logs.tail_bytes:]
            headers["X-Amz-Log-Result"] = base64.b64encode(tail).decode()
        return Response(result.payload, status_code=200, media_type="application/json", headers=headers)


# The route's body, also answered in front of FastAPI (hot.py; see invoke.handle_invoke).
handle_invoke = _Aws()


@router.post("/2015-03-31/functions/{function_name}/invocations", tags=["AWS Lambda API"],
             summary="Invoke (AWS Lambda API)", openapi_extra=_DOC)
async def invoke(function_name: str, request: Request, Qualifier: str | None = None) -> Response:
    return await handle_invoke(request)
