"""Schedule-fire benchmark: how late a `rate(1 second)` handler starts, against a plain APScheduler job.

    .venv/bin/python bench/cron.py [--seconds S] [--warmup W] [--redis-url URL] [--keep]

What it measures (a benchmark, not a test: it prints figures and PASS/MISS against a target):

1. Lambent: a function whose function.yaml has `events: [{schedule: {expression: "rate(1 second)"}}]`
   and whose handler, first thing, appends `time.time()`, `event["time"]` (the occurrence's scheduled
   time, "%Y-%m-%dT%H:%M:%SZ", UTC; rates are aligned to the epoch, so whole seconds) and `event["id"]`
   to a file. The cluster is the one of tests/test_scheduler.py: the gateway (`python -m runtime serve`)
   deploys the functions folder at start, then one `lambent worker` and TWO `lambent scheduler`
   replicas run. After the first fire (the sandbox's cold start) and W seconds of warm-up (default 5),
   the next S occurrences (default 60) are the window: the delay of each is handler start minus
   scheduled time. Reported: p50, p95, p99 and max in ms (nearest rank: under 100 occurrences p99 is
   the max), the count, and a check that every occurrence of the window fired exactly
   once (no duplicate, no gap). Target: p99 < 1 s with two replicas.
2. Where the delay goes, per occurrence, from the async invocation record `lambent:inv:<event id>`:
     scheduler = scheduled time -> `received_ms` (the enqueue: APScheduler's wake-up, the fire thread,
                 the replicas' claim), split by the schedule's `last` hash (polled every 0.2 s) into
                 wake-up (-> `fired_ms`, the winning replica's `now` in `fire`) and Redis (-> received_ms)
     queue     = `received_ms` -> `started_ms` (the worker's start script: RQ dequeue and bookkeeping)
     worker    = `started_ms` -> the handler's own time.time() (catalog resolve, sandbox round trip)
   and the `history` entry's `startedAt`, compared with the handler's own clock.
3. Baseline, in the same run but not at the same time (after Lambent's processes are stopped): a
   plain APScheduler 3 `BackgroundScheduler` in a process of its own with one job on
   `IntervalTrigger(seconds=1)` calling a no-op that returns `time.time()`; the delay is that minus
   the `scheduled_run_time` of its EVENT_JOB_EXECUTED event, over W + S seconds of which the first W
   are not counted. Its p50/p99 are printed next to Lambent's: the floor of any APScheduler-based
   scheduler on this machine.

Besides the figures: the CPU each process used during the window (% of one CPU) and the share of the
machine other processes and the hypervisor took (noise: a shared machine only ever makes it slower).

Redis: a redis-server of its own on a free port (`--save '' --appendonly no`), stopped at the end;
with `--redis-url` the run uses an RQ queue of its own, and at the end deletes its function (through
the gateway) and the keys it created. Every process this script starts is stopped at the end by PID,
even on error.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from common import (CpuSample, Processes, admin_headers, discard_workdir, free_port, lambent_env, masked, progress,
                    run_main, start_runtime, tail, use_redis, verdict, wait_healthy, write_config)

SCHEDULE = "rate(1 second)"
TARGET_P99_MS = 1000.0
HANDLER_SOURCE = '''\
import json, os, time


def handler(event, context):
    started = time.time()
    line = json.dumps({"started": started, "time": event["time"], "id": event["id"]}) + "\\n"
    with open(os.environ["BENCH_OUT"], "a") as out:
        out.write(line)
    return None
'''
POLL_S = 0.2                # how often the bench reads the handler's file and the schedule's `last` hash
PROGRESS_S = 10.0           # a progress line at most this often during the window
FIRST_FIRE_TIMEOUT_S = 60.0
SETTLE_S = 15.0             # after the window's last occurrence: longest wait for its fire
DUPLICATE_GRACE_S = 1.5     # after every occurrence of the window fired: a late duplicate would show here
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


# -- CPU -----------------------------------------------------------------------------------

class CpuWatch:
    """CPU seconds of named processes (a process counts with its sandbox children) and of the machine."""

    def __init__(self, named: dict[str, int]) -> None:
        self.named = named
        self.before = self._sample()

    def _sample(self) -> CpuSample:
        return CpuSample.take(self.named, children_as={label: label for label in self.named})

    def finish(self) -> dict[str, Any]:
        after = self._sample()
        elapsed = after.at - self.before.at
        used = after.minus(self.before)
        noise = after.noise(self.before, used)
        cpus = os.cpu_count() or 1
        return {"seconds": elapsed, "used": used, "others_share": noise["others"] / (elapsed * cpus),
                "steal_share": noise["steal"] / (elapsed * cpus)}


# -- figures -------------------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    """Nearest rank: the smallest value with at least q of the values at or below it."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def summary(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "p50": percentile(values, 0.50), "p95": percentile(values, 0.95),
            "p99": percentile(values, 0.99), "max": max(values) if values else float("nan"),
            "min": min(values) if values else float("nan")}


def epoch_of(stamp: str) -> int:
    return int(datetime.strptime(stamp, TIME_FORMAT).replace(tzinfo=timezone.utc).timestamp())


def read_fires(path: Path) -> list[dict[str, Any]]:
    """The handler's lines, each with `second` (the scheduled epoch second); a torn last line is skipped."""
    fires = []
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    for line in text.splitlines():
        try:
            fire = json.loads(line)
        except json.JSONDecodeError:
            continue
        fire["second"] = epoch_of(fire["time"])
        fires.append(fire)
    return fires


# -- baseline: plain APScheduler -----------------------------------------------------------

def apscheduler_baseline(seconds: int, warmup: float) -> dict[str, Any]:
    """Runs in its own process: a BackgroundScheduler, one IntervalTrigger(seconds=1) job, no-op."""
    from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, EVENT_JOB_MISSED, JobExecutionEvent
    from apscheduler.schedulers.background import BackgroundScheduler
    from apscheduler.triggers.interval import IntervalTrigger

    def noop() -> float:
        return time.time()            # the only work: what time it is when the job runs

    executed: list[tuple[float, float]] = []      # (scheduled, started)
    problems: list[str] = []

    def listener(event: JobExecutionEvent) -> None:
        if event.code == EVENT_JOB_EXECUTED:
            executed.append((event.scheduled_run_time.timestamp(), float(event.retval)))
        else:
            problems.append(f"{'missed' if event.code == EVENT_JOB_MISSED else 'error'} at "
                            f"{event.scheduled_run_time.isoformat()}")

    scheduler = BackgroundScheduler(timezone=timezone.utc)
    scheduler.add_listener(listener, EVENT_JOB_EXECUTED | EVENT_JOB_MISSED | EVENT_JOB_ERROR)
    added = time.time()
    scheduler.add_job(noop, IntervalTrigger(seconds=1), id="noop")
    scheduler.start()
    begin = added + warmup          # fires scheduled before this are the warm-up
    try:
        time.sleep(warmup + seconds + 1.5)     # bounded: the window's last fire is due at ~begin + seconds
    finally:
        scheduler.shutdown(wait=True)
    window = sorted(item for item in executed if item[0] >= begin)[:seconds]
    return {"delays_ms": [(started - scheduled) * 1000 for scheduled, started in window],
            "scheduled": [scheduled for scheduled, _ in window], "warmup_fires": len(executed) - len(window),
            "problems": problems}


def run_baseline(procs: Processes, workdir: Path, seconds: int, warmup: float) -> dict[str, Any]:
    progress(f"baseline: plain APScheduler BackgroundScheduler, IntervalTrigger(seconds=1), "
             f"{warmup:.0f} s warm-up + {seconds} s")
    out_file = workdir / "baseline.json"
    log_file = workdir / "baseline.log"
    with open(out_file, "wb") as out, open(log_file, "wb") as log:
        proc = procs.start([sys.executable, str(Path(__file__).resolve()), "--_baseline", str(seconds),
                            str(warmup)], stdout=out, stderr=log)
    watch = CpuWatch({"baseline": proc.pid})
    try:
        proc.wait(warmup + seconds + 60)
    finally:
        cpu = watch.finish()
        procs.stop(proc)
    if proc.returncode != 0:
        raise RuntimeError(f"the baseline process failed (exit {proc.returncode}):\n{tail(log_file)}")
    data: dict[str, Any] = json.loads(out_file.read_text().strip().splitlines()[-1])
    data["cpu"] = cpu
    delays = data["delays_ms"]
    steps = {round(b - a, 3) for a, b in zip(data["scheduled"], data["scheduled"][1:])}
    data["regular"] = len(delays) == seconds and steps <= {1.0}
    stats = summary(delays)
    progress(f"baseline: {len(delays)} fires, p50 {stats['p50']:.2f} ms, p99 {stats['p99']:.2f} ms, "
             f"max {stats['max']:.2f} ms" + (f"; {len(data['problems'])} missed/failed" if data["problems"] else ""))
    return data


# -- Lambent -------------------------------------------------------------------------------

class Cluster:
    """The gateway, one worker and two scheduler replicas on one config."""

    def __init__(self, procs: Processes, workdir: Path, config_file: Path) -> None:
        self.procs = procs
        self.workdir = workdir
        self.config_file = config_file
        self.env = lambent_env(config_file)
        self.named: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, label: str, command: str) -> subprocess.Popen[bytes]:
        proc = start_runtime(self.procs, command, self.workdir / f"{label}.log", self.env, self.workdir)
        self.named[label] = proc
        return proc

    def check_alive(self) -> None:
        for label, proc in self.named.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{label} (pid {proc.pid}) exited with {proc.returncode}:\n"
                                   f"{tail(self.workdir / f'{label}.log')}")

    def stop(self, label: str) -> None:
        proc = self.named.pop(label, None)
        if proc is not None:
            self.procs.stop(proc)


def run_lambent(procs: Processes, workdir: Path, redis_url: str, redis_pid: int | None, seconds: int,
                warmup: float, tag: str, shared_redis: bool) -> dict[str, Any]:
    import httpx
    import redis

    from runtime import keys

    name = f"benchcron-{tag}"
    queue = f"bench-cron-{tag}"
    out_file = workdir / "fires.jsonl"
    function_dir = workdir / "functions" / name
    function_dir.mkdir(parents=True)
    (function_dir / "handler.py").write_text(HANDLER_SOURCE)
    (function_dir / "function.yaml").write_text(json.dumps({   # JSON is YAML
        "environment": {"BENCH_OUT": str(out_file)}, "events": [{"schedule": {"expression": SCHEDULE}}]}))
    port = free_port()
    config_file = write_config(workdir, redis_url, {"gateway": {"host": "127.0.0.1", "port": port},
                                                    "logs": {"level": "WARNING"},
                                                    "async": {"poll_s": 0.02, "queue": queue}})
    base = f"http://127.0.0.1:{port}"
    client = redis.Redis.from_url(redis_url)
    last_key = keys.schedule_last(name, 0)
    cluster = Cluster(procs, workdir, config_file)
    seen_ids: set[str] = set()
    try:
        started = time.monotonic()
        gateway = cluster.start("gateway", "serve")
        wait_healthy(base, gateway, workdir / "gateway.log")
        listed = httpx.get(f"{base}/schedules", headers=admin_headers(config_file), timeout=5).json()["schedules"]
        if not any(item["function"] == name and item["expression"] == SCHEDULE for item in listed):
            raise RuntimeError(f"the gateway did not deploy {name}'s schedule: {listed}\n"
                               f"{tail(workdir / 'gateway.log')}")
        progress(f"lambent: gateway healthy after {time.monotonic() - started:.2f} s (pid {gateway.pid}), "
                 f"{name} deployed with {SCHEDULE}")
        cluster.start("worker", "worker")
        cluster.start("scheduler-1", "scheduler")
        cluster.start("scheduler-2", "scheduler")
        progress("lambent: 1 worker and 2 scheduler replicas started (pids "
                 + ", ".join(str(proc.pid) for label, proc in cluster.named.items() if label != "gateway") + ")")

        # The first fire carries the sandbox's cold start: it and the warm-up are not counted.
        deadline = time.monotonic() + FIRST_FIRE_TIMEOUT_S
        while not (fires := read_fires(out_file)):
            cluster.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"no fire within {FIRST_FIRE_TIMEOUT_S:.0f} s:\n{tail(workdir / 'worker.log')}")
            time.sleep(0.05)
        first = fires[0]
        progress(f"lambent: first fire {time.monotonic() - started:.1f} s after the gateway started, "
                 f"{(first['started'] - first['second']) * 1000:.0f} ms late (cold sandbox); "
                 f"warm-up {warmup:.0f} s")
        time.sleep(warmup)
        cluster.check_alive()
        window_start = int(time.time()) + 1       # the first occurrence not yet due
        window_end = window_start + seconds - 1
        expected = set(range(window_start, window_end + 1))
        while time.time() < window_start - 0.05:
            time.sleep(0.01)
        progress(f"lambent: measuring the {seconds} occurrences "
                 f"{datetime.fromtimestamp(window_start, timezone.utc).strftime('%H:%M:%S')}"
                 f"..{datetime.fromtimestamp(window_end, timezone.utc).strftime('%H:%M:%S')} UTC")
        watch = CpuWatch({label: proc.pid for label, proc in cluster.named.items()}
                         | ({"redis": redis_pid} if redis_pid else {}))
        cpu: dict[str, Any] | None = None
        lasts: dict[str, dict[str, str]] = {}     # request id -> the schedule's `last` hash, as polled
        next_progress = time.monotonic() + PROGRESS_S
        complete_at: float | None = None
        hard_deadline = window_end + 1 + SETTLE_S
        while True:                               # bounded by hard_deadline
            now = time.time()
            raw: dict[bytes, bytes] = client.hgetall(last_key)  # type: ignore[assignment]
            if raw:
                polled = {k.decode(): v.decode() for k, v in raw.items()}
                lasts.setdefault(polled.get("request_id", ""), polled)
            if cpu is None and now >= window_end + 1:
                cpu = watch.finish()              # the window's CPU, before the wait for its last fires
            fires = read_fires(out_file)
            got = {fire["second"] for fire in fires} & expected
            if got == expected and complete_at is None:
                complete_at = now
            if complete_at is not None and now >= complete_at + DUPLICATE_GRACE_S and cpu is not None:
                break
            if now > hard_deadline:
                progress(f"lambent: {len(expected - got)} occurrences of the window never fired "
                         f"(waited {SETTLE_S:.0f} s after the last one)")
                break
            if time.monotonic() >= next_progress:
                next_progress += PROGRESS_S
                recent = [f for f in fires if f["second"] in expected]
                if recent:
                    late = (recent[-1]["started"] - recent[-1]["second"]) * 1000
                    progress(f"lambent: {len(recent)} of {seconds} fired so far, last one {late:.0f} ms late")
            cluster.check_alive()
            time.sleep(POLL_S)
        if cpu is None:
            cpu = watch.finish()
        for label in ("scheduler-1", "scheduler-2"):
            cluster.stop(label)
        fires = read_fires(out_file)
        seen_ids.update(fire["id"] for fire in fires)
        counters: dict[bytes, bytes] = client.hgetall(keys.schedule_stats(name, 0))  # type: ignore[assignment]
        stats = {k.decode(): int(v) for k, v in counters.items()}
        window = sorted((fire for fire in fires if fire["second"] in expected), key=lambda fire: fire["second"])
        with client.pipeline(transaction=False) as pipe:
            for fire in window:
                pipe.hmget(keys.invocation(fire["id"]), "received_ms", "started_ms", "history", "status")
            records = pipe.execute()
        cluster.stop("worker")
        if shared_redis:
            response = httpx.delete(f"{base}/functions/{name}", headers=admin_headers(config_file), timeout=10)
            if response.status_code != 200:
                progress(f"warning: could not delete {name}: {response.status_code} {response.text[:200]}")
        cluster.stop("gateway")
    finally:
        if shared_redis:
            if "gateway" in cluster.named:        # an error: the function is still in the catalog
                try:
                    httpx.delete(f"{base}/functions/{name}", headers=admin_headers(config_file), timeout=10)
                except httpx.HTTPError:
                    progress(f"warning: could not delete {name} from the catalog")
            seen_ids.update(fire["id"] for fire in read_fires(out_file))
            cleanup(client, name, queue, seen_ids)
        client.close()

    counts: dict[int, int] = {}
    for fire in fires:
        counts[fire["second"]] = counts.get(fire["second"], 0) + 1
    ids_per_second: dict[int, set[str]] = {}
    for fire in fires:
        ids_per_second.setdefault(fire["second"], set()).add(fire["id"])
    rows = []
    for fire, (received, started_ms, history, status) in zip(window, records):
        row: dict[str, Any] = {"second": fire["second"], "delay": (fire["started"] - fire["second"]) * 1000,
                               "status": status.decode() if status else None}
        if received is not None and started_ms is not None:
            received_s, started_s = int(received) / 1000, int(started_ms) / 1000
            row["scheduler"] = (received_s - fire["second"]) * 1000
            row["queue"] = (started_s - received_s) * 1000
            row["worker"] = (fire["started"] - started_s) * 1000
        entries = json.loads(history) if history else []
        if entries and entries[-1].get("startedAt"):
            stamp = datetime.strptime(entries[-1]["startedAt"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
            row["startedAt_minus_handler"] = (stamp.timestamp() - fire["started"]) * 1000
        last = lasts.get(fire["id"])
        if last is not None and received is not None:
            row["wake"] = int(last["fired_ms"]) - fire["second"] * 1000
            row["redis"] = int(received) - int(last["fired_ms"])
            row["by"] = last["by"]
        rows.append(row)
    return {"window": rows, "expected": sorted(expected), "counts": counts, "ids_per_second": ids_per_second,
            "all_fires": len(fires), "stats": stats, "cpu": cpu, "name": name,
            "first_cold_ms": (first["started"] - first["second"]) * 1000}


def cleanup(client: Any, name: str, queue: str, request_ids: set[str]) -> None:
    """On a shared Redis: the keys this run created (the catalog's code blobs stay, as after any delete)."""
    from runtime import keys
    doomed = list(client.scan_iter(match=f"{keys.PREFIX}fn:{name}:*", count=1000))
    doomed += [keys.invocation(request_id) for request_id in request_ids]
    doomed += list(client.scan_iter(match=f"rq:*{queue}*", count=1000))
    for start in range(0, len(doomed), 500):
        client.delete(*doomed[start:start + 500])
    client.srem("rq:queues", f"rq:queue:{queue}")    # (the stopped worker's rq:worker key expires by itself)
    if request_ids:
        client.zrem(keys.ASYNC_LEASES, *request_ids)
        client.zrem(keys.ASYNC_DELAYED, *request_ids)


# -- report --------------------------------------------------------------------------------

def report(lambent: dict[str, Any], baseline: dict[str, Any], seconds: int) -> bool:
    rows = lambent["window"]
    expected = lambent["expected"]
    counts = lambent["counts"]
    delays = [row["delay"] for row in rows]
    lam = summary(delays)
    base = summary(baseline["delays_ms"])
    print()
    print(f"schedule {SCHEDULE}, 2 scheduler replicas, 1 worker; {seconds} s window after warm-up")
    print(f"{'delay (ms)':27}{'count':>7}{'p50':>9}{'p95':>9}{'p99':>9}{'max':>9}")
    print(f"{'lambent: handler start':27}{lam['n']:7d}{lam['p50']:9.1f}{lam['p95']:9.1f}{lam['p99']:9.1f}"
          f"{lam['max']:9.1f}")
    print(f"{'raw APScheduler: job start':27}{base['n']:7d}{base['p50']:9.2f}{base['p95']:9.2f}{base['p99']:9.2f}"
          f"{base['max']:9.2f}")
    print()
    print("where Lambent's delay goes (ms; each part's own percentiles, so the parts do not add up; the records'"
          " times are whole ms):")
    parts = [("scheduler", "scheduled -> enqueued (received_ms)"),
             ("  wake", "  scheduled -> fire() called (last.fired_ms)"),
             ("  redis", "  fire() called -> enqueued"),
             ("queue", "enqueued -> worker picked it (started_ms)"),
             ("worker", "worker picked it -> handler start")]
    print(f"{'':44}{'n':>4}{'p50':>9}{'p99':>9}{'max':>9}")
    for key, label in parts:
        values = [row[key.strip()] for row in rows if key.strip() in row]
        if values:
            part = summary(values)
            print(f"{label:44}{part['n']:4d}{part['p50']:9.1f}{part['p99']:9.1f}{part['max']:9.1f}")
    skew = [row["startedAt_minus_handler"] for row in rows if "startedAt_minus_handler" in row]
    if skew:
        part = summary(skew)
        print(f"{'history startedAt minus the handler clock':44}{part['n']:4d}{part['p50']:9.1f}{part['p99']:9.1f}"
              f"{part['max']:9.1f}")
    slowest = sorted(rows, key=lambda row: -row["delay"])[:3]
    print("slowest occurrences: " + "; ".join(
        f"{datetime.fromtimestamp(row['second'], timezone.utc).strftime('%H:%M:%S')} {row['delay']:.0f} ms "
        f"(scheduler {row.get('scheduler', float('nan')):.0f}, queue {row.get('queue', float('nan')):.0f}, "
        f"worker {row.get('worker', float('nan')):.0f})" for row in slowest))
    replicas: dict[str, int] = {}
    for row in rows:
        if "by" in row:
            replicas[row["by"]] = replicas.get(row["by"], 0) + 1
    if replicas:
        print("fired by (the winning replica, from the polled `last` hash): "
              + ", ".join(f"{owner}: {count}" for owner, count in sorted(replicas.items()))
              + (f"; {len(rows) - sum(replicas.values())} not seen" if len(rows) > sum(replicas.values()) else ""))
    stats = lambent["stats"]
    print(f"schedule stats (whole run, warm-up included): fired {stats.get('fired', 0)}, "
          f"late (>1 s) {stats.get('late', 0)}, missed {stats.get('missed', 0)}")
    bad_status = [row for row in rows if row["status"] != "succeeded"]
    if bad_status:
        print(f"WARNING: {len(bad_status)} invocation records not 'succeeded': "
              f"{sorted({str(row['status']) for row in bad_status})}")
    print()
    cpu = lambent["cpu"]
    used = ", ".join(f"{label} {100 * value / cpu['seconds']:.1f}%" for label, value in cpu["used"].items())
    print(f"CPU during the window (% of one CPU): {used}")
    print(f"the rest of the machine: others {100 * cpu['others_share']:.0f}%, steal {100 * cpu['steal_share']:.0f}% "
          f"of the {os.cpu_count()} CPUs; baseline run: others "
          f"{100 * baseline['cpu']['others_share']:.0f}%, steal {100 * baseline['cpu']['steal_share']:.0f}%")
    print()
    missing = [second for second in expected if counts.get(second, 0) == 0]
    twice = [second for second in expected if counts.get(second, 0) > 1]
    outside_twice = [second for second, count in counts.items() if count > 1 and second not in expected]
    distinct_ids = all(len(lambent["ids_per_second"].get(second, ())) == counts.get(second, 0) for second in expected)
    once = not missing and not twice
    fmt = "%H:%M:%S"
    print(f"exactly once: {len(expected)} occurrences in the window, {sum(1 for s in expected if s in counts)} fired, "
          f"{len(missing)} gaps, {len(twice)} duplicates "
          f"({lambent['all_fires']} fires in the whole run) {'PASS' if once else 'FAIL'}")
    if missing:
        print("  gaps: " + ", ".join(datetime.fromtimestamp(s, timezone.utc).strftime(fmt) for s in missing))
    if twice:
        print("  duplicates: " + ", ".join(f"{datetime.fromtimestamp(s, timezone.utc).strftime(fmt)} x{counts[s]}"
                                           + ("" if distinct_ids else " (same request id)") for s in twice))
    if outside_twice:
        print(f"  note: {len(outside_twice)} occurrences outside the window (warm-up) fired more than once")
    if not baseline["regular"] or baseline["problems"]:
        print(f"  note: the baseline had {base['n']} fires (expected {seconds}), "
              f"{len(baseline['problems'])} missed/failed: {baseline['problems'][:3]}")
    ok = lam["p99"] < TARGET_P99_MS
    print(f"p99 {lam['p99']:.0f} ms (target < {TARGET_P99_MS:.0f} ms with two replicas) {verdict(ok)}; "
          f"raw APScheduler p50 {base['p50']:.2f} ms / p99 {base['p99']:.2f} ms")
    return once


# -- main ----------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description="Lambent rate(1 second) fire delay against plain APScheduler.")
    parser.add_argument("--seconds", type=int, default=60, help="occurrences measured, one a second (default 60)")
    parser.add_argument("--warmup", type=float, default=5.0,
                        help="seconds of fires after the first one that are not counted (default 5)")
    parser.add_argument("--redis-url", help="use this Redis instead of starting a redis-server")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, fires) at the end")
    parser.add_argument("--_baseline", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args._baseline:
        print(json.dumps(apscheduler_baseline(int(args._baseline[0]), float(args._baseline[1]))))
        return 0
    if not 1 <= args.seconds <= 3600:
        parser.error("--seconds must be between 1 and 3600")
    if not 0 <= args.warmup <= 600:
        parser.error("--warmup must be between 0 and 600")

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    workdir = Path(tempfile.mkdtemp(prefix="lambent-bench-cron-"))
    procs = Processes(stop_timeout=20.0)
    started = time.monotonic()
    tag = uuid.uuid4().hex[:8]
    try:
        progress(f"work folder {workdir}; {os.cpu_count()} CPUs")
        redis_url, redis_pid = use_redis(procs, workdir, args.redis_url)
        lambent = run_lambent(procs, workdir, redis_url, redis_pid, args.seconds, args.warmup, tag,
                              shared_redis=bool(args.redis_url))
        rows = lambent["window"]
        stats = summary([row["delay"] for row in rows])
        progress(f"lambent: {len(rows)} fires in the window, p50 {stats['p50']:.1f} ms, p99 {stats['p99']:.1f} ms, "
                 f"max {stats['max']:.1f} ms; all its processes stopped")
        baseline = run_baseline(procs, workdir, args.seconds, args.warmup)
        once = report(lambent, baseline, args.seconds)
        if args.redis_url:
            print(f"note: {lambent['name']} was deleted and its keys removed from {masked(args.redis_url)}")
        progress(f"done in {time.monotonic() - started:.0f} s")
        return 0 if once else 2
    finally:
        procs.stop_all()
        discard_workdir(workdir, args.keep)


if __name__ == "__main__":
    run_main(main)
