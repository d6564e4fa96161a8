"""`Authenticator`: bearer secrets, AWS Signature Version 4 as botocore signs it, and who may do what.

Pure: requests are signed by botocore itself and handed to `identify` as a server sees them on the wire
(raw path still percent-encoded, raw query string, a Host header, starlette's case-insensitive Headers).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import logging
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import boto3
import botocore.auth
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from starlette.datastructures import Headers

from runtime.config import Config
from runtime.auth import Authenticator, AuthError, Principal

OPS_SECRET = "ops-secret-0123456789"
APP_SECRET = "app-secret-9876543210"
ENVIRON = {"LAMBENT_OPS_SECRET": OPS_SECRET, "LAMBENT_APP_SECRET": APP_SECRET}
KEYS = [{"id": "ops", "secret_env": "LAMBENT_OPS_SECRET", "role": "admin"},
        {"id": "app", "secret_env": "LAMBENT_APP_SECRET", "role": "invoke"}]
INVOKE_URL = "http://127.0.0.1:8080/2015-03-31/functions/hello/invocations?Qualifier=prod"
ARN_URL = ("http://127.0.0.1:8080/2015-03-31/functions/"
           "arn%3Aaws%3Alambda%3Aus-east-1%3A000000000000%3Afunction%3Ahello/invocations")
BODY = b'{"a":1}'


def authenticator(*, keys: list[dict[str, str]] | None = None, require_invoke_key: bool = False,
                  environ: dict[str, str] | None = None) -> Authenticator:
    config = Config.model_validate({"auth": {"require_invoke_key": require_invoke_key,
                                             "keys": KEYS if keys is None else keys}})
    return Authenticator(config, ENVIRON if environ is None else environ)


@dataclass(frozen=True, kw_only=True)
class Wire:
    """A request as the gateway receives it."""
    method: str
    path: str
    query: str
    headers: Headers
    body: bytes
    client_host: str | None = "10.0.0.7"

    @classmethod
    def of(cls, request: Any) -> Wire:
        """From a signed botocore request: what its HTTP client puts on the wire, Host header included."""
        url = urlsplit(request.url)
        raw = [(b"host", url.netloc.encode())]
        for name, value in request.headers.items():
            raw.append((name.lower().encode(), value if isinstance(value, bytes) else value.encode("latin-1")))
        body = request.body or b""
        return cls(method=request.method, path=url.path, query=url.query, headers=Headers(raw=raw),
                   body=body if isinstance(body, bytes) else body.encode())

    def with_header(self, name: str, value: str | None) -> Wire:
        raw = [(k, v) for k, v in self.headers.raw if k != name.encode()]
        if value is not None:
            raw.append((name.encode(), value.encode()))
        return dataclasses.replace(self, headers=Headers(raw=raw))

    def identify_with(self, auth: Authenticator) -> Principal:
        return auth.identify(method=self.method, path=self.path, query=self.query, headers=self.headers,
                             body=self.body, client_host=self.client_host)


def sign(*, key_id: str = "ops", secret: str = OPS_SECRET, method: str = "POST", url: str = INVOKE_URL,
         body: bytes = BODY, headers: dict[str, str] | None = None, params: dict[str, str] | None = None,
         context: dict[str, Any] | None = None) -> Wire:
    request = AWSRequest(method=method, url=url, data=body, headers=headers or {}, params=params or {})
    request.context.update(context or {})
    SigV4Auth(Credentials(key_id, secret), "lambda", "us-east-1").add_auth(request)
    return Wire.of(request.prepare())


def refusal(auth: Authenticator, wire: Wire) -> AuthError:
    with pytest.raises(AuthError) as caught:
        wire.identify_with(auth)
    return caught.value


class _Captured(Exception):
    def __init__(self, request: Any) -> None:
        super().__init__("captured")
        self.request = request


def boto3_request(call: str, secret: str = OPS_SECRET, **kwargs: Any) -> Wire:
    """The request a real boto3 Lambda client sends for `call(**kwargs)`, stopped before it leaves."""
    client = boto3.client("lambda", endpoint_url="http://127.0.0.1:8080", region_name="eu-west-1",
                          aws_access_key_id="ops", aws_secret_access_key=secret)

    def capture(request: Any, **_: Any) -> None:
        raise _Captured(request)

    client.meta.events.register("before-send", capture)
    with pytest.raises(_Captured) as caught:
        getattr(client, call)(**kwargs)
    return Wire.of(caught.value.request)


def shift_botocore_clock(monkeypatch: pytest.MonkeyPatch, minutes: int) -> None:
    """Make botocore sign as if its clock were `minutes` off."""
    real = botocore.auth.get_current_datetime
    monkeypatch.setattr(botocore.auth, "get_current_datetime",
                        lambda *a, **k: real(*a, **k) + datetime.timedelta(minutes=minutes))


# -- SigV4: what botocore signs is accepted --------------------------------------------------


@pytest.mark.parametrize("key_id, secret, role", [("ops", OPS_SECRET, "admin"), ("app", APP_SECRET, "invoke")])
def test_a_botocore_signature_identifies_the_key_with_its_configured_role(
        key_id: str, secret: str, role: Literal["admin", "invoke"]) -> None:
    wire = sign(key_id=key_id, secret=secret, headers={"X-Amz-Invocation-Type": "RequestResponse"})

    assert wire.identify_with(authenticator()) == Principal(key_id=key_id, role=role, via="sigv4")


def test_boto3_invoke_of_an_arn_is_accepted_on_its_percent_encoded_wire_path() -> None:
    wire = boto3_request("invoke", FunctionName="arn:aws:lambda:us-east-1:000000000000:function:hello",
                         Qualifier="prod", Payload=b'{"a": 1}', LogType="Tail", ClientContext="eyJ9")

    # botocore puts ':' on the wire as %3A and signs the path encoded once more (%253A), as AWS expects;
    # it signs host, x-amz-date and the x-amz-* headers of the operation, and sends no X-Amz-Content-SHA256:
    # the payload hash is the server's own sha256 of the body.
    assert wire.path == ("/2015-03-31/functions/arn%3Aaws%3Alambda%3Aus-east-1%3A000000000000%3Afunction%3Ahello"
                         "/invocations")
    assert "SignedHeaders=host;x-amz-client-context;x-amz-date;x-amz-log-type," in wire.headers["authorization"]
    assert "x-amz-content-sha256" not in wire.headers
    assert wire.identify_with(authenticator()) == Principal(key_id="ops", role="admin", via="sigv4")


def test_boto3_query_values_that_need_encoding_are_accepted() -> None:
    wire = boto3_request("list_functions", MaxItems=5, Marker="a b+c/d:é")

    assert wire.query == "MaxItems=5&Marker=a%20b%2Bc%2Fd%3A%C3%A9"     # not in sorted order on the wire
    assert wire.identify_with(authenticator()).key_id == "ops"


def test_a_query_whose_spaces_are_sent_as_plus_is_accepted() -> None:
    wire = sign(method="GET", url="http://127.0.0.1:8080/2015-03-31/functions", body=b"",
                params={"Marker": "a b+c", "MaxItems": "5"})

    assert wire.query == "Marker=a+b%2Bc&MaxItems=5"      # botocore signed Marker=a%20b%2Bc
    assert wire.identify_with(authenticator()).key_id == "ops"


def test_an_arn_path_signed_by_sigv4auth_is_accepted() -> None:
    assert sign(url=ARN_URL).identify_with(authenticator()).key_id == "ops"


def test_header_names_are_case_insensitive_and_values_are_trimmed_as_sigv4_says() -> None:
    wire = sign(headers={"X-Amz-Client-Context": "  spaced    out  value "})
    plain = {name.upper(): value for name, value in wire.headers.items()}

    assert authenticator().identify(method="POST", path=wire.path, query=wire.query, headers=plain,
                                    body=wire.body, client_host=None).key_id == "ops"


def test_a_signed_x_amz_content_sha256_of_the_body_is_accepted() -> None:
    wire = sign(headers={"X-Amz-Content-SHA256": hashlib.sha256(BODY).hexdigest()})

    assert wire.identify_with(authenticator()).key_id == "ops"


def test_unsigned_payload_over_https_is_accepted_whatever_the_body() -> None:
    wire = sign(url="https://lambent.example/2015-03-31/functions/hello/invocations",
                context={"payload_signing_enabled": False})

    assert wire.headers["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
    assert dataclasses.replace(wire, body=b"other").identify_with(authenticator()).key_id == "ops"


def test_a_signature_ten_minutes_old_is_within_the_allowed_skew(monkeypatch: pytest.MonkeyPatch) -> None:
    shift_botocore_clock(monkeypatch, -10)
    wire = sign()
    monkeypatch.undo()

    assert wire.identify_with(authenticator()).key_id == "ops"


# -- SigV4: what is refused -----------------------------------------------------------------


def test_a_wrong_secret_is_an_invalid_signature() -> None:
    error = refusal(authenticator(), sign(secret="not-the-secret"))

    assert (error.status, error.code) == (403, "InvalidSignatureException")


def test_an_access_key_id_that_is_no_configured_key_is_unrecognized() -> None:
    error = refusal(authenticator(), sign(key_id="AKIAEXAMPLE"))

    assert (error.status, error.code) == (403, "UnrecognizedClientException")
    assert "auth.keys" in error.message


@pytest.mark.parametrize("tamper", [
    pytest.param(lambda w: dataclasses.replace(w, body=b'{"a":2}'), id="body"),
    pytest.param(lambda w: dataclasses.replace(w, path="/2015-03-31/functions/other/invocations"), id="path"),
    pytest.param(lambda w: dataclasses.replace(w, query="Qualifier=dev"), id="query"),
    pytest.param(lambda w: dataclasses.replace(w, method="PUT"), id="method"),
    pytest.param(lambda w: w.with_header("x-amz-invocation-type", "Event"), id="signed-header"),
    pytest.param(lambda w: w.with_header("host", "evil.example:8080"), id="host"),
])
def test_a_request_changed_after_signing_is_an_invalid_signature(tamper: Any) -> None:
    wire = sign(headers={"X-Amz-Invocation-Type": "RequestResponse"})

    error = refusal(authenticator(), tamper(wire))

    assert (error.status, error.code) == (403, "InvalidSignatureException")


def test_a_body_that_does_not_match_its_signed_sha256_is_refused() -> None:
    wire = sign(headers={"X-Amz-Content-SHA256": hashlib.sha256(BODY).hexdigest()})

    error = refusal(authenticator(), dataclasses.replace(wire, body=b"{}"))

    assert (error.status, error.code) == (403, "InvalidSignatureException")


@pytest.mark.parametrize("minutes", [-20, 20])
def test_a_signature_dated_more_than_15_minutes_from_now_is_expired(monkeypatch: pytest.MonkeyPatch,
                                                                    minutes: int) -> None:
    shift_botocore_clock(monkeypatch, minutes)
    wire = sign()
    monkeypatch.undo()

    error = refusal(authenticator(), wire)

    assert (error.status, error.code) == (403, "RequestExpired")
    assert "clock" in error.message


@pytest.mark.parametrize("value", [None, "yesterday", "20261301T000000Z"])
def test_a_missing_or_unreadable_x_amz_date_is_an_incomplete_signature(value: str | None) -> None:
    error = refusal(authenticator(), sign().with_header("x-amz-date", value))

    assert (error.status, error.code) == (400, "IncompleteSignatureException")


@pytest.mark.parametrize("authorization", [
    "AWS4-HMAC-SHA256 SignedHeaders=host;x-amz-date, Signature=00",
    "AWS4-HMAC-SHA256 Credential=ops/20260101/us-east-1/lambda, SignedHeaders=host, Signature=00",
    "AWS4-HMAC-SHA256 Credential=ops/2026/us-east-1/lambda/aws4_request, SignedHeaders=host, Signature=00",
    "AWS4-HMAC-SHA256 Credential=ops/20260101/us-east-1/lambda/aws4_request, SignedHeaders=x-amz-date, "
    "Signature=00",
])
def test_a_malformed_sigv4_header_is_an_incomplete_signature(authorization: str) -> None:
    error = refusal(authenticator(), sign().with_header("authorization", authorization))

    assert (error.status, error.code) == (400, "IncompleteSignatureException")


def test_a_credential_date_other_than_the_signing_date_is_refused() -> None:
    wire = sign()
    forged = wire.headers["authorization"].replace(wire.headers["x-amz-date"][:8], "19991231")

    error = refusal(authenticator(), wire.with_header("authorization", forged))

    assert (error.status, error.code) == (403, "InvalidSignatureException")


# -- bearer and no credentials ----------------------------------------------------------------


@pytest.mark.parametrize("scheme, secret, expected", [
    ("Bearer", OPS_SECRET, Principal(key_id="ops", role="admin", via="bearer")),
    ("bearer", APP_SECRET, Principal(key_id="app", role="invoke", via="bearer")),
])
def test_a_bearer_secret_identifies_its_key(scheme: str, secret: str, expected: Principal) -> None:
    wire = Wire(method="GET", path="/functions", query="", body=b"",
                headers=Headers({"authorization": f"{scheme} {secret}"}))

    assert wire.identify_with(authenticator()) == expected


@pytest.mark.parametrize("authorization", ["Bearer wrong", "Bearer ", f"Bearer {OPS_SECRET}x", "Basic b3BzOng="])
def test_a_bearer_token_that_is_no_secret_or_an_unknown_scheme_is_refused(authorization: str) -> None:
    wire = Wire(method="GET", path="/functions", query="", body=b"", headers=Headers({"authorization": authorization}))

    error = refusal(authenticator(), wire)

    assert (error.status, error.code) == (401, "InvalidToken")


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "::ffff:127.0.0.1", "10.0.0.5", None])
def test_no_authorization_header_is_anonymous_wherever_it_comes_from(host: str | None) -> None:
    wire = Wire(method="GET", path="/functions", query="", body=b"", headers=Headers({}), client_host=host)

    assert wire.identify_with(authenticator()) == Principal(key_id=None, role="anonymous", via="none")


def test_a_key_whose_secret_variable_is_unset_is_skipped_with_a_warning_naming_it(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="runtime.auth"):
        auth = authenticator(environ={"LAMBENT_OPS_SECRET": "", "LAMBENT_APP_SECRET": APP_SECRET})

    assert [getattr(r, "variable", None) for r in caplog.records] == ["LAMBENT_OPS_SECRET"]
    empty_token = Wire(method="GET", path="/", query="", body=b"", headers=Headers({"authorization": "Bearer "}))
    assert refusal(auth, empty_token).code == "InvalidToken"      # an empty secret is no secret
    assert auth.has_admin_key      # still configured: admin stays locked, no generated key stands in


# -- require: who may do what -------------------------------------------------------------------

ADMIN = Principal(key_id="ops", role="admin", via="bearer")
INVOKER = Principal(key_id="app", role="invoke", via="sigv4")
ANONYMOUS = Principal(key_id=None, role="anonymous", via="none")
ONLY_INVOKE_KEY = [KEYS[1]]


GENERATED = "9" * 64
GENERATED_ADMIN = Principal(key_id="local-admin", role="admin", via="bearer")


@pytest.mark.parametrize("keys, generated, principal, status", [
    (KEYS, None, ADMIN, None),
    (KEYS, None, INVOKER, 403),
    (KEYS, None, ANONYMOUS, 401),
    (KEYS, GENERATED, ANONYMOUS, 401),
    (ONLY_INVOKE_KEY, GENERATED, ANONYMOUS, 401),
    (ONLY_INVOKE_KEY, GENERATED, INVOKER, 403),
    ([], GENERATED, ANONYMOUS, 401),
    ([], None, ANONYMOUS, 401),           # no key at all: admin is locked, not open
])
def test_admin_needs_an_admin_key_and_nothing_else_stands_in(
        keys: list[dict[str, str]], generated: str | None, principal: Principal, status: int | None) -> None:
    config = Config.model_validate({"auth": {"keys": keys}})
    auth = Authenticator(config, ENVIRON, generated_secret=generated)

    if status is None:
        auth.require(principal, need="admin")
    else:
        with pytest.raises(AuthError) as caught:
            auth.require(principal, need="admin")
        assert caught.value.status == status


@pytest.mark.parametrize("keys, generated_works", [([], True), (ONLY_INVOKE_KEY, True), (KEYS, False)])
def test_the_generated_key_is_an_admin_key_only_while_none_is_configured(keys: list[dict[str, str]],
                                                                        generated_works: bool) -> None:
    auth = Authenticator(Config.model_validate({"auth": {"keys": keys}}), ENVIRON, generated_secret=GENERATED)
    wire = Wire(method="DELETE", path="/functions/x", query="", body=b"",
                headers=Headers({"authorization": f"Bearer {GENERATED}"}))

    if generated_works:
        assert wire.identify_with(auth) == GENERATED_ADMIN
        assert auth.has_keys                       # so reads that can hold secrets need a key
    else:
        assert refusal(auth, wire).code == "InvalidToken"


@pytest.mark.parametrize("require_invoke_key, principal, status", [
    (False, ANONYMOUS, None),
    (True, ANONYMOUS, 401),
    (True, INVOKER, None),
    (True, ADMIN, None),
])
def test_invoke_needs_a_key_only_when_configured_so(require_invoke_key: bool, principal: Principal,
                                                    status: int | None) -> None:
    auth = authenticator(require_invoke_key=require_invoke_key)

    if status is None:
        auth.require(principal, need="invoke")
    else:
        with pytest.raises(AuthError) as caught:
            auth.require(principal, need="invoke")
        assert caught.value.status == status


def test_refusals_are_logged_with_key_path_and_client_but_never_the_secret(
        caplog: pytest.LogCaptureFixture) -> None:
    auth = authenticator()
    wire = dataclasses.replace(sign(key_id="ops", secret=OPS_SECRET + "x"), client_host="10.1.2.3")

    with caplog.at_level(logging.WARNING, logger="runtime.auth"):
        refusal(auth, wire)
        refusal(auth, dataclasses.replace(wire, headers=Headers({"authorization": f"Bearer {APP_SECRET}x"})))
        with pytest.raises(AuthError):
            auth.require(INVOKER, need="admin", path="/functions/hello", client_host="10.1.2.4")

    fields = [(r.key_id, r.path, r.client, r.code) for r in caplog.records]   # type: ignore[attr-defined]
    assert fields == [("ops", wire.path, "10.1.2.3", "InvalidSignatureException"),
                      (None, wire.path, "10.1.2.3", "InvalidToken"),
                      ("app", "/functions/hello", "10.1.2.4", "AccessDeniedException")]
    assert OPS_SECRET not in caplog.text and APP_SECRET not in caplog.text


# -- authorize: identify and require in one call ---------------------------------------------------


def authorize(auth: Authenticator, wire: Wire, need: Literal["admin", "invoke"]) -> Principal:
    return auth.authorize(need=need, method=wire.method, path=wire.path, query=wire.query, headers=wire.headers,
                          body=wire.body, client_host=wire.client_host)


def test_boto3_with_any_credentials_may_invoke_while_no_key_is_required() -> None:
    wire = sign(key_id="any", secret="any")

    assert authorize(authenticator(keys=[]), wire, "invoke") == Principal(key_id=None, role="anonymous", via="none")


def test_credentials_that_do_not_hold_are_refused_where_a_key_is_needed() -> None:
    wire = sign(key_id="any", secret="any")

    with pytest.raises(AuthError) as caught:
        authorize(authenticator(require_invoke_key=True), wire, "invoke")

    assert caught.value.code == "UnrecognizedClientException"


def test_authorize_refuses_an_invoke_key_for_admin_operations() -> None:
    wire = sign(key_id="app", secret=APP_SECRET)

    with pytest.raises(AuthError) as caught:
        authorize(authenticator(), wire, "admin")

    assert (caught.value.status, caught.value.code) == (403, "AccessDeniedException")
