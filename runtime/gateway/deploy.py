"""Deploying over HTTP: `PUT /functions/{name}/code` (a zip), and aliases for roll forward and back."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request, Response

from ..functions.catalog import NotFound
from ..functions.deps import DepsError
from ..functions.package import CodeError
from ..wiring import deploy as pipeline
from .common import bad_name, read_body, request_id, services
from .errors import BodyTooLarge, error

router = APIRouter()

_DEPLOY_DOC = {
    "requestBody": {"content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}}},
    "responses": {
        "201": {"description": "A new version: {function, version, created: true, codeHash, codeSize}"},
        "200": {"description": "Same content as the newest version: nothing changed (created: false)"},
        "400": {"description": "Refused, nothing changed: a bad zip, function.yaml, requirements or handler"},
        "413": {"description": "The zip is over deploy.zipped_limit_bytes"},
    },
}


@router.put("/functions/{name}/code", tags=["deploy"], summary="Deploy a function folder (zip) as a new version",
            openapi_extra=_DEPLOY_DOC)
async def deploy(name: str, request: Request, alias: str | None = None) -> Response:
    svc = services(request)
    rid = request_id(request)
    if (bad := bad_name(request, name)) is not None:
        return bad
    if svc.health.down:         # refused before the upload, the install and the trial import, not after
        raise svc.health.unavailable()
    try:
        body = await read_body(request, pipeline.limits(svc.config).zipped_bytes)
    except BodyTooLarge as exc:
        return error(413, "CodeTooLarge", f"{exc}; trim the folder (see .lambentignore)", request_id=rid)
    try:
        package = await pipeline.checked(svc.config, body)
        result = await pipeline.deploy(svc.catalog, svc.executor, name, package)
    except CodeError as exc:
        return error(400, "InvalidCode", str(exc), request_id=rid)
    except DepsError as exc:
        return error(400, "DependencyInstallFailed", f"pip could not install requirements.txt: {exc}",
                     request_id=rid, output=exc.output)
    except pipeline.InitFailed as exc:
        return error(400, "InitFailed", str(exc), request_id=rid, errorType=exc.error["errorType"],
                     errorMessage=exc.error["errorMessage"], logs=exc.error.get("logs", ""))
    assert result.version is not None          # a deploy publishes
    number = result.version.number
    answer: dict[str, Any] = {"function": name, "version": number, "created": result.created,
                              "codeHash": package.code_hash, "codeSize": len(body)}
    if alias:
        try:
            await svc.catalog.set_alias(name, alias, number)
        except ValueError as exc:
            return error(400, "InvalidAlias", f"deployed version {number}, but: {exc}", request_id=rid,
                         version=number)
        answer["alias"] = alias
    return Response(orjson.dumps(answer), status_code=201 if result.created else 200, media_type="application/json")


@router.get("/functions/{name}/aliases", tags=["deploy"], summary="A function's aliases")
async def list_aliases(name: str, request: Request) -> Response:
    svc = services(request)
    if svc.catalog.latest(name) is None:
        return error(404, "ResourceNotFound", f"Function not found: {name}", request_id=request_id(request))
    return Response(orjson.dumps({"function": name, "aliases": svc.catalog.aliases(name)}),
                    media_type="application/json")


@router.put("/functions/{name}/aliases/{alias}", tags=["deploy"],
            summary='Point an alias at a version: {"version": 3}; a rollback is pointing it back')
async def put_alias(name: str, alias: str, request: Request) -> Response:
    svc = services(request)
    rid = request_id(request)
    try:
        body = orjson.loads(await request.body() or b"null")
    except orjson.JSONDecodeError:
        body = None
    version = body.get("version") if isinstance(body, dict) else None
    if isinstance(version, str) and version.isdigit():
        version = int(version)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        return error(400, "InvalidRequestContent", 'send {"version": N} with an existing version number',
                     request_id=rid)
    if svc.catalog.latest(name) is None:
        return error(404, "ResourceNotFound", f"Function not found: {name}", request_id=rid)
    try:
        await svc.catalog.set_alias(name, alias, version)
    except NotFound as exc:
        return error(404, "ResourceNotFound", str(exc), request_id=rid)
    except ValueError as exc:
        return error(400, "InvalidAlias", str(exc), request_id=rid)
    return Response(orjson.dumps({"function": name, "alias": alias, "version": version}),
                    media_type="application/json")


@router.delete("/functions/{name}/aliases/{alias}", tags=["deploy"], summary="Remove an alias")
async def delete_alias(name: str, alias: str, request: Request) -> Response:
    svc = services(request)
    if not await svc.catalog.delete_alias(name, alias):
        return error(404, "ResourceNotFound", f"no alias {alias} on {name}", request_id=request_id(request))
    return Response(orjson.dumps({"function": name, "deleted": alias}), media_type="application/json")
