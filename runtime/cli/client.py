"""Commands that talk to a running server: invoke, functions, deploy, alias, delete, schedules, logs, console."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import click
import httpx

from .base import (DEFAULT_URL, call, cli, confirm, fail, fetch, http_client, local_admin_secret, print_table,
                   secret_option, server_error, url_option, yes_option)


@cli.command()
@click.argument("name")
@click.option("--payload", help="the event as JSON (default {})")
@click.option("--payload-file", type=click.Path(dir_okay=False, path_type=Path), help="read the event from a file")
@click.option("--qualifier", help="version number or alias")
@click.option("--async", "asynchronous", is_flag=True, help="queue the event (Event invocation); print its request id")
@url_option
@secret_option
def invoke(name: str, payload: str | None, payload_file: Path | None, qualifier: str | None, asynchronous: bool,
           url: str | None, secret: str | None) -> None:
    """Invoke NAME and print its result (exit 1 on a function error); --async queues it instead."""
    if payload is not None and payload_file is not None:
        fail("give --payload or --payload-file, not both", 2)
    if payload_file is not None:
        try:
            payload = payload_file.read_text()
        except OSError as exc:
            fail(f"cannot read {payload_file}: {exc.strerror}", 2)
    body = (payload or "{}").encode()
    try:
        json.loads(body)
    except ValueError as exc:
        fail(f"the payload is not valid JSON: {exc}", 2)
    params = {"qualifier": qualifier} if qualifier else {}
    headers = {"Content-Type": "application/json"}
    if asynchronous:
        headers["X-Invocation-Type"] = "Event"
    with http_client(url, secret) as client:
        response = call(client, "POST", f"/functions/{name}/invoke", content=body, params=params,
                            headers=headers)
    if asynchronous:
        if response.status_code != 202:
            server_error(response)
        request_id = response.json()["requestId"]
        click.echo(request_id)
        click.echo(f"queued; follow it with: GET {client.base_url}/invocations/{request_id} (with a key)", err=True)
        return
    if response.headers.get("x-function-error"):
        click.echo(response.text)
        error = response.json()
        fail(f"function error {error.get('errorType')}: {error.get('errorMessage')}")
    if response.status_code != 200:
        server_error(response)
    click.echo(response.text)


@cli.command()
@url_option
@secret_option
@click.option("--json", "as_json", is_flag=True, help="print the raw JSON")
def functions(url: str | None, secret: str | None, as_json: bool) -> None:
    """List the deployed functions."""
    response = fetch(url, secret, "GET", "/functions")
    items = response.json()["functions"]
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    rows = [("NAME", "VERSION", "HANDLER", "MEMORY", "TIMEOUT", "TRIGGERS")] + [
        (f["name"], str(f["version"]), f["handler"], f"{f['memory_mb']} MB", f"{f['timeout']:g} s",
         ",".join(f["triggers"]) or "-") for f in items]
    print_table(rows)



@cli.command()
@click.argument("path", type=click.Path(file_okay=False, path_type=Path))
@click.option("--name", help="function name (default: the folder's name)")
@click.option("--alias", help="point this alias at the new version")
@url_option
@secret_option
def deploy(path: Path, name: str | None, alias: str | None, url: str | None, secret: str | None) -> None:
    """Zip the function folder PATH and deploy it as a new version."""
    from ..functions.package import CodeError, check_zip, pack_folder

    name = name or path.resolve().name
    if not path.is_dir():
        fail(f"{path}: not a folder", 2)
    click.echo(f"packing {path} ...", err=True)
    try:
        zip_bytes = pack_folder(path)
        package = check_zip(zip_bytes)
    except CodeError as exc:
        fail(str(exc), 2)
    click.echo(f"packed {len(zip_bytes) / 1024:.1f} KB (sha256 {package.code_hash[:12]}); uploading to "
               f"{url or DEFAULT_URL} ...", err=True)
    chunk = 256 * 1024

    def body() -> Iterator[bytes]:
        """The zip in chunks, each counted once it is sent. httpx asks for the next chunk after sending one, so
        the lines after the loop run once the whole body is sent: only then does the server start checking."""
        sent = 0
        for start in range(0, len(zip_bytes), chunk):
            piece = zip_bytes[start:start + chunk]
            yield piece
            sent += len(piece)
            click.echo(f"\r  {sent * 100 // len(zip_bytes):3d}% of {len(zip_bytes)} bytes", err=True, nl=False)
        click.echo("", err=True)
        click.echo(f"uploaded {len(zip_bytes)} bytes; checking, installing requirements and importing the handler "
                   "on the server ...", err=True)

    params = {"alias": alias} if alias else {}
    with http_client(url, secret) as client:
        response = call(client, "PUT", f"/functions/{name}/code", content=body(), params=params,
                            headers={"Content-Type": "application/zip", "Content-Length": str(len(zip_bytes))})
    if response.status_code not in (200, 201):
        try:
            detail = response.json()
        except ValueError:
            detail = {}
        if detail.get("output"):
            click.echo(detail["output"], err=True)
        if detail.get("logs"):
            click.echo(detail["logs"], err=True)
        server_error(response)
    result = response.json()
    note = "new version" if result["created"] else "unchanged: same content as version"
    suffix = f", alias {result['alias']}" if result.get("alias") else ""
    click.echo(f"deployed {result['function']}: {note} {result['version']}{suffix}")


@cli.command()
@click.argument("name")
@click.argument("alias")
@click.argument("version", type=int)
@url_option
@secret_option
def alias(name: str, alias: str, version: int, url: str | None, secret: str | None) -> None:
    """Point ALIAS of NAME at VERSION (roll forward, or back)."""
    fetch(url, secret, "PUT", f"/functions/{name}/aliases/{alias}", json={"version": version})
    click.echo(f"{name}:{alias} -> version {version}")


@cli.command()
@click.argument("name")
@yes_option
@url_option
@secret_option
def delete(name: str, yes: bool, url: str | None, secret: str | None) -> None:
    """Delete NAME with its versions, aliases, schedules and stream consumers (asks first; --yes does not)."""
    confirm(f"delete function {name} and every version of it", yes=yes, declined=f"not deleted: {name} is unchanged")
    fetch(url, secret, "DELETE", f"/functions/{name}")
    click.echo(f"deleted {name}")


@cli.command()
@url_option
@secret_option
@click.option("--json", "as_json", is_flag=True, help="print the raw JSON")
def schedules(url: str | None, secret: str | None, as_json: bool) -> None:
    """List every schedule: its next fire, its counts of fires (LATE: of those, fired over a second after their
    time) and of missed fires (past the grace), and the last fire's outcome, as GET /schedules and the console."""
    response = fetch(url, secret, "GET", "/schedules")
    items = response.json()["schedules"]
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    rows = [("FUNCTION", "EXPRESSION", "TIMEZONE", "NEXT", "FIRED", "LATE", "MISSED", "LAST", "OUTCOME")]
    for item in items:
        last = item.get("last") or {}
        stats = item.get("stats") or {}
        upcoming = (item["next"] or ["-"])[0] if item.get("enabled", True) else "disabled"
        rows.append((item["function"], item["expression"], item["timezone"], upcoming,
                     stats.get("fired", 0), stats.get("late", 0), stats.get("missed", 0), last.get("scheduled", "-"),
                     last.get("status") or last.get("outcome") or "-"))
    print_table(rows)


@cli.command()
@click.argument("name")
@click.option("--since", help="only logs this recent: 30s, 10m, 2h, 1d")
@click.option("--request-id", help="only this invocation's logs")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.option("--follow", "-f", is_flag=True, help="keep printing new logs until Ctrl-C (which exits 0)")
@url_option
@secret_option
def logs(name: str, since: str | None, request_id: str | None, limit: int, follow: bool, url: str | None,
         secret: str | None) -> None:
    """Print NAME's captured invocation logs, newest last (a deleted function's too)."""
    params: dict[str, Any] = {"limit": limit}
    if since:
        params["since"] = since
    if request_id:
        params["request_id"] = request_id
    if not follow:
        with http_client(url, secret) as client:
            _print_logs(client, name, params)
        return
    # Ctrl-C is how --follow ends, so it is its normal end: exit 0, nothing printed (as `journalctl -f`), wherever
    # it lands: in a request, in the pause, while printing. A Python signal handler cannot promise that: a SIGINT
    # that lands between the interpreter's last check for signals and the poll() under a socket read waits for
    # that read to end (forever, on a server that does not answer). So SIGINT is blocked in this thread, and a
    # thread that waits for it with sigwait() (nothing lost, no race) flushes what was printed and exits. Blocked,
    # it is taken even when this process was started with it ignored (a background job of a script: how a test
    # runner or CI may start it).
    _exit_at_ctrl_c()
    with http_client(url, secret) as client:
        while True:
            last_ms = _print_logs(client, name, params)
            if last_ms is not None:
                params["after"] = last_ms
            time.sleep(1.0)


def _print_logs(client: httpx.Client, name: str, params: dict[str, Any]) -> int | None:
    """Print one page of records; the time of the newest (None when there were none)."""
    response = call(client, "GET", f"/functions/{name}/logs", params=params)
    if response.status_code != 200:
        server_error(response)
    last_ms: int | None = None
    for record in response.json()["records"]:
        click.echo(record["text"], nl=False)
        last_ms = max(last_ms or 0, record["time"])
    return last_ms


def _exit_at_ctrl_c() -> None:
    """From now on, SIGINT ends this process with status 0 after flushing stdout (whole records: click writes
    each in one call, under the buffer's lock). Threads started later inherit the blocked mask."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})

    def wait() -> None:
        signal.sigwait({signal.SIGINT})
        try:
            sys.stdout.flush()
        except (OSError, ValueError):       # a closed pipe (`| head`) or a closed stdout: nothing more to show
            pass
        os._exit(0)

    threading.Thread(target=wait, name="ctrl-c", daemon=True).start()


@cli.command()
@url_option
@secret_option
def console(url: str | None, secret: str | None) -> None:
    """Print the web console's address with a key in it (default: the admin key of a server on loopback)."""
    from urllib.parse import quote

    url = (url or DEFAULT_URL).rstrip("/")
    secret = secret or local_admin_secret(url)
    if not secret:
        fail("no key to open the console with: pass --secret or LAMBENT_SECRET, or run this on the server's host "
             "where its config.yaml is (or with LAMBENT_CONFIG naming it)", 2)
    click.echo(f"{url}/console?secret={quote(secret, safe='')}")
    click.echo("the console takes the key out of the address bar and keeps it for this tab only", err=True)
