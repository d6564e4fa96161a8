"""`lambent dlq ls|show|redrive|purge NAME`: a function's dead-letter queue."""

from __future__ import annotations

import json

import click

from .base import cli, confirm, fetch, secret_option, url_option, yes_option


@cli.group()
def dlq() -> None:
    """A function's dead-letter queue: ls, show, redrive, purge."""


@dlq.command("ls")
@click.argument("name")
@click.option("--offset", type=int, default=0)
@click.option("--limit", type=int, default=50)
@click.option("--json", "as_json", is_flag=True, help="print the raw JSON page")
@url_option
@secret_option
def dlq_ls(name: str, offset: int, limit: int, as_json: bool, url: str | None, secret: str | None) -> None:
    """List NAME's dead letters, oldest first."""
    response = fetch(url, secret, "GET", f"/functions/{name}/dlq", params={"offset": offset, "limit": limit})
    page = response.json()
    if as_json:
        click.echo(json.dumps(page, indent=2))
        return
    click.echo(f"{page['total']} dead letter(s) for {name}")
    for item in page["items"]:
        context = item["record"]["requestContext"]
        error = (item["record"].get("responsePayload") or {})
        error_type = error.get("errorType", "-") if isinstance(error, dict) else "-"
        click.echo(f"{item['requestId']}  {item['deadLetteredAt']}  {context['condition']:<17} "
                   f"attempts={context['approximateInvokeCount']}  {error_type}")
    if page["next"] is not None:
        click.echo(f"more: --offset {page['next']}")


@dlq.command("show")
@click.argument("name")
@click.argument("request_id")
@url_option
@secret_option
def dlq_show(name: str, request_id: str, url: str | None, secret: str | None) -> None:
    """Print one dead letter as JSON."""
    response = fetch(url, secret, "GET", f"/functions/{name}/dlq/{request_id}")
    click.echo(json.dumps(response.json(), indent=2))


@dlq.command("redrive")
@click.argument("name")
@click.option("--request-id", help="redrive this one only (default: all)")
@url_option
@secret_option
def dlq_redrive(name: str, request_id: str | None, url: str | None, secret: str | None) -> None:
    """Queue NAME's dead letters again, with fresh attempts."""
    body = {"requestId": request_id} if request_id else {}
    response = fetch(url, secret, "POST", f"/functions/{name}/dlq/redrive", json=body)
    redriven = response.json()["redriven"]
    click.echo(f"redrove {len(redriven)} invocation(s)")
    for rid in redriven:
        click.echo(rid)


@dlq.command("purge")
@click.argument("name")
@yes_option
@url_option
@secret_option
def dlq_purge(name: str, yes: bool, url: str | None, secret: str | None) -> None:
    """Delete all of NAME's dead letters (asks first; --yes does not)."""
    confirm(f"delete every dead letter of {name}", yes=yes, declined=f"not purged: {name}'s dead letters are kept")
    response = fetch(url, secret, "DELETE", f"/functions/{name}/dlq")
    click.echo(f"purged {response.json()['purged']} dead letter(s)")
