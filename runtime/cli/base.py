"""The `lambent` command group and what its commands share: config loading, the HTTP client, errors.

Errors are one line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import sys
from typing import Any, Mapping, NoReturn

import click
import httpx

from ..config import Config, ConfigError

DEFAULT_URL = "http://127.0.0.1:8080"
log = logging.getLogger(__name__)


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def check_redis(config: Config) -> None:
    from ..preflight import RedisUnfit, check_redis as check

    try:
        check(config.redis_url)
    except RedisUnfit as exc:
        fail(str(exc), 2)


def check_isolation(config: Config) -> None:
    """Before a role that runs sandboxes starts a thread: give it a mount namespace of its own (where the code
    of jails started ahead of time is mounted), and with `sandbox.isolation: jail` refuse to start where this
    host cannot jail functions."""
    if config.sandbox.isolation == "none":
        return
    from ..jail import Isolation, IsolationError, enter_private_namespace

    enter_private_namespace()
    if config.sandbox.isolation != "jail":
        return
    try:
        Isolation.open(config)
    except IsolationError as exc:
        fail(str(exc), 2)


def generated_admin_key(config: Config, *, announce: bool = True) -> str | None:
    """With no admin key in `auth.keys`: the gateway's generated one (made on the first start), else None.
    Where it is goes to the log when it is made, and on every start when `announce` (the gateway's)."""
    if any(key.role == "admin" for key in config.auth.keys):
        return None
    from .. import admin_key

    try:
        secret, path, created = admin_key.ensure(config.data_dir)
    except (admin_key.AdminKeyError, OSError) as exc:
        fail(f"the generated admin key: {exc}", 2)
    if not (created or announce):
        return secret
    log.log(logging.WARNING if created else logging.INFO,
            "admin key %s: %s (mode 0600); the lambent CLI on this host reads it, other clients send it as "
            "'Authorization: Bearer <secret>' or sign with access key id '%s'",
            "generated" if created else "in use", path, admin_key.KEY_ID, extra={"path": str(path)})
    return secret


def protect_metrics(config: Config) -> None:
    """A role's metrics port answers only callers with a key, as the gateway's /metrics does: any configured key,
    or this host's generated admin key (Prometheus: `authorization: {credentials_file: .../admin.key}`)."""
    import orjson

    from ..auth import Authenticator, AuthError
    from ..observability import metrics

    authenticator = Authenticator(config, os.environ, generated_secret=generated_admin_key(config, announce=False))

    def guard(headers: Mapping[str, str], client: str | None) -> tuple[int, bytes] | None:
        try:
            authenticator.authorize(need="read", method="GET", path="/metrics", query="", headers=headers, body=b"",
                                    client_host=client)
        except AuthError as exc:
            return exc.status, orjson.dumps({"error": exc.code, "message": exc.message, "requestId": ""})
        return None

    metrics.require_key(guard)


def load_config(path: str | None) -> Config:
    try:
        return Config.load(path, environ=os.environ)
    except ConfigError as exc:
        fail(f"configuration: {exc}", 2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lambent")
def cli() -> None:
    """Lambent: AWS-Lambda-like functions on your own servers."""


def http_client(url: str | None, secret: str | None) -> httpx.Client:
    url = url or DEFAULT_URL
    secret = secret or local_admin_secret(url)
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    return httpx.Client(base_url=url, headers=headers, timeout=httpx.Timeout(930.0, connect=5.0))


def local_admin_secret(url: str) -> str | None:
    """The admin key a gateway on this host generated (admin_key.py), for a server on loopback only: the key of
    this host's gateway is never sent to another server. The data dir is config.yaml's (LAMBENT_CONFIG, or
    ./config.yaml), as the server's."""
    from .. import admin_key

    try:
        host = httpx.URL(url).host
    except httpx.InvalidURL:
        return None
    if host != "localhost" and not _is_loopback(host):
        return None
    try:
        data_dir = Config.load(None, environ=os.environ).data_dir
    except ConfigError as exc:
        click.echo(f"warning: no admin key read: configuration: {exc}", err=True)
        return None
    try:
        return admin_key.read(admin_key.key_path(data_dir))
    except admin_key.AdminKeyError as exc:
        click.echo(f"warning: {exc}", err=True)
        return None


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def call(client: httpx.Client, method: str, path: str, **kwargs: Any) -> httpx.Response:
    try:
        return client.request(method, path, **kwargs)
    except httpx.TransportError as exc:
        fail(f"cannot reach Lambent at {client.base_url}: {exc} (is `lambent up` or `lambent serve` running? "
             "set --url or LAMBENT_URL)", 2)


def server_error(response: httpx.Response) -> NoReturn:
    try:
        body = response.json()
        message = body.get("message") or body.get("Message") or body
    except ValueError:
        message = response.text or response.reason_phrase
    if response.status_code == 401 and "authorization" not in response.request.headers:
        message = (f"{message} (this CLI sent no key: pass --secret or LAMBENT_SECRET, or, on the server's host, "
                   "run it where the server's config.yaml is, or with LAMBENT_CONFIG naming it, so that it finds "
                   "the generated admin key)")
    fail(f"{response.status_code} {message}")


url_option = click.option("--url", envvar="LAMBENT_URL", help=f"server URL (default {DEFAULT_URL})")
secret_option = click.option("--secret", envvar="LAMBENT_SECRET",
                             help="API key secret (default, for a server on loopback: the admin key it generated)")


yes_option = click.option("--yes", "-y", is_flag=True, help="do not ask for confirmation (needed without a terminal)")


def confirm(action: str, *, yes: bool, declined: str) -> None:
    """Ask on a terminal whether to `action` ("delete function x"); go on at a yes, or at once with --yes.
    Without a terminal and without --yes: a one-line error naming --yes, exit 2. A no (or Ctrl-C, or end of
    input at the prompt): `declined` on stderr, exit 1. Never click's bare `Aborted!`."""
    if yes:
        return
    if sys.stdin is None or not sys.stdin.isatty():
        fail(f"stdin is not a terminal, so no one can confirm: pass --yes to {action}", 2)
    try:
        agreed = click.confirm(f"{action[:1].upper()}{action[1:]}?", default=False)
    except click.Abort:
        agreed = False
        click.echo("", err=True)        # ends the prompt's line, which no answer ended
    if not agreed:
        click.echo(declined, err=True)
        sys.exit(1)


def fetch(url: str | None, secret: str | None, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """One request that must answer 200; anything else is the one-line error and exit 1."""
    with http_client(url, secret) as client:
        response = call(client, method, path, **kwargs)
    if response.status_code != 200:
        server_error(response)
    return response


def print_table(rows: list[tuple[Any, ...]]) -> None:
    """Columns padded to their widest cell; the first row is the header."""
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
