"""The Lambda control plane over the AWS API, the reads of functions: GetFunction, GetFunctionConfiguration,
ListFunctions, ListVersionsByFunction, GetAlias, ListAliases, GetFunctionConcurrency.

Paths, parameters, shapes, status codes and error types are those of botocore's lambda 2015-03-31 model, so
that boto3, the AWS CLI and the other AWS SDKs work unchanged with `endpoint_url` set to the gateway. They read
the same catalog that `lambent deploy` and the function folders write. Every GET here needs a key of any role
(guard.need_of: "read"); environment values are shown to admin keys only.
"""

from __future__ import annotations

import re
from typing import Mapping

from fastapi import APIRouter, FastAPI, Request, Response

from ...config import Config
from ...functions.catalog import LATEST, NotFound
from ..common import services
from . import changes, configs, downloads, settings, sources, tags, urls
from .downloads import CodeLinks, code_links
from .shared import (ApiError, FunctionRef, Published, alias_shapes, answer, function_arn, function_ref, latest,
                     marker_key, max_items, not_found, page, page_answer, resolve, unqualified, versions, violation)
from .shapes import Shapes, for_request

router = APIRouter(tags=["AWS Lambda API"])

_ALIAS = re.compile(r"^(?![0-9]+$)[a-zA-Z0-9_-]{1,128}$")
_VERSION_FILTER = re.compile(r"^(\$LATEST(\.PUBLISHED)?|[0-9]+)$")
FUNCTIONS_PAGE = 50       # Lambda returns at most 50 functions or versions per call, whatever MaxItems says


def install(app: FastAPI, *, config: Config, environ: Mapping[str, str], generated_admin_secret: str | None) -> None:
    """Mount the control plane's routes; answer its errors (and the operations not built) in AWS's shape."""
    app.state.code_links = CodeLinks.from_config(config, environ, generated_admin_secret)
    for module_router in (router, changes.router, configs.router, downloads.router, settings.router,
                          sources.router, tags.router, urls.router):
        app.include_router(module_router)

    async def aws_answer(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return exc.response(request)

    app.add_exception_handler(ApiError, aws_answer)


# -- functions ------------------------------------------------------------------------------


@router.get("/2015-03-31/functions", summary="ListFunctions")
async def list_functions(request: Request) -> Response:
    svc = services(request)
    every = request.query_params.get("FunctionVersion")
    if every is not None and every != "ALL":
        raise violation(every, "functionVersion", "Member must satisfy enum value set: [ALL]")
    size = min(max_items(request, limit=10000) or FUNCTIONS_PAGE, FUNCTIONS_PAGE)
    start = marker_key(request)
    entries: list[tuple[str, Published]] = []
    for name in svc.catalog.names():
        if name < start.partition("\0")[0]:
            continue
        try:
            shown = await versions(svc, name) if every else [item for item in [latest(svc, name)] if item]
        except ApiError:
            continue                   # deleted meanwhile
        entries += [(f"{name}\0{item.key}", item) for item in shown]
        if sum(key >= start for key, _ in entries) > size:
            break                      # one item past the page: enough to know there is a next page
    chosen, marker = page(entries, lambda entry: entry[0], start=start, size=size)
    shapes = await for_request(request, (item.version for _, item in chosen))
    return page_answer(request, "Functions", [
        shapes.configuration(item, arn_qualifier=item.label if every else None, listing=True)
        for _, item in chosen], marker)


@router.get("/2015-03-31/functions/{function_name}", summary="GetFunction")
async def get_function(function_name: str, request: Request) -> Response:
    svc = services(request)
    ref, item, shapes = await _qualified(request, function_name)
    body: dict[str, object] = {
        "Configuration": shapes.configuration(item, arn_qualifier=ref.qualifier),
        "Code": {"RepositoryType": "S3", "Location": code_links(request).location(request, item.version)},
    }
    # Reserved concurrency belongs to the function on Lambda: the newest version's function.yaml says it.
    reserved = (latest(svc, ref.name) or item).version.spec.reserved_concurrency
    if reserved is not None:
        body["Concurrency"] = {"ReservedConcurrentExecutions": reserved}
    if tags := await svc.catalog.tags(ref.name):
        body["Tags"] = tags
    return answer(request, body)


@router.get("/2015-03-31/functions/{function_name}/configuration", summary="GetFunctionConfiguration")
async def get_function_configuration(function_name: str, request: Request) -> Response:
    ref, item, shapes = await _qualified(request, function_name)
    return answer(request, shapes.configuration(item, arn_qualifier=ref.qualifier))


async def _qualified(request: Request, function_name: str) -> tuple[FunctionRef, Published, Shapes]:
    """The function (with the request's Qualifier) that a GetFunction* names, its version, and the shape builder."""
    ref = function_ref(services(request), function_name, request.query_params.get("Qualifier"))
    item = await resolve(services(request), ref)
    return ref, item, await for_request(request, [item.version])


@router.get("/2015-03-31/functions/{function_name}/versions", summary="ListVersionsByFunction")
async def list_versions_by_function(function_name: str, request: Request) -> Response:
    svc = services(request)
    ref = function_ref(svc, function_name)
    size = min(max_items(request, limit=10000) or FUNCTIONS_PAGE, FUNCTIONS_PAGE)
    start = marker_key(request)
    chosen, marker = page(await versions(svc, ref.name), lambda item: item.key, start=start, size=size)
    shapes = await for_request(request, (item.version for item in chosen))
    return page_answer(request, "Versions", [shapes.configuration(item, arn_qualifier=item.label) for item in chosen],
                       marker)


# -- aliases --------------------------------------------------------------------------------


@router.get("/2015-03-31/functions/{function_name}/aliases", summary="ListAliases")
async def list_aliases(function_name: str, request: Request) -> Response:
    svc = services(request)
    ref = function_ref(svc, function_name, max_length=140)
    wanted = request.query_params.get("FunctionVersion")
    if wanted is not None and not _VERSION_FILTER.match(wanted):
        raise violation(wanted, "functionVersion",
                        r"Member must satisfy regular expression pattern: (\$LATEST(\.PUBLISHED)?|[0-9]+)")
    size = max_items(request, limit=10000) or 50
    await resolve(svc, FunctionRef(name=ref.name, qualifier=None))
    aliases = sorted((alias, number) for alias, number in svc.catalog.aliases(ref.name).items()
                     if wanted is None or (LATEST if number == 0 else str(number)) == wanted)
    chosen, marker = page(aliases, lambda entry: entry[0], start=marker_key(request), size=size)
    shapes = await for_request(request, ())
    return page_answer(request, "Aliases", await alias_shapes(svc, shapes, ref.name, [alias for alias, _ in chosen]),
                       marker)


@router.get("/2015-03-31/functions/{function_name}/aliases/{alias}", summary="GetAlias")
async def get_alias(function_name: str, alias: str, request: Request) -> Response:
    svc = services(request)
    ref = function_ref(svc, function_name, max_length=140)
    if not _ALIAS.match(alias):
        raise violation(alias, "name", "Member must satisfy regular expression pattern: (?!^[0-9]+$)([a-zA-Z0-9-_]+)")
    await resolve(svc, FunctionRef(name=ref.name, qualifier=None))
    try:
        await svc.catalog.resolve(ref.name, alias)
    except NotFound:
        raise not_found(f"Cannot find alias arn: {function_arn(svc, ref.name, alias)}") from None
    shapes = await for_request(request, ())
    return answer(request, (await alias_shapes(svc, shapes, ref.name, [alias]))[0])


# -- concurrency and tags -------------------------------------------------------------------


@router.get("/2019-09-30/functions/{function_name}/concurrency", summary="GetFunctionConcurrency")
async def get_function_concurrency(function_name: str, request: Request) -> Response:
    svc = services(request)
    ref = function_ref(svc, function_name, max_length=140)
    unqualified(ref)
    item = await resolve(svc, FunctionRef(name=ref.name, qualifier=LATEST))
    reserved = item.version.spec.reserved_concurrency
    return answer(request, {} if reserved is None else {"ReservedConcurrentExecutions": reserved})
