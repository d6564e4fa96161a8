"""`lambent invocation ID [--wait]`: an asynchronous invocation's status, attempts and result."""

from __future__ import annotations

import json
import time

import click

from .base import call, cli, fail, http_client, secret_option, server_error, url_option

FINAL = ("succeeded", "dead-lettered")


@cli.command()
@click.argument("request_id")
@click.option("--wait", is_flag=True, help="wait until it has succeeded or been dead-lettered")
@click.option("--timeout", type=click.FloatRange(0, 3600), default=60.0, show_default=True,
              help="seconds --wait waits")
@url_option
@secret_option
def invocation(request_id: str, wait: bool, timeout: float, url: str | None, secret: str | None) -> None:
    """Print an asynchronous invocation (GET /invocations/REQUEST_ID) as JSON: its status (queued, running,
    retrying, succeeded, dead-lettered), every attempt with its outcome, error and times, and its result."""
    deadline = time.monotonic() + timeout
    with http_client(url, secret) as client:
        while True:
            response = call(client, "GET", f"/invocations/{request_id}")
            if response.status_code != 200:
                server_error(response)
            record = response.json()
            if not wait or record["status"] in FINAL:
                break
            if time.monotonic() > deadline:
                click.echo(json.dumps(record, indent=2))
                fail(f"still {record['status']} after {timeout:g} s (raise --timeout, or look again later)")
            time.sleep(0.2)
    click.echo(json.dumps(record, indent=2))
