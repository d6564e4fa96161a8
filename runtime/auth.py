"""Who is calling and what they may do: keys proven by a bearer secret or an AWS Signature Version 4.

Keys are `config.auth.keys`; each secret is read once from the environment variable the key names. With no
admin key configured, the gateway generates one (admin_key.py) and it counts as a configured key. A client
proves a key with `Authorization: Bearer <secret>` (the CLI, curl) or, as boto3 and the AWS CLI do, with a
SigV4 signature whose access key id is the key's `id`. Without an Authorization header the caller is
anonymous, wherever it connects from: no address is trusted, loopback included.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from typing import Literal, Mapping
from urllib.parse import quote, unquote_to_bytes

from . import admin_key
from .config import Config

log = logging.getLogger(__name__)

Need = Literal["admin", "invoke", "read"]

MAX_CLOCK_SKEW = timedelta(minutes=15)   # as AWS: a signature dated further from now is refused
_ALGORITHM = "AWS4-HMAC-SHA256"
_AMZ_DATE = "%Y%m%dT%H%M%SZ"
_UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")
_HOW_TO_SIGN = ("send 'Authorization: Bearer <secret>' (lambent CLI: --secret or LAMBENT_SECRET), or sign the "
                "request with AWS Signature Version 4 using the key's id as the access key id")


@dataclass(frozen=True, kw_only=True)
class Principal:
    """The caller: the key it proved (None when anonymous), that key's role, and how it was proved."""
    key_id: str | None
    role: Literal["admin", "invoke", "anonymous"]
    via: Literal["bearer", "sigv4", "none"]


ANONYMOUS = Principal(key_id=None, role="anonymous", via="none")


class AuthError(Exception):
    """A refused request. `code` is AWS's where AWS has one; `message` tells the client what to do."""

    def __init__(self, status: int, code: str, message: str, *, key_id: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.key_id = key_id      # the key the caller named, for the log


@dataclass(frozen=True, kw_only=True)
class _Key:
    id: str
    role: Literal["admin", "invoke"]
    secret: str
    digest: bytes    # sha256 of the secret: bearer tokens are compared digest to digest, in constant time


class Authenticator:
    """Identifies callers (`identify`) and checks what they may do (`require`); `authorize` does both."""

    def __init__(self, config: Config, environ: Mapping[str, str], *, generated_secret: str | None = None) -> None:
        """`generated_secret`: the key of admin_key.py, used only while `auth.keys` configures no admin key."""
        self._require_invoke_key = config.auth.require_invoke_key
        # A configured admin key whose secret is missing still counts: admin stays locked rather than
        # falling back to the generated key because a variable was not exported.
        configured_admin = any(key.role == "admin" for key in config.auth.keys)
        keys: dict[str, _Key] = {}
        for key in config.auth.keys:
            secret = environ.get(key.secret_env)
            if not secret:
                log.warning("auth key skipped: its secret variable is not set or empty",
                            extra={"key_id": key.id, "variable": key.secret_env})
            elif key.id in keys:
                log.warning("auth key skipped: another key has the same id", extra={"key_id": key.id})
            else:
                keys[key.id] = _Key(id=key.id, role=key.role, secret=secret,
                                    digest=hashlib.sha256(secret.encode()).digest())
        if generated_secret and not configured_admin:
            if admin_key.KEY_ID in keys:
                log.warning("the generated admin key is not used: a configured key has its id",
                            extra={"key_id": admin_key.KEY_ID})
            else:
                keys[admin_key.KEY_ID] = _Key(id=admin_key.KEY_ID, role="admin", secret=generated_secret,
                                              digest=hashlib.sha256(generated_secret.encode()).digest())
        self._has_admin_key = configured_admin or admin_key.KEY_ID in keys
        self._has_keys = bool(config.auth.keys) or self._has_admin_key
        self._keys = keys

    @property
    def has_admin_key(self) -> bool:
        return self._has_admin_key

    @property
    def has_keys(self) -> bool:
        """Any key is configured: then reads that can hold a secret need one (see guard.need_of)."""
        return self._has_keys

    def identify(self, *, method: str, path: str, query: str, headers: Mapping[str, str], body: bytes,
                 client_host: str | None) -> Principal:
        """The caller of one request, or AuthError when its credentials do not hold.

        `path` is the path exactly as sent on the wire, still percent-encoded (ASGI `scope["raw_path"]`
        decoded as latin-1), and `query` the raw query string: SigV4 signs the encoded form.
        """
        try:
            return self._identify(method=method, path=path, query=query, headers=headers, body=body)
        except AuthError as exc:
            _log_refusal(exc, path=path, client_host=client_host)
            raise

    def require(self, principal: Principal, *, need: Need, path: str | None = None,
                client_host: str | None = None) -> None:
        """Raise AuthError unless `principal` may do `need`; `path` and `client_host` go to the log."""
        if self.allows(principal, need):
            return
        error = self._refusal(principal, need)
        _log_refusal(error, path=path, client_host=client_host)
        raise error

    def authorize(self, *, need: Need, method: str, path: str, query: str, headers: Mapping[str, str],
                  body: bytes, client_host: str | None) -> Principal:
        """`identify` then `require`, the one call a route makes.

        Credentials that do not hold are refused only where they matter: where an anonymous caller would
        pass, the request goes on as anonymous. boto3 always signs, with whatever key it has, so this is
        what lets `aws_access_key_id="any"` invoke while no key is required.
        """
        try:
            principal = self._identify(method=method, path=path, query=query, headers=headers, body=body)
        except AuthError as exc:
            if self.allows(ANONYMOUS, need):
                log.debug("credentials ignored: not needed here",
                          extra={"key_id": exc.key_id, "path": path, "client": client_host, "reason": exc.code})
                return ANONYMOUS
            _log_refusal(exc, path=path, client_host=client_host)
            raise
        self.require(principal, need=need, path=path, client_host=client_host)
        return principal

    def allows(self, principal: Principal, need: Need) -> bool:
        if principal.role == "admin":
            return True
        if need == "admin":
            return False
        if need == "read":      # once any key is configured, reads that can hold secrets need one
            return principal.role == "invoke" or not self._has_keys
        return principal.role == "invoke" or not self._require_invoke_key

    def _refusal(self, principal: Principal, need: Need) -> AuthError:
        if principal.role != "anonymous":
            return AuthError(403, "AccessDeniedException",
                             f"key '{principal.key_id}' has role '{principal.role}'; this operation needs a key "
                             f"with role 'admin'", key_id=principal.key_id)
        if need == "invoke":
            return AuthError(401, "MissingAuthenticationTokenException",
                             f"invocations need a key (auth.require_invoke_key is true): {_HOW_TO_SIGN}")
        if need == "read":
            return AuthError(401, "MissingAuthenticationTokenException",
                             f"this read can hold secrets and needs a key of any role: {_HOW_TO_SIGN}")
        hint = ""
        if admin_key.KEY_ID in self._keys:
            hint = (f"; no admin key is configured, so the gateway generated one ({admin_key.FILE_NAME} in its "
                    "data dir), which the lambent CLI on the server's host finds by itself")
        return AuthError(401, "MissingAuthenticationTokenException",
                         f"this operation needs a key with role 'admin': {_HOW_TO_SIGN}{hint}")

    def _identify(self, *, method: str, path: str, query: str, headers: Mapping[str, str],
                  body: bytes) -> Principal:
        fields = _header_lists(headers)
        authorization = fields.get("authorization")
        if authorization is None:
            return ANONYMOUS
        if len(authorization) > 1:
            raise AuthError(401, "InvalidToken", "send one Authorization header, not several")
        scheme, _, credentials = authorization[0].strip().partition(" ")
        if scheme.lower() == "bearer":
            key = self._bearer(credentials.strip())
            return Principal(key_id=key.id, role=key.role, via="bearer")
        if scheme == _ALGORITHM:
            key = self._sigv4(credentials, method=method, path=path, query=query, headers=fields, body=body)
            return Principal(key_id=key.id, role=key.role, via="sigv4")
        raise AuthError(401, "InvalidToken", f"unsupported Authorization scheme '{scheme[:40]}': {_HOW_TO_SIGN}")

    def _bearer(self, token: str) -> _Key:
        digest = hashlib.sha256(_wire_bytes(token)).digest()
        found = None
        for key in self._keys.values():      # every key is compared, so the time taken says nothing
            if hmac.compare_digest(digest, key.digest) and found is None:
                found = key
        if found is None or not token:
            raise AuthError(401, "InvalidToken",
                            "the bearer token is not the secret of any configured key: check the secret "
                            "(lambent CLI: --secret or LAMBENT_SECRET)")
        return found

    def _sigv4(self, credentials: str, *, method: str, path: str, query: str, headers: dict[str, list[str]],
               body: bytes) -> _Key:
        """Verify an AWS Signature Version 4 as AWS does (and as botocore computes it)."""
        params = _sigv4_params(credentials)
        key_id, date, region, service, terminator = (params["Credential"].rsplit("/", 4) + [""] * 5)[:5]
        if not key_id or not re.fullmatch(r"\d{8}", date) or not region or not service \
                or terminator != "aws4_request":
            raise AuthError(400, "IncompleteSignatureException",
                            "Credential must be <access key id>/<YYYYMMDD>/<region>/<service>/aws4_request")
        signed = params["SignedHeaders"].split(";")
        if "host" not in signed:
            raise AuthError(400, "IncompleteSignatureException", "'Host' must be a signed header (SignedHeaders)",
                            key_id=key_id)
        key = self._keys.get(key_id)
        if key is None:
            raise AuthError(403, "UnrecognizedClientException",
                            f"the access key id '{key_id[:64]}' is not a configured key: use the id of a key "
                            "in auth.keys as the access key id and its secret as the secret access key",
                            key_id=key_id)
        amz_date, moment = _request_time(headers, key_id)
        if amz_date[:8] != date:
            raise AuthError(403, "InvalidSignatureException",
                            f"the date in the Credential scope ({date}) is not the date of X-Amz-Date "
                            f"({amz_date[:8]}): sign with one clock reading", key_id=key_id)
        now = datetime.now(timezone.utc)
        if abs(now - moment) > MAX_CLOCK_SKEW:
            raise AuthError(403, "RequestExpired",
                            f"Signature expired: {amz_date} is more than 15 minutes from the server's time "
                            f"{now.strftime(_AMZ_DATE)}: correct the client's clock and sign again",
                            key_id=key_id)
        canonical_headers = []
        for name in signed:
            values = headers.get(name)
            if values is None:
                raise AuthError(403, "InvalidSignatureException",
                                f"the request has no '{name[:64]}' header, though SignedHeaders names it",
                                key_id=key_id)
            canonical_headers.append(f"{name}:{','.join(' '.join(value.split()) for value in values)}\n")
        payload_hash = (headers.get("x-amz-content-sha256") or [hashlib.sha256(body).hexdigest()])[0]
        canonical_request = "\n".join([
            method.upper(), _canonical_path(path), _canonical_query(query), "".join(canonical_headers),
            params["SignedHeaders"], payload_hash])
        scope = f"{date}/{region}/{service}/aws4_request"
        string_to_sign = "\n".join([
            _ALGORITHM, amz_date, scope, hashlib.sha256(canonical_request.encode()).hexdigest()])
        signing_key = f"AWS4{key.secret}".encode()
        for part in (date, region, service, "aws4_request"):
            signing_key = hmac.new(signing_key, part.encode(), hashlib.sha256).digest()
        expected = hmac.new(signing_key, string_to_sign.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected.encode(), params["Signature"].encode()):
            raise AuthError(403, "InvalidSignatureException",
                            "The request signature we calculated does not match the signature you provided: "
                            "check the secret and that nothing between client and server changes the "
                            "method, path, query, signed headers or body", key_id=key_id)
        _check_payload_hash(payload_hash, body, key_id)
        return key


def _sigv4_params(credentials: str) -> dict[str, str]:
    """`Credential=..., SignedHeaders=..., Signature=...` as a dict; all three must be there."""
    params: dict[str, str] = {}
    for part in credentials.split(","):
        name, sep, value = part.strip().partition("=")
        if sep:
            params[name] = value.strip()
    missing = [name for name in ("Credential", "SignedHeaders", "Signature") if not params.get(name)]
    if missing:
        raise AuthError(400, "IncompleteSignatureException",
                        f"the AWS4-HMAC-SHA256 Authorization header lacks {', '.join(missing)}: send "
                        "'AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...'")
    return params


def _request_time(headers: dict[str, list[str]], key_id: str) -> tuple[str, datetime]:
    """The signing time as X-Amz-Date writes it, and as a datetime; from X-Amz-Date, else Date (as AWS)."""
    if "x-amz-date" in headers:
        value = headers["x-amz-date"][0].strip()
        if re.fullmatch(r"\d{8}T\d{6}Z", value):
            try:
                return value, datetime.strptime(value, _AMZ_DATE).replace(tzinfo=timezone.utc)
            except ValueError:
                pass
    elif "date" in headers:
        try:
            moment = parsedate_to_datetime(headers["date"][0]).astimezone(timezone.utc)
            return moment.strftime(_AMZ_DATE), moment
        except (TypeError, ValueError):
            pass
    raise AuthError(400, "IncompleteSignatureException",
                    "a signed request needs the signing time in X-Amz-Date, as YYYYMMDDTHHMMSSZ", key_id=key_id)


def _check_payload_hash(declared: str, body: bytes, key_id: str) -> None:
    """A signed X-Amz-Content-SHA256 vouches for the body only if the body matches it."""
    if declared == _UNSIGNED_PAYLOAD:
        return        # the client chose not to sign the body (botocore over HTTPS, payload signing off)
    if not _HEX_SHA256.fullmatch(declared):
        raise AuthError(400, "IncompleteSignatureException",
                        "X-Amz-Content-SHA256 must be the hex SHA-256 of the body or UNSIGNED-PAYLOAD; "
                        "chunked (streaming) signing is not supported", key_id=key_id)
    if not hmac.compare_digest(declared, hashlib.sha256(body).hexdigest()):
        raise AuthError(403, "InvalidSignatureException",
                        "the body's SHA-256 does not match X-Amz-Content-SHA256: send the body that was signed",
                        key_id=key_id)


def _canonical_path(path: str) -> str:
    """The wire path, dot segments and empty segments removed, then URI-encoded once more.

    AWS services other than S3 encode the already-encoded path again: botocore signs `/functions/a%3Ab`
    as `/functions/a%253Ab` (`quote(normalize_url_path(path), safe="/~")`).
    """
    segments: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if segments:
                segments.pop()
        elif segment and segment != ".":
            segments.append(segment)
    normalized = "/" + "/".join(segments)
    if path.endswith("/") and segments:
        normalized += "/"
    return quote(normalized, safe="/~")


def _canonical_query(query: str) -> str:
    """Each name and value decoded and encoded again with only `-_.~` left bare, pairs sorted.

    '+' reads as a space, as the application reads the query: the values signed are the values used.
    """
    pairs = []
    for part in query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        pairs.append((_uri_encode(name), _uri_encode(value)))
    return "&".join(f"{name}={value}" for name, value in sorted(pairs))


def _uri_encode(component: str) -> str:
    return quote(unquote_to_bytes(component.replace("+", "%20")), safe="-_.~")


def _header_lists(headers: Mapping[str, str]) -> dict[str, list[str]]:
    """Lowercase name -> every value, in order (starlette's `Headers.items()` repeats a repeated header)."""
    lists: dict[str, list[str]] = {}
    for name, value in headers.items():
        lists.setdefault(name.lower(), []).append(value)
    return lists


def _wire_bytes(value: str) -> bytes:
    """The bytes a header value arrived as: ASGI servers decode headers as latin-1."""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode()


def _log_refusal(error: AuthError, *, path: str | None, client_host: str | None) -> None:
    log.warning("request refused: %s", error.message, extra={
        "key_id": error.key_id, "path": path, "client": client_host, "code": error.code, "status": error.status})
