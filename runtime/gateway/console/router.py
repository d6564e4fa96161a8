"""`GET /console` (the page) and `GET /console/static/{name}` (its script and style sheet).

The files are read from this package (importlib.resources), so they work from a wheel as from a
checkout; only the files listed here are served, so no path reaches anything else.
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, Request, Response

from ..common import request_id
from ..errors import error

router = APIRouter(include_in_schema=False)

_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
_STATIC = frozenset({"console.js", "console.css"})
# Everything the page uses comes from this origin; the secret may be in the page's URL, so no Referer.
_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
}


def _read(name: str) -> bytes:
    return resources.files(__package__).joinpath(name).read_bytes()


@router.get("/console")
async def console_page() -> Response:
    return Response(_read("index.html"), media_type="text/html; charset=utf-8", headers=_HEADERS)


@router.get("/console/static/{name}")
async def console_static(name: str, request: Request) -> Response:
    if name not in _STATIC:
        return error(404, "NotFound", f"no console file '{name}'", request_id=request_id(request))
    return Response(_read(name), media_type=_TYPES[name[name.rindex("."):]], headers=_HEADERS)
