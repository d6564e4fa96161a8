"""SNS benchmark: publishes per second the gateway's SNS API accepts, and publish-to-handler-start latency with
three subscribed functions, each next to a raw baseline measured in the same run.

    .venv/bin/python bench/sns.py [--publishes N] [--latency-messages N] [--threads N] [--redis-url URL] [--keep]

What it measures (a benchmark, not a test: it prints figures, no target is set for these):

1. Publish throughput: N (default 2000) `Publish` calls through boto3's `sns` client (endpoint_url = the
   gateway, the admin key's SigV4 signature), from --threads (default 4) threads, while no worker runs (what is
   measured is the gateway accepting each message into Redis, not the fan-out). Baseline: the same boto3
   `Publish` calls, from the same threads, against a trivial stdlib HTTP server on loopback that answers every
   POST with a canned PublishResponse: the client's own cost per call, the ceiling any server can reach here.
2. Latency: M (default 200) messages published one at a time, one every PACE_S seconds, to a topic three
   functions subscribe to (`events: [{sns: {topic: T}}]` in their function.yaml), run by one `lambent worker`.
   Each handler appends the publish time (carried in the message) and its own start time to a file; p50/p99
   of the difference over the 3 x M deliveries, after WARMUP messages that pay the sandboxes' cold starts.
   Baseline: a raw Redis round trip on the same Redis, LPUSH of a timestamp and a BRPOP in another thread.

Setup: a redis-server of its own unless --redis-url, a `lambent serve` (which deploys the functions and their
subscriptions, and serves the SNS API) and a `lambent worker`, on free loopback ports, with config in a
temporary folder. The sandboxes run unjailed (`sandbox.isolation: none`): the handlers write to a file of the
host, which a jail hides. Every process this script starts is stopped at the end, even on error.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from common import (Processes, admin_headers, discard_workdir, free_port, lambent_env, masked, progress, run_main,
                    start_runtime, tail, use_redis, wait_healthy, write_config)

ROOT = Path(__file__).resolve().parent.parent
HANDLER_SOURCE = '''\
import json
import os
import time

_OUT = os.environ["BENCH_LATENCY_FILE"]


def handler(event, context):
    started = time.time()
    sent = json.loads(event["Records"][0]["Sns"]["Message"])["sent"]
    with open(_OUT, "a") as handle:
        handle.write(f"{os.environ['BENCH_NAME']} {sent} {started}\\n")
    return None
'''
SUBSCRIBERS = 3
WARMUP = 5                 # latency messages not counted: the sandboxes' cold starts
PACE_S = 0.05              # one latency message every this many seconds
MAX_PUBLISHES = 50_000
CANNED = (b'<PublishResponse xmlns="http://sns.amazonaws.com/doc/2010-03-31/"><PublishResult><MessageId>'
          b'00000000-0000-0000-0000-000000000000</MessageId></PublishResult><ResponseMetadata><RequestId>'
          b'00000000-0000-0000-0000-000000000000</RequestId></ResponseMetadata></PublishResponse>')


def sns_client(endpoint: str, key_id: str, secret: str) -> Any:
    import boto3
    from botocore.config import Config
    return boto3.client("sns", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=key_id,
                        aws_secret_access_key=secret,
                        config=Config(connect_timeout=3, read_timeout=30, retries={"max_attempts": 1},
                                      max_pool_connections=32))


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


# -- throughput ------------------------------------------------------------------------------

def publish_rate(client: Any, topic_arn: str, count: int, threads: int, label: str) -> float:
    """Publishes/s of `count` Publish calls from `threads` threads; every one must answer a MessageId."""
    body = json.dumps({"sent": 0, "pad": "x" * 100})
    done = [0]
    lock = threading.Lock()

    def one(_: int) -> None:
        if not client.publish(TopicArn=topic_arn, Message=body).get("MessageId"):
            raise RuntimeError(f"{label}: a Publish answered no MessageId")
        with lock:
            done[0] += 1

    started = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        futures = [pool.submit(one, index) for index in range(count)]
        next_report = started + 10
        for future in futures:
            future.result(timeout=120)
            if time.monotonic() >= next_report:
                progress(f"{label}: {done[0]:,} of {count:,} published")
                next_report += 10
    seconds = time.monotonic() - started
    rate = count / seconds
    progress(f"{label}: {count:,} publishes in {seconds:.2f} s: {rate:,.0f}/s")
    return rate


class _Canned(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # http.server's name
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        # One write for the status line, headers and body: separate small writes would wait on the client's
        # delayed ACK (~40 ms each) and make this baseline slow for nothing.
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(CANNED), CANNED))

    def log_message(self, *args: Any) -> None:
        return


# -- latency ---------------------------------------------------------------------------------

def redis_round_trips(redis_url: str, count: int) -> list[float]:
    """Seconds from LPUSH to BRPOP's return in another thread, `count` times, one at a time."""
    import redis
    key = f"bench-sns-rt-{uuid.uuid4().hex[:8]}"
    pusher, popper = redis.Redis.from_url(redis_url), redis.Redis.from_url(redis_url)
    seen: list[float] = []

    def pop() -> None:
        for _ in range(count):
            item = popper.brpop([key], timeout=10)
            if item is None:
                return
            seen.append(time.time() - float(item[1]))

    thread = threading.Thread(target=pop, daemon=True)
    thread.start()
    try:
        for _ in range(count):
            pusher.lpush(key, repr(time.time()))
            time.sleep(PACE_S)
        thread.join(30)
    finally:
        pusher.delete(key)
        pusher.close()
        popper.close()
    return seen


def handler_latencies(client: Any, topic_arn: str, count: int, out_file: Path, worker: subprocess.Popen[bytes],
                      log_file: Path) -> tuple[list[float], list[float]]:
    """Publish WARMUP + `count` messages one at a time; (cold-start latencies, measured latencies) in seconds."""
    total = WARMUP + count
    for index in range(total):
        client.publish(TopicArn=topic_arn, Message=json.dumps({"sent": time.time(), "n": index}))
        time.sleep(PACE_S)
        if index == WARMUP - 1:
            wait_lines(out_file, WARMUP * SUBSCRIBERS, worker, log_file, 120)     # cold starts done first
    wait_lines(out_file, total * SUBSCRIBERS, worker, log_file, 120)
    rows = [line.split() for line in out_file.read_text().splitlines()]
    delays = [(float(sent), float(started) - float(sent)) for _, sent, started in rows]
    delays.sort()
    cold = [delay for _, delay in delays[:WARMUP * SUBSCRIBERS]]
    return cold, [delay for _, delay in delays[WARMUP * SUBSCRIBERS:]]


def wait_lines(path: Path, lines: int, worker: subprocess.Popen[bytes], log_file: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        have = len(path.read_text().splitlines()) if path.exists() else 0
        if have >= lines:
            return
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited ({worker.returncode}):\n{tail(log_file)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{have} of {lines} handler starts after {timeout_s:.0f} s:\n{tail(log_file)}")
        time.sleep(0.05)


def write_functions(workdir: Path, tag: str, topic: str, out_file: Path) -> list[str]:
    names = []
    for index in range(SUBSCRIBERS):
        name = f"benchsns-{tag}-{index}"
        folder = workdir / "functions" / name
        folder.mkdir(parents=True)
        (folder / "handler.py").write_text(HANDLER_SOURCE)
        spec = {"handler": "handler.handler", "timeout": 30, "memory_mb": 128,
                "environment": {"BENCH_LATENCY_FILE": str(out_file), "BENCH_NAME": name},
                "events": [{"sns": {"topic": topic}}]}
        (folder / "function.yaml").write_text(json.dumps(spec, indent=2))        # JSON is YAML
        names.append(name)
    return names


def ms(seconds: float) -> str:
    return f"{1000 * seconds:7.1f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description="Lambent's SNS API: publish rate and fan-out latency.")
    parser.add_argument("--publishes", type=int, default=2000, help="Publish calls for the rate (default 2000)")
    parser.add_argument("--latency-messages", type=int, default=200, help="messages timed (default 200)")
    parser.add_argument("--threads", type=int, default=4, help="publishing threads (default 4)")
    parser.add_argument("--redis-url", help="use this Redis instead of starting a redis-server")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs) at the end")
    args = parser.parse_args()
    if not 1 <= args.publishes <= MAX_PUBLISHES or not 1 <= args.latency_messages <= 10_000 or args.threads < 1:
        parser.error(f"--publishes must be 1..{MAX_PUBLISHES}, --latency-messages 1..10000, --threads >= 1")

    workdir = Path(tempfile.mkdtemp(prefix="lambent-bench-sns-"))
    procs = Processes(stop_timeout=15.0)
    canned: ThreadingHTTPServer | None = None
    started = time.monotonic()
    try:
        progress(f"work folder {workdir}; {os.cpu_count()} CPUs")
        redis_url, _ = use_redis(procs, workdir, args.redis_url)
        tag = uuid.uuid4().hex[:6]
        topic = f"bench-sns-{tag}"
        out_file = workdir / "latency.txt"
        names = write_functions(workdir, tag, topic, out_file)
        port = free_port()
        config_file = write_config(workdir, redis_url, {"gateway": {"host": "127.0.0.1", "port": port},
                                                        "logs": {"level": "WARNING"},
                                                        "metrics": {"worker_port": 0},
                                                        "sandbox": {"isolation": "none"}})
        env = lambent_env(config_file)
        serve_log = workdir / "serve.log"
        gateway = start_runtime(procs, "serve", serve_log, env, ROOT)
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base, gateway, serve_log, deadline_s=60.0)
        secret = admin_headers(config_file)["Authorization"].removeprefix("Bearer ")
        client = sns_client(base, "local-admin", secret)
        topic_arn = client.create_topic(Name=topic)["TopicArn"]           # made by the deploy; this finds it
        subscribed = client.list_subscriptions_by_topic(TopicArn=topic_arn)["Subscriptions"]
        progress(f"gateway at {base}; topic {topic_arn} with {len(subscribed)} subscription(s): "
                 f"{', '.join(s['Endpoint'].rsplit(':', 1)[-1] for s in subscribed)}")
        if len(subscribed) != SUBSCRIBERS:
            raise RuntimeError(f"{len(subscribed)} subscriptions to {topic} after deploying {names}:\n"
                               f"{tail(serve_log)}")

        # 1. latency, with a worker running the three subscribers
        worker_log = workdir / "worker.log"
        worker = start_runtime(procs, "worker", worker_log, env, ROOT)
        progress(f"latency: {WARMUP} warm-up + {args.latency_messages} messages, one every {PACE_S * 1000:.0f} ms")
        cold, delays = handler_latencies(client, topic_arn, args.latency_messages, out_file, worker, worker_log)
        procs.stop(worker)
        raw = redis_round_trips(redis_url, args.latency_messages)
        # 2. publish rate, no worker: the gateway's acceptance alone
        gateway_rate = publish_rate(client, topic_arn, args.publishes, args.threads, "gateway Publish")
        canned = ThreadingHTTPServer(("127.0.0.1", 0), _Canned)
        threading.Thread(target=canned.serve_forever, daemon=True).start()
        plain = sns_client(f"http://127.0.0.1:{canned.server_address[1]}", "local-admin", secret)
        plain_rate = publish_rate(plain, topic_arn, args.publishes, args.threads, "canned endpoint")

        print()
        print(f"SNS publish rate, {args.publishes:,} Publish calls from {args.threads} thread(s), boto3:")
        print(f"  trivial HTTP endpoint (canned answer): {plain_rate:8,.0f} publishes/s")
        print(f"  lambent gateway (into Redis):          {gateway_rate:8,.0f} publishes/s "
              f"({gateway_rate / plain_rate:.2f} of the trivial endpoint)")
        print(f"Publish -> handler start, {SUBSCRIBERS} subscribers, {len(delays)} deliveries "
              f"({args.latency_messages} messages after {WARMUP} warm-up):")
        print(f"  raw Redis LPUSH -> BRPOP:  p50 {ms(statistics.median(raw))}  p99 {ms(percentile(raw, 0.99))}")
        print(f"  lambent:                   p50 {ms(statistics.median(delays))}  p99 {ms(percentile(delays, 0.99))}"
              f"  max {ms(max(delays))}")
        print(f"  (warm-up, cold sandboxes:  max {ms(max(cold))})")
        if args.redis_url:
            print(f"note: the functions {', '.join(names)} and topic {topic} stay at {masked(args.redis_url)}")
        progress(f"done in {time.monotonic() - started:.0f} s")
        return 0
    finally:
        if canned is not None:
            canned.shutdown()
        procs.stop_all()
        discard_workdir(workdir, args.keep)


if __name__ == "__main__":
    run_main(main)
