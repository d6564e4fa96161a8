"""The Lambda control plane over the AWS API, the reads of what surrounds a function: GetAccountSettings and
Get/ListFunctionEventInvokeConfig(s) (function.yaml's `async`). Shapes and errors as in functions.py; event source
mappings are in sources.py, function URL configs in urls.py.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from ...functions.catalog import Version
from ...functions.spec import AsyncSpec
from ..common import services
from .shared import (ApiError, answer, function_arn, function_ref, marker_key, max_items, not_found, page, page_answer,
                     resolve, versions)
from .shapes import for_request

router = APIRouter(tags=["AWS Lambda API"])

AWS_TOTAL_CODE_SIZE = 80530636800    # Lambda's default account limit (75 GB): Lambent sets none but Redis's memory


# -- account --------------------------------------------------------------------------------


@router.get("/2016-08-19/account-settings", summary="GetAccountSettings")
async def get_account_settings(request: Request) -> Response:
    """Limits as Lambent applies them: the deploy limits, and this node's sandboxes as the concurrency limit."""
    svc = services(request)
    config = svc.config
    heads = [version for name in svc.catalog.names() if (version := svc.catalog.latest(name)) is not None]
    # $LATEST's code may be in no published version yet
    stored = heads + [version for head in heads for version in await svc.catalog.list_versions(head.function)]
    sizes = await svc.catalog.code_sizes(version.code_hash for version in stored)
    limit = config.sandbox.max_per_node
    reserved = sum(head.spec.reserved_concurrency or 0 for head in heads)
    return answer(request, {
        "AccountLimit": {"TotalCodeSize": AWS_TOTAL_CODE_SIZE, "CodeSizeUnzipped": config.deploy.unzipped_limit_bytes,
                         "CodeSizeZipped": config.deploy.zipped_limit_bytes, "ConcurrentExecutions": limit,
                         "UnreservedConcurrentExecutions": max(0, limit - reserved)},
        # Code is stored once per content: the total is of the distinct zips.
        "AccountUsage": {"TotalCodeSize": sum(sizes.get(code, 0) for code in {v.code_hash for v in stored}),
                         "FunctionCount": len(heads)},
    })


# -- asynchronous invocation ----------------------------------------------------------------


def _configured(version: Version) -> bool:
    """Whether function.yaml sets `async`: without it Lambda has no EventInvokeConfig (its defaults apply)."""
    return version.spec.async_ != AsyncSpec()


@router.get("/2019-09-25/functions/{function_name}/event-invoke-config", summary="GetFunctionEventInvokeConfig")
async def get_function_event_invoke_config(function_name: str, request: Request) -> Response:
    svc = services(request)
    ref = function_ref(svc, function_name, request.query_params.get("Qualifier"))
    missing = not_found(f"The function {function_arn(svc, ref.name, ref.label)} doesn't have an EventInvokeConfig")
    try:
        item = await resolve(svc, ref)
    except ApiError:
        raise missing from None
    if not _configured(item.version):
        raise missing
    shapes = await for_request(request, [])
    return answer(request, shapes.event_invoke_config(item, arn_qualifier=ref.label))


@router.get("/2019-09-25/functions/{function_name}/event-invoke-config/list",
            summary="ListFunctionEventInvokeConfigs")
async def list_function_event_invoke_configs(function_name: str, request: Request) -> Response:
    svc = services(request)
    ref = function_ref(svc, function_name)
    size = max_items(request, limit=50) or 50
    configured = [item for item in await versions(svc, ref.name) if _configured(item.version)]
    chosen, marker = page(configured, lambda item: item.key, start=marker_key(request), size=size)
    shapes = await for_request(request, [])
    return page_answer(request, "FunctionEventInvokeConfigs", [
        shapes.event_invoke_config(item, arn_qualifier=item.label) for item in chosen], marker)
