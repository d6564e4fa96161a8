"""`lambent`: run the roles (serve, up) and talk to a running server (invoke, functions).

Errors are one line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import click
import httpx

from .config import Config, ConfigError

DEFAULT_URL = "http://127.0.0.1:8080"


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def check_redis(config: Config) -> None:
    from .services import RedisUnfit, check_redis as check

    try:
        check(config.redis_url)
    except RedisUnfit as exc:
        fail(str(exc), 2)


def load_config(path: str | None) -> Config:
    try:
        return Config.load(path, environ=os.environ)
    except ConfigError as exc:
        fail(f"configuration: {exc}", 2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lambent")
def cli() -> None:
    """Lambent: AWS-Lambda-like functions on your own servers."""


# -- roles ---------------------------------------------------------------------------------

@cli.command()
@click.option("--config", "config_path", envvar="LAMBENT_CONFIG", help="config.yaml to read")
@click.option("--host", default=None, help="address to listen on (default: gateway.host)")
@click.option("--port", type=int, default=None, help="port to listen on (default: gateway.port)")
@click.option("--no-deploy", is_flag=True, help="do not deploy the folders of functions_dir at start")
def serve(config_path: str | None, host: str | None, port: int | None, no_deploy: bool) -> None:
    """Run the HTTP gateway."""
    import uvicorn

    from .gateway import create_app
    from .observability import setup

    config = load_config(config_path)
    setup.configure(level=config.logs.level, fmt=config.logs.format)
    check_redis(config)
    app = create_app(config, environ=os.environ, deploy_functions=not no_deploy)
    uvicorn.run(app, host=host or config.gateway.host, port=config.gateway.port if port is None else port,
                loop="uvloop", http="httptools", access_log=False, log_config=None, lifespan="on",
                timeout_graceful_shutdown=10)


@cli.command()
@click.option("--config", "config_path", envvar="LAMBENT_CONFIG", help="config.yaml to read")
@click.option("--host", default=None, help="gateway address (default: gateway.host)")
@click.option("--port", type=int, default=None, help="gateway port (default: gateway.port)")
def up(config_path: str | None, host: str | None, port: int | None) -> None:
    """Run every role on this machine, starting a local Redis when none is reachable."""
    from .supervisor import run_all

    config = load_config(config_path)
    sys.exit(run_all(config, config_path=config_path, host=host, port=port))


@cli.command()
@click.option("--config", "config_path", envvar="LAMBENT_CONFIG", help="config.yaml to read")
@click.option("--concurrency", type=click.IntRange(1, 256), default=1, show_default=True,
              help="worker processes, each running one invocation at a time")
@click.option("--burst", is_flag=True, help="stop when the queue is empty")
def worker(config_path: str | None, concurrency: int, burst: bool) -> None:
    """Run asynchronous invocations from the RQ queue."""
    from .observability import setup

    config = load_config(config_path)
    setup.configure(level=config.logs.level, fmt=config.logs.format)
    check_redis(config)
    if concurrency == 1:
        from .asyncq.worker import run_worker

        run_worker(config, burst=burst)
        return
    import tempfile

    from .observability import metrics
    from .supervisor import Role, supervise

    argv = [sys.executable, "-m", "runtime", "worker"] + (["--config", config_path] if config_path else [])
    argv += ["--burst"] if burst else []
    roles = [Role(name=f"worker-{index + 1}", argv=argv, restart=not burst) for index in range(concurrency)]
    with tempfile.TemporaryDirectory(prefix="lambent-metrics-") as shared:
        # prometheus-client's multiprocess mode: the children write here, this process serves the sum.
        metrics.serve(config.metrics.worker_port, config.metrics.host, role="worker", multiprocess_dir=shared)
        code = supervise(roles, env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": shared})
    sys.exit(code)


@cli.command()
@click.option("--config", "config_path", envvar="LAMBENT_CONFIG", help="config.yaml to read")
def streams(config_path: str | None) -> None:
    """Consume the Kafka topics of every function with a `kafka` event."""
    from .observability import setup
    from .streams.runner import run_streams

    config = load_config(config_path)
    setup.configure(level=config.logs.level, fmt=config.logs.format)
    if not config.kafka_bootstrap_servers:
        fail("`lambent streams` needs Kafka: set kafka_bootstrap_servers in config.yaml or "
             "LAMBENT_KAFKA_BOOTSTRAP_SERVERS", 2)
    check_redis(config)
    run_streams(config)


@cli.command()
@click.option("--config", "config_path", envvar="LAMBENT_CONFIG", help="config.yaml to read")
def scheduler(config_path: str | None) -> None:
    """Fire the cron and rate schedules of every function (run any number of replicas)."""
    from .observability import setup
    from .scheduler.runner import run_scheduler

    config = load_config(config_path)
    setup.configure(level=config.logs.level, fmt=config.logs.format)
    check_redis(config)
    run_scheduler(config)


# -- client commands -----------------------------------------------------------------------

def _client(url: str | None, secret: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    return httpx.Client(base_url=url or DEFAULT_URL, headers=headers, timeout=httpx.Timeout(930.0, connect=5.0))


def _request(client: httpx.Client, method: str, path: str, **kwargs: Any) -> httpx.Response:
    try:
        return client.request(method, path, **kwargs)
    except httpx.TransportError as exc:
        fail(f"cannot reach Lambent at {client.base_url}: {exc} (is `lambent up` or `lambent serve` running? "
             "set --url or LAMBENT_URL)", 2)


def _server_error(response: httpx.Response) -> NoReturn:
    try:
        body = response.json()
        message = body.get("message") or body.get("Message") or body
    except ValueError:
        message = response.text or response.reason_phrase
    fail(f"{response.status_code} {message}")


url_option = click.option("--url", envvar="LAMBENT_URL", help=f"server URL (default {DEFAULT_URL})")
secret_option = click.option("--secret", envvar="LAMBENT_SECRET", help="API key secret")


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
    with _client(url, secret) as client:
        response = _request(client, "POST", f"/functions/{name}/invoke", content=body, params=params,
                            headers=headers)
    if asynchronous:
        if response.status_code != 202:
            _server_error(response)
        request_id = response.json()["requestId"]
        click.echo(request_id)
        click.echo(f"queued; follow it with: curl {client.base_url}/invocations/{request_id}", err=True)
        return
    if response.headers.get("x-function-error"):
        click.echo(response.text)
        error = response.json()
        fail(f"function error {error.get('errorType')}: {error.get('errorMessage')}")
    if response.status_code != 200:
        _server_error(response)
    click.echo(response.text)


@cli.command()
@url_option
@secret_option
@click.option("--json", "as_json", is_flag=True, help="print the raw JSON")
def functions(url: str | None, secret: str | None, as_json: bool) -> None:
    """List the deployed functions."""
    with _client(url, secret) as client:
        response = _request(client, "GET", "/functions")
    if response.status_code != 200:
        _server_error(response)
    items = response.json()["functions"]
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    rows = [("NAME", "VERSION", "HANDLER", "MEMORY", "TIMEOUT", "TRIGGERS")] + [
        (f["name"], str(f["version"]), f["handler"], f"{f['memory_mb']} MB", f"{f['timeout']:g} s",
         ",".join(f["triggers"]) or "-") for f in items]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())



@cli.command()
@click.argument("path", type=click.Path(file_okay=False, path_type=Path))
@click.option("--name", help="function name (default: the folder's name)")
@click.option("--alias", help="point this alias at the new version")
@url_option
@secret_option
def deploy(path: Path, name: str | None, alias: str | None, url: str | None, secret: str | None) -> None:
    """Zip the function folder PATH and deploy it as a new version."""
    from .functions.store import CodeError, check_zip, pack_folder

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

    def body() -> Any:
        sent = 0
        for start in range(0, len(zip_bytes), chunk):
            piece = zip_bytes[start:start + chunk]
            sent += len(piece)
            click.echo(f"\r  {sent * 100 // max(len(zip_bytes), 1):3d}% of {len(zip_bytes)} bytes", err=True, nl=False)
            yield piece
        click.echo("", err=True)

    params = {"alias": alias} if alias else {}
    with _client(url, secret) as client:
        click.echo("checking, installing requirements and importing the handler on the server ...", err=True)
        response = _request(client, "PUT", f"/functions/{name}/code", content=body(), params=params,
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
        _server_error(response)
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
    with _client(url, secret) as client:
        response = _request(client, "PUT", f"/functions/{name}/aliases/{alias}", json={"version": version})
    if response.status_code != 200:
        _server_error(response)
    click.echo(f"{name}:{alias} -> version {version}")


@cli.command()
@click.argument("name")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
@url_option
@secret_option
def delete(name: str, yes: bool, url: str | None, secret: str | None) -> None:
    """Delete NAME with its versions, aliases, schedules and stream consumers."""
    if not yes:
        click.confirm(f"delete function {name} and every version of it?", abort=True)
    with _client(url, secret) as client:
        response = _request(client, "DELETE", f"/functions/{name}")
    if response.status_code != 200:
        _server_error(response)
    click.echo(f"deleted {name}")


@cli.command()
@url_option
@secret_option
@click.option("--json", "as_json", is_flag=True, help="print the raw JSON")
def schedules(url: str | None, secret: str | None, as_json: bool) -> None:
    """List every schedule with its next fire times and last outcome."""
    with _client(url, secret) as client:
        response = _request(client, "GET", "/schedules")
    if response.status_code != 200:
        _server_error(response)
    items = response.json()["schedules"]
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    rows = [("FUNCTION", "EXPRESSION", "TIMEZONE", "NEXT", "LAST", "OUTCOME")]
    for item in items:
        last = item.get("last") or {}
        rows.append((item["function"], item["expression"], item["timezone"],
                     (item["next"] or ["-"])[0], last.get("scheduled", "-"),
                     last.get("status") or last.get("outcome") or "-"))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())


@cli.command()
@click.argument("name")
@click.option("--since", help="only logs this recent: 30s, 10m, 2h, 1d")
@click.option("--request-id", help="only this invocation's logs")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.option("--follow", "-f", is_flag=True, help="keep printing new logs until Ctrl-C")
@url_option
@secret_option
def logs(name: str, since: str | None, request_id: str | None, limit: int, follow: bool, url: str | None,
         secret: str | None) -> None:
    """Print NAME's captured invocation logs, newest last."""
    import time

    params: dict[str, Any] = {"limit": limit}
    if since:
        params["since"] = since
    if request_id:
        params["request_id"] = request_id
    last_ms: int | None = None
    with _client(url, secret) as client:
        while True:
            response = _request(client, "GET", f"/functions/{name}/logs", params=params)
            if response.status_code != 200:
                _server_error(response)
            for record in response.json()["records"]:
                click.echo(record["text"], nl=False)
                last_ms = max(last_ms or 0, record["time"])
            if not follow:
                return
            if last_ms is not None:
                params["after"] = last_ms
            time.sleep(1.0)


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
    with _client(url, secret) as client:
        response = _request(client, "GET", f"/functions/{name}/dlq", params={"offset": offset, "limit": limit})
    if response.status_code != 200:
        _server_error(response)
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
    with _client(url, secret) as client:
        response = _request(client, "GET", f"/functions/{name}/dlq/{request_id}")
    if response.status_code != 200:
        _server_error(response)
    click.echo(json.dumps(response.json(), indent=2))


@dlq.command("redrive")
@click.argument("name")
@click.option("--request-id", help="redrive this one only (default: all)")
@url_option
@secret_option
def dlq_redrive(name: str, request_id: str | None, url: str | None, secret: str | None) -> None:
    """Queue NAME's dead letters again, with fresh attempts."""
    body = {"requestId": request_id} if request_id else {}
    with _client(url, secret) as client:
        response = _request(client, "POST", f"/functions/{name}/dlq/redrive", json=body)
    if response.status_code != 200:
        _server_error(response)
    redriven = response.json()["redriven"]
    click.echo(f"redrove {len(redriven)} invocation(s)")
    for rid in redriven:
        click.echo(rid)


@dlq.command("purge")
@click.argument("name")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
@url_option
@secret_option
def dlq_purge(name: str, yes: bool, url: str | None, secret: str | None) -> None:
    """Delete all of NAME's dead letters."""
    if not yes:
        click.confirm(f"delete every dead letter of {name}?", abort=True)
    with _client(url, secret) as client:
        response = _request(client, "DELETE", f"/functions/{name}/dlq")
    if response.status_code != 200:
        _server_error(response)
    click.echo(f"purged {response.json()['purged']} dead letter(s)")


def main() -> None:
    try:
        cli(standalone_mode=True)
    except KeyboardInterrupt:
        sys.exit(130)
