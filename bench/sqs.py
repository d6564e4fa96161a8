"""SQS benchmark: `lambent streams` polling an ElasticMQ queue against a plain boto3 loop, in the same run.

    .venv/bin/python bench/sqs.py [--messages N] [--endpoint URL] [--redis-url URL] [--rounds N]
                                  [--concurrency N] [--timeout S] [--keep]

What it measures (a benchmark, not a test: it prints figures and PASS/MISS against a target):

1. Lambent: messages/s that `lambent streams` takes off a standard queue through a trivial handler (it counts
   the records of its batch and appends the count to a file, so every message is seen to reach it), with
   `events: [{sqs: {queue: Q, batch_size: 10, maximum_concurrency: C}}]` (C: --concurrency, default 2, Lambda's
   least). The N messages (100-byte bodies) are sent BEFORE the poller starts: the measure is pure consumption.
2. Baseline: a plain boto3 loop in its own process (receive_message MaxNumberOfMessages=10, WaitTimeSeconds=1,
   then delete_message_batch of what came) on another queue of the same ElasticMQ, until it has seen N.
3. Ratio Lambent/plain (target >= 0.8).

Both are timed from outside: this script reads the queue's ApproximateNumberOfMessages + ...NotVisible (exact on
ElasticMQ) every POLL_S seconds. "startup" is from the process start to the first message seen gone (the
interpreter, imports, the first long poll and, for Lambent, the sandbox's cold start); messages/s is the steady
rate, from then until the queue is empty; the rate from the process start ("incl. startup") is printed too. Each
is measured --rounds times (default 2, alternating which goes first) and the best kept: the noise of a shared
machine only slows a run down.

Setup: an ElasticMQ of its own (scripts/elasticmq.sh, state in the work folder, stopped at the end) unless
`--endpoint` is given, and a redis-server of its own unless `--redis-url` is given. The function is deployed by
starting `lambent serve` (which deploys functions_dir), waiting for /healthz and stopping it. ElasticMQ sits behind
its guard (runtime/sqsguard.py): every client here, Lambent's included, signs as `lambent` with its secret (an own
server's from `scripts/elasticmq.sh secret`; with `--endpoint`, from LAMBENT_SQS__SECRET_ACCESS_KEY), so both
sides pay the guard alike. The sandbox runs unjailed
(`sandbox.isolation: none`): the handler counts into a file of the host, which a jail hides; the jail costs at a
sandbox's start, not per batch. Every process this script starts is
stopped at the end, even on error; the queues it made are deleted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import (Processes, discard_workdir, free_port, lambent_env, masked, progress, run_main,
                    start_runtime, tail, use_redis, verdict, wait_healthy, write_config)

ROOT = Path(__file__).resolve().parent.parent
HANDLER_SOURCE = '''\
import os

_COUNTS = os.environ.get("BENCH_COUNT_FILE")


def handler(event, context):
    count = len(event["Records"])
    if _COUNTS:
        with open(_COUNTS, "a") as handle:
            handle.write(f"{count}\\n")
    return None
'''
BATCH_SIZE = 10
BODY_BYTES = 100
TARGET_RATIO = 0.8
POLL_S = 0.1               # how often the queue's depth is read while a consumer runs
STALL_S = 30.0             # no progress for this long with messages left: the run stalled
MAX_MESSAGES = 100_000     # the bound on --messages


KEY_ID = "lambent"         # the guard's one access key id
SECRET_ENV = "LAMBENT_SQS__SECRET_ACCESS_KEY"


def sqs_client(endpoint: str, secret: str) -> Any:
    import boto3
    from botocore.config import Config
    return boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=KEY_ID,
                        aws_secret_access_key=secret,
                        config=Config(connect_timeout=3, read_timeout=30, retries={"max_attempts": 3},
                                      max_pool_connections=16))


def depth(client: Any, url: str) -> int:
    attributes = client.get_queue_attributes(QueueUrl=url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return sum(int(value) for value in attributes.values())


def preload(client: Any, url: str, count: int) -> None:
    """Send `count` messages in batches of 10, from 4 threads; checks the queue holds them all."""
    started = time.monotonic()
    filler = "x" * BODY_BYTES

    def send(first: int) -> None:
        entries = [{"Id": str(i), "MessageBody": (f"{first + i:08d}:" + filler)[:BODY_BYTES]}
                   for i in range(min(10, count - first))]
        answer = client.send_message_batch(QueueUrl=url, Entries=entries)
        if answer.get("Failed"):
            raise RuntimeError(f"send_message_batch failed: {answer['Failed'][:3]}")

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(send, range(0, count, 10)))
    have = depth(client, url)
    if have != count:
        raise RuntimeError(f"{url}: {have} messages after sending {count}")
    progress(f"preloaded {count:,} messages in {time.monotonic() - started:.1f} s")


@dataclass
class Run:
    kind: str
    messages: int
    startup_s: float           # process start -> first message seen gone
    steady_s: float            # first message gone -> queue empty
    total_s: float             # process start -> queue empty
    steady_messages: int
    delivered: int | None      # messages the handler / loop saw (>= N: at least once)
    stalled: bool = False

    @property
    def rate(self) -> float:
        return self.steady_messages / self.steady_s if self.steady_s > 0 else 0.0

    @property
    def rate_total(self) -> float:
        return self.messages / self.total_s if self.total_s > 0 and not self.stalled else 0.0


def watch(client: Any, url: str, messages: int, proc: subprocess.Popen[bytes], started: float, timeout_s: float,
          label: str, log_file: Path) -> tuple[float, int, float, bool]:
    """Until the queue is empty (or stalled): (first-progress time, messages left then, last-progress time,
    stalled)."""
    first_at: float | None = None
    first_left = messages
    last_at, last_left = started, messages
    next_report = started + 10.0
    while True:
        now = time.monotonic()
        left = depth(client, url)
        if first_at is None and left < messages:
            first_at, first_left = now, left
        if left < last_left:
            last_at, last_left = now, left
        if left == 0:
            assert first_at is not None
            return first_at, first_left, now, False
        if first_at is not None and now - last_at > STALL_S:
            return first_at, first_left, last_at, True
        if proc.poll() is not None:
            raise RuntimeError(f"{label}: the consumer exited ({proc.returncode}) with {left:,} of {messages:,} "
                               f"messages left:\n{tail(log_file)}")
        if now - started > timeout_s:
            raise RuntimeError(f"{label}: {left:,} of {messages:,} messages left after {timeout_s:.0f} s (--timeout)")
        if first_at is None and now - started > 90:
            raise RuntimeError(f"{label}: no message taken 90 s after the start:\n{tail(log_file)}")
        if now >= next_report:
            progress(f"{label}: {messages - left:,} of {messages:,} gone after {now - started:.0f} s")
            next_report = now + 10.0
        time.sleep(POLL_S)


def describe(run: Run) -> str:
    delivered = f", {run.delivered:,} messages delivered" if run.delivered is not None else ""
    whole = f", {run.rate_total:,.0f} messages/s incl. startup" if not run.stalled else ", STALLED"
    return (f"{run.kind}: {run.rate:,.0f} messages/s steady ({run.steady_messages:,} in {run.steady_s:.2f} s), "
            f"startup to the first message gone {run.startup_s:.2f} s{whole}{delivered}")


@dataclass
class Context:
    workdir: Path
    config_file: Path
    endpoint: str
    secret: str
    count_file: Path
    lambent_url: str
    plain_url: str
    messages: int
    timeout_s: float


def run_lambent(procs: Processes, client: Any, ctx: Context) -> Run:
    preload(client, ctx.lambent_url, ctx.messages)
    ctx.count_file.write_text("")
    log_file = ctx.workdir / "streams.log"
    started = time.monotonic()
    proc = start_runtime(procs, "streams", log_file, lambent_env(ctx.config_file), ROOT)
    try:
        first_at, first_left, end_at, stalled = watch(client, ctx.lambent_url, ctx.messages, proc, started,
                                                      ctx.timeout_s, "lambent", log_file)
    finally:
        procs.stop(proc)
    counts = [int(line) for line in ctx.count_file.read_text().split()]
    run = Run("lambent", ctx.messages, first_at - started, end_at - first_at, end_at - started, first_left,
              sum(counts), stalled)
    if not stalled and sum(counts) < ctx.messages:
        raise RuntimeError(f"lambent: the handler saw {sum(counts):,} messages, fewer than the {ctx.messages:,} "
                           "deleted")
    progress(describe(run) + f"; {len(counts)} batches, {sum(counts) / max(len(counts), 1):.1f} messages each")
    return run


def run_plain(procs: Processes, client: Any, ctx: Context) -> Run:
    preload(client, ctx.plain_url, ctx.messages)
    log_file = ctx.workdir / "plain.log"
    out_file = ctx.workdir / f"plain-{uuid.uuid4().hex[:8]}.json"
    with open(log_file, "ab") as log:
        started = time.monotonic()
        proc = procs.start([sys.executable, str(Path(__file__).resolve()), "--_plain", ctx.endpoint, ctx.plain_url,
                            str(ctx.messages), str(out_file), str(ctx.timeout_s)], stdout=log,
                           stderr=subprocess.STDOUT, cwd=str(ROOT), env={**os.environ, SECRET_ENV: ctx.secret})
    try:
        first_at, first_left, end_at, stalled = watch(client, ctx.plain_url, ctx.messages, proc, started,
                                                      ctx.timeout_s, "plain", log_file)
        proc.wait(30)
    finally:
        procs.stop(proc)
    delivered = json.loads(out_file.read_text())["seen"] if out_file.exists() else None
    run = Run("plain", ctx.messages, first_at - started, end_at - first_at, end_at - started, first_left, delivered,
              stalled)
    progress(describe(run))
    return run


def plain_loop(endpoint: str, url: str, messages: int, out_file: Path, timeout_s: float) -> None:
    """The baseline, in its own process: receive 10 (long poll 1 s), delete them in one batch, until N seen."""
    client = sqs_client(endpoint, os.environ[SECRET_ENV])
    seen = 0
    deadline = time.monotonic() + timeout_s
    while seen < messages and time.monotonic() < deadline:
        got = client.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
        if got:
            client.delete_message_batch(QueueUrl=url, Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)])
            seen += len(got)
    out_file.write_text(json.dumps({"seen": seen}))


class ElasticMQ:
    """Our own ElasticMQ through scripts/elasticmq.sh (stopped at the end), or the one given."""

    def __init__(self, endpoint: str | None, workdir: Path) -> None:
        self.owned = endpoint is None
        self.endpoint = endpoint or ""
        self.secret = "" if self.owned else os.environ.get(SECRET_ENV, "")
        self.state_dir = workdir / "elasticmq"

    def start(self) -> None:
        if not self.owned:
            if not self.secret:
                raise RuntimeError(f"--endpoint needs the guard's secret in {SECRET_ENV} "
                                   "(scripts/elasticmq.sh secret STATE_DIR prints it)")
            return
        progress("elasticmq: starting a server of our own (scripts/elasticmq.sh; the first start downloads jars)")
        out = subprocess.run([str(ROOT / "scripts" / "elasticmq.sh"), "start", str(self.state_dir)],
                             capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            raise RuntimeError(f"scripts/elasticmq.sh start failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
        self.endpoint = out.stdout.strip().splitlines()[-1]
        secret = subprocess.run([str(ROOT / "scripts" / "elasticmq.sh"), "secret", str(self.state_dir)],
                                capture_output=True, text=True, timeout=30)
        if secret.returncode != 0:
            raise RuntimeError(f"scripts/elasticmq.sh secret failed:\n{secret.stderr[-3000:]}")
        self.secret = secret.stdout.strip()
        progress(f"elasticmq: at {self.endpoint} (behind its guard)")

    def stop(self) -> None:
        if self.owned and self.state_dir.exists():
            subprocess.run([str(ROOT / "scripts" / "elasticmq.sh"), "stop", str(self.state_dir)],
                           capture_output=True, text=True, timeout=120)


def deploy(procs: Processes, workdir: Path, config_file: Path, port: int, function: str, queue: str,
           count_file: Path, concurrency: int) -> None:
    """Write the function, and let `lambent serve` deploy it at start-up; once healthy it is stopped."""
    folder = workdir / "functions" / function
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "handler.py").write_text(HANDLER_SOURCE)
    spec = {"handler": "handler.handler", "timeout": 30, "memory_mb": 128,
            "environment": {"BENCH_COUNT_FILE": str(count_file)},
            "events": [{"sqs": {"queue": queue, "batch_size": BATCH_SIZE, "maximum_concurrency": concurrency}}]}
    (folder / "function.yaml").write_text(json.dumps(spec, indent=2))        # JSON is YAML
    log_file = workdir / "serve.log"
    proc = start_runtime(procs, "serve", log_file, lambent_env(config_file), ROOT)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc, log_file, deadline_s=60.0)
    finally:
        procs.stop(proc)


def report(runs: dict[str, list[Run]], messages: int, concurrency: int) -> None:
    best = {kind: max(found, key=lambda run: (not run.stalled, run.rate)) for kind, found in runs.items()}
    lambent, plain = best["lambent"], best["plain"]
    ratio = lambent.rate / plain.rate if plain.rate else 0.0
    print()
    print(f"SQS consumption, {messages:,} messages of {BODY_BYTES} bytes, batch {BATCH_SIZE}, best of "
          f"{len(runs['plain'])} round(s):")
    print(f"  plain boto3 receive(10)/delete_batch loop: {plain.rate:8,.0f} messages/s "
          f"(startup {plain.startup_s:.2f} s, {plain.rate_total:,.0f}/s incl. startup)")
    print(f"  lambent streams (maximum_concurrency {concurrency}): {lambent.rate:8,.0f} messages/s "
          f"(startup {lambent.startup_s:.2f} s, {lambent.rate_total:,.0f}/s incl. startup)")
    print(f"  ratio lambent/plain: {ratio:.2f} (target >= {TARGET_RATIO}): {verdict(ratio >= TARGET_RATIO)}")


def main() -> int:
    parser = argparse.ArgumentParser(description="Lambent's SQS event source against a plain boto3 loop.")
    parser.add_argument("--messages", type=int, default=5000, help="messages per run (default 5000)")
    parser.add_argument("--endpoint", help="use this ElasticMQ (SQS API URL) instead of starting one")
    parser.add_argument("--redis-url", help="use this Redis instead of starting a redis-server")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each, the best kept (default 2)")
    parser.add_argument("--concurrency", type=int, default=2, help="the mapping's maximum_concurrency (default 2)")
    parser.add_argument("--timeout", type=float, default=600.0, help="longest run, in seconds (default 600)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs) at the end")
    parser.add_argument("--_plain", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args._plain:
        endpoint, url, messages, out_file, timeout_s = args._plain
        plain_loop(endpoint, url, int(messages), Path(out_file), float(timeout_s))
        return 0
    if not 1 <= args.messages <= MAX_MESSAGES or args.rounds < 1 or args.concurrency < 2:
        parser.error(f"--messages must be 1..{MAX_MESSAGES}, --rounds >= 1, --concurrency >= 2")

    workdir = Path(tempfile.mkdtemp(prefix="lambent-bench-sqs-"))
    procs = Processes(stop_timeout=15.0)
    server = ElasticMQ(args.endpoint, workdir)
    client = None
    made: list[str] = []
    started = time.monotonic()
    try:
        progress(f"work folder {workdir}; {os.cpu_count()} CPUs; {args.messages:,} messages per run")
        redis_url, _ = use_redis(procs, workdir, args.redis_url)
        server.start()
        client = sqs_client(server.endpoint, server.secret)
        tag = uuid.uuid4().hex[:6]
        lambent_url = client.create_queue(QueueName=f"bench-sqs-{tag}-lambent")["QueueUrl"]
        plain_url = client.create_queue(QueueName=f"bench-sqs-{tag}-plain")["QueueUrl"]
        made += [lambent_url, plain_url]
        port = free_port()
        config_file = write_config(workdir, redis_url, {"gateway": {"host": "127.0.0.1", "port": port},
                                                        "logs": {"level": "WARNING"},
                                                        "metrics": {"streams_port": 0},
                                                        "sandbox": {"isolation": "none"},
                                                        "sqs": {"endpoint_url": server.endpoint,
                                                                "access_key_id": KEY_ID,
                                                                "secret_access_key": server.secret}})
        ctx = Context(workdir=workdir, config_file=config_file, endpoint=server.endpoint, secret=server.secret,
                      count_file=workdir / "counts.txt", lambent_url=lambent_url, plain_url=plain_url,
                      messages=args.messages, timeout_s=args.timeout)
        deploy(procs, workdir, config_file, port, f"benchsqs-{tag}", f"bench-sqs-{tag}-lambent", ctx.count_file,
               args.concurrency)
        runs: dict[str, list[Run]] = {"plain": [], "lambent": []}
        for index in range(args.rounds):
            progress(f"round {index + 1} of {args.rounds}")
            for kind in (["plain", "lambent"] if index % 2 == 0 else ["lambent", "plain"]):
                run = run_plain(procs, client, ctx) if kind == "plain" else run_lambent(procs, client, ctx)
                runs[kind].append(run)
        report(runs, args.messages, args.concurrency)
        if args.redis_url:
            print(f"note: the function benchsqs-{tag} stays in the catalog at {masked(args.redis_url)}")
        progress(f"done in {time.monotonic() - started:.0f} s")
        return 0
    finally:
        procs.stop_all()
        if client is not None and not server.owned:
            for url in made:                        # someone else's server: leave nothing of ours on it
                try:
                    client.delete_queue(QueueUrl=url)
                except Exception as exc:
                    print(f"warning: could not delete {url}: {exc}", file=sys.stderr)
        server.stop()
        discard_workdir(workdir, args.keep)


if __name__ == "__main__":
    run_main(main)
