"""GetFunction's `Code.Location`: a link on this gateway that downloads a version's zip, presigned as AWS's is.

AWS answers a presigned S3 URL that works without credentials for 10 minutes: tools fetch it with a plain
HTTP GET (`curl "$(aws lambda get-function ... --query Code.Location --output text)"`). The link here is the
same kind: `GET /functions/{name}/code/{code hash}.zip?expires=...&signature=...`, where the signature is
an HMAC-SHA256 over (function, code hash, expiry). Like an S3 object's link it names content, not a version: a
link of $LATEST keeps giving the code GetFunction saw, whatever $LATEST becomes. The guard lets the path through
(guard.need_of: "open"); this route checks the signature and the expiry, so the link alone is the credential, for
10 minutes.

The HMAC key is derived from the admin key (the first configured admin key by id, else the generated one), so
that every gateway of a cluster, which shares its keys, accepts the links of the others; changing the admin
key voids the links it signed. Without any admin secret, a random key of this process is used.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time
from dataclasses import dataclass
from typing import Mapping

from fastapi import APIRouter, Request, Response

from ...config import Config
from ...functions.catalog import Version
from ...functions.spec import NAME_RE
from ..common import request_id, services
from ..errors import error

log = logging.getLogger(__name__)
router = APIRouter()

_HASH = re.compile(r"^[0-9a-f]{64}$")
LIFETIME_S = 600          # AWS's presigned Location lasts 10 minutes
_PURPOSE = b"lambent code location v1"     # the derived key signs links only, never anything an admin key signs


@dataclass(frozen=True)
class CodeLinks:
    """Signs and checks the links of `Code.Location`."""
    key: bytes

    @classmethod
    def from_config(cls, config: Config, environ: Mapping[str, str], generated_secret: str | None) -> CodeLinks:
        admins = sorted((key.id, environ.get(key.secret_env, "")) for key in config.auth.keys if key.role == "admin")
        secret = next((value for _, value in admins if value), None)
        if secret is None and not admins:
            secret = generated_secret
        if secret is None:
            log.warning("no admin secret to sign code links with: links of GetFunction work on this gateway only")
            secret = secrets.token_hex(32)
        return cls(key=hmac.new(secret.encode(), _PURPOSE, hashlib.sha256).digest())

    def signature(self, function: str, code_hash: str, expires: int) -> str:
        return hmac.new(self.key, f"{function}\n{code_hash}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def location(self, request: Request, version: Version, *, now: float | None = None) -> str:
        expires = int(now if now is not None else time.time()) + LIFETIME_S
        base = str(request.base_url).rstrip("/")
        signature = self.signature(version.function, version.code_hash, expires)
        return (f"{base}/functions/{version.function}/code/{version.code_hash}.zip"
                f"?expires={expires}&signature={signature}")

    def valid(self, function: str, code_hash: str, expires: str, signature: str) -> bool:
        if not expires.isdigit():
            return False
        return hmac.compare_digest(self.signature(function, code_hash, int(expires)), signature)


def code_links(request: Request) -> CodeLinks:
    links: CodeLinks = request.app.state.code_links
    return links


@router.get("/functions/{name}/code/{code_hash}.zip", tags=["AWS Lambda API"],
            summary="A version's code zip: GetFunction's Code.Location, presigned for 10 minutes")
async def download(name: str, code_hash: str, request: Request) -> Response:
    rid = request_id(request)
    expires = request.query_params.get("expires", "")
    signature = request.query_params.get("signature", "")
    if not NAME_RE.match(name) or not _HASH.match(code_hash) or not code_links(request).valid(
            name, code_hash, expires, signature):
        return error(403, "AccessDenied", "this link is not one GetFunction gave (its signature does not match): "
                     "call GetFunction for the version's Code.Location", request_id=rid)
    if int(expires) < time.time():
        return error(403, "AccessDenied", f"this link expired at {expires} (links last {LIFETIME_S} s): call "
                     "GetFunction again for a new Code.Location", request_id=rid)
    blob = await services(request).catalog.code_zip(code_hash)
    if blob is None:
        return error(404, "ResourceNotFound", f"the code {code_hash[:12]} of {name} is no longer stored",
                     request_id=rid)
    return Response(blob, media_type="application/zip",
                    headers={"Content-Disposition": f'attachment; filename="{name}-{code_hash[:12]}.zip"',
                             "ETag": f'"{code_hash}"'})
