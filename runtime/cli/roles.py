"""The roles: `lambent serve`, `up`, `worker`, `streams`, `scheduler`."""

from __future__ import annotations

import os
import sys

import click

from ..config import Config
from .base import check_isolation, check_redis, cli, fail, generated_admin_key, load_config, protect_metrics


def _role_config(config_path: str | None) -> Config:
    """The Config of a role run by this process, with its logging set up as the Config says."""
    from ..observability import setup

    config = load_config(config_path)
    setup.configure(level=config.logs.level, fmt=config.logs.format)
    return config


@cli.command()
@click.option("--config", "config_path", envvar="LAMBENT_CONFIG", help="config.yaml to read")
@click.option("--host", default=None, help="address to listen on (default: gateway.host)")
@click.option("--port", type=int, default=None, help="port to listen on (default: gateway.port)")
@click.option("--no-deploy", is_flag=True, help="do not deploy the folders of functions_dir at start")
def serve(config_path: str | None, host: str | None, port: int | None, no_deploy: bool) -> None:
    """Run the HTTP gateway."""
    import uvicorn

    from ..gateway import create_app
    from ..gateway.protocol import bounded_protocol

    config = _role_config(config_path)
    check_redis(config)
    check_isolation(config)
    app = create_app(config, environ=os.environ, deploy_functions=not no_deploy,
                     generated_admin_secret=generated_admin_key(config))
    trusted = list(config.gateway.trusted_proxies)
    uvicorn.run(app, host=host or config.gateway.host, port=config.gateway.port if port is None else port,
                loop="uvloop", access_log=False, log_config=None, lifespan="on", timeout_graceful_shutdown=10,
                http=bounded_protocol(max_header_bytes=config.gateway.max_header_bytes,
                                      max_headers=config.gateway.max_headers),
                # X-Forwarded-For is believed from the proxies named in gateway.trusted_proxies, from no one else
                proxy_headers=bool(trusted), forwarded_allow_ips=trusted or None)


@cli.command()
@click.option("--config", "config_path", envvar="LAMBENT_CONFIG", help="config.yaml to read")
@click.option("--host", default=None, help="gateway address (default: gateway.host)")
@click.option("--port", type=int, default=None, help="gateway port (default: gateway.port)")
def up(config_path: str | None, host: str | None, port: int | None) -> None:
    """Run every role on this machine, starting a local Redis when none is reachable."""
    from ..admin_key import AdminKeyError
    from ..supervisor import run_all

    config = load_config(config_path)
    try:
        code = run_all(config, config_path=config_path, host=host, port=port)
    except AdminKeyError as exc:
        fail(f"the generated admin key: {exc}", 2)
    sys.exit(code)


@cli.command()
@click.option("--config", "config_path", envvar="LAMBENT_CONFIG", help="config.yaml to read")
@click.option("--concurrency", type=click.IntRange(1, 256), default=1, show_default=True,
              help="worker processes, each running one invocation at a time")
@click.option("--burst", is_flag=True, help="stop when the queue is empty")
def worker(config_path: str | None, concurrency: int, burst: bool) -> None:
    """Run asynchronous invocations from the RQ queue."""
    config = _role_config(config_path)
    check_redis(config)
    protect_metrics(config)
    check_isolation(config)
    if concurrency == 1:
        from ..asyncq.worker import run_worker

        sys.exit(run_worker(config, burst=burst))
    import tempfile

    from ..observability import metrics
    from ..supervisor import STOP_MARGIN_S, Role, supervise

    argv = [sys.executable, "-m", "runtime", "worker"] + (["--config", config_path] if config_path else [])
    argv += ["--burst"] if burst else []
    roles = [Role(name=f"worker-{index + 1}", argv=argv, restart=not burst) for index in range(concurrency)]
    with tempfile.TemporaryDirectory(prefix="lambent-metrics-") as shared:
        # prometheus-client's multiprocess mode: the children write here, this process serves the sum.
        metrics.serve(config.metrics.worker_port, config.metrics.host, role="worker", multiprocess_dir=shared)
        # SIGTERM is passed on to every worker, which stops within its grace; one still running a little
        # later is killed. A second signal is passed on too (a worker then stops at once), and what still
        # runs two seconds later is killed.
        code = supervise(roles, env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": shared},
                         stop_grace_s=config.async_.shutdown_grace_s + STOP_MARGIN_S)
    sys.exit(code)


@cli.command()
@click.option("--config", "config_path", envvar="LAMBENT_CONFIG", help="config.yaml to read")
def streams(config_path: str | None) -> None:
    """Consume the Kafka topics and poll the SQS queues of every function with a `kafka` or `sqs` event."""
    from ..streams.runner import run_streams

    config = _role_config(config_path)
    if not config.kafka_bootstrap_servers and not config.sqs.endpoint_url:
        fail("`lambent streams` needs Kafka or an SQS server: set kafka_bootstrap_servers "
             "(LAMBENT_KAFKA_BOOTSTRAP_SERVERS) or sqs.endpoint_url (LAMBENT_SQS__ENDPOINT_URL) in config.yaml", 2)
    check_redis(config)
    protect_metrics(config)
    check_isolation(config)
    run_streams(config)


@cli.command()
@click.option("--config", "config_path", envvar="LAMBENT_CONFIG", help="config.yaml to read")
def scheduler(config_path: str | None) -> None:
    """Fire the cron and rate schedules of every function (run any number of replicas)."""
    from ..scheduler.runner import run_scheduler

    config = _role_config(config_path)
    check_redis(config)
    protect_metrics(config)
    run_scheduler(config)
