"""Async-invoke benchmark: Lambent's worker against plain RQ workers, measured in the same run.

    .venv/bin/python bench/async.py [--jobs N] [--redis-url URL] [--rounds R] [--warmup W] [--concurrency C]
                                    [--fork-jobs M] [--log-level L] [--trace] [--profile FILE] [--keep]

What it measures (a benchmark, not a test: it prints figures and PASS/MISS against a target):

1. Lambent: N trivial async invocations (`def handler(event, context): return {"ok": True}`, body `{}`)
   drained by ONE `lambent worker` process (an RQ SimpleWorker whose job runs the invocation
   in a warm sandbox and records the outcome). The events are enqueued beforehand through
   `AsyncStore.accept`, the code the gateway runs for a 202, on a queue of this run's own.
2. Baseline: N no-op jobs (`noop` below) with the same RQ options as Lambent's jobs (JSON serializer,
   timeout -1, result_ttl 0, failure_ttl 1 day) drained by `rq.SimpleWorker(...).work()`
   in a separate process, on the same Redis; for context also M jobs on the forking `rq.Worker`.
3. jobs/s of each and the ratio Lambent / SimpleWorker (target >= 1.2).
4. `--concurrency C`: `lambent worker --concurrency C` (C worker processes under one supervisor) against C
   SimpleWorker processes on one queue, under one supervisor too (names unique per round: a worker whose
   death RQ never recorded would refuse the next round's worker of the same name); the warm-up is then at
   least 100 jobs per worker, so that every worker has started before the measured jobs.

How each is timed, the same way for every worker: W warm-up jobs, then the N measured ones, are
enqueued while no worker runs; then the worker process starts. The queue is FIFO and there is one
worker, so the measured jobs run in order right after the warm-up ones. The bench polls Redis every
20 ms (one command) for the LAST warm-up job, then the LAST measured job, to be done (Lambent: the
record's status is `succeeded`; RQ: the job key is gone, which result_ttl 0 does on success). The drain rate is
N / (t_last_measured_done - t_last_warmup_done): N complete job cycles of a warm worker (dequeue,
bookkeeping, run, record), without process start-up or the sandbox's cold start. All N are checked
at the end. "e2e" is the end-to-end figure for context: from the first enqueue to the last result,
enqueueing, worker start-up and warm-up included. The SimpleWorker + Lambent pair runs `--rounds`
times, alternating which goes first; the verdict takes the best rate of each (the noise of a shared
machine only slows things down), and the ratio of each back-to-back pair is printed too.

Besides the figures, per measured job: CPU time of each process (worker, sandbox, redis-server, this
bench's poller) read from /proc, and the Redis commands run (`INFO commandstats` deltas; the poller's
own commands are subtracted). `--trace` replays a few jobs of each kind under `redis-cli MONITOR` and
prints the command sequence of one job cycle; `--profile FILE` runs py-spy on one extra drain of
Lambent and of SimpleWorker and prints where each worker's main thread spends its wall time per job,
by stage (RQ dequeue / bookkeeping, Lambent's start, loop-thread wait, finish). Neither affects the
measured figures.

Redis: a redis-server of its own on a free port (`--save '' --appendonly no`), stopped at the end;
with `--redis-url` every key this run created is deleted at the end (its keys carry a run tag).
Every process this script starts is stopped at the end by PID, even on error.
"""

import argparse
import asyncio
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from common import (CpuSample, Processes, collapsed_stacks, discard_workdir, lambent_env, masked, progress,
                    py_spy_path, redis_cli, tail, use_redis, verdict, write_config)

HANDLER_SOURCE = 'def handler(event, context):\n    return {"ok": True}\n'
TARGET_RATIO = 1.2          # issue 17: Lambent's worker over plain RQ SimpleWorker, jobs/s
BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
# The baseline's job function, by name: the RQ worker imports this file as the module `async`
# (the file's folder is on its PYTHONPATH; importlib accepts a keyword as a module name).
NOOP_FUNC = f"{Path(__file__).stem}.noop"
POLL_S = 0.02             # how often the bench looks at the last job's key (one command)
PROGRESS_S = 1.0          # a progress line at most this often


def noop() -> None:
    """The baseline RQ job: nothing at all."""
    return None


def bench_id(tag: str, phase: int, round_: int, index: int) -> str:
    """A request/job id in UUID form that carries this run's tag (so cleanup can find every key)."""
    return f"{tag}-{phase:04x}-4{round_:03x}-8000-{index:012x}"


# -- the three kinds of worker -------------------------------------------------------------

@dataclass
class Kind:
    """How to enqueue one job, start the worker, and tell that a job is done, for one kind of worker."""
    label: str
    queue: str
    phase: int                                     # part of the ids, so each phase has its own
    key: Callable[[str], str]                      # the key the poller looks at
    command: str                                   # the poller's Redis command on that key
    done: Callable[[Any], bool]                    # is the reply of that command "done"?


def lambent_kind(queue: str) -> Kind:
    return Kind(label="lambent", queue=queue, phase=1, key=lambda rid: f"lambent:inv:{rid}", command="hget",
                done=lambda reply: reply == b"succeeded")


def rq_kind(label: str, queue: str, phase: int) -> Kind:
    # result_ttl=0: RQ deletes the job key when the job succeeded (a failed one is kept, status failed).
    return Kind(label=label, queue=queue, phase=phase, key=lambda jid: f"rq:job:{jid}", command="exists",
                done=lambda reply: reply == 0)


def poll_one(conn: Any, kind: Kind, ident: str) -> bool:
    if kind.command == "hget":
        return kind.done(conn.hget(kind.key(ident), "status"))
    return kind.done(conn.exists(kind.key(ident)))


def count_done(conn: Any, kind: Kind, ids: list[str]) -> tuple[int, int]:
    """How many of `ids` are done (FIFO and one worker: done-ness is a prefix, so a binary search);
    also returns the Redis commands it used."""
    lo, hi, calls = 0, len(ids), 0
    while lo < hi:
        mid = (lo + hi) // 2
        calls += 1
        if poll_one(conn, kind, ids[mid]):
            lo = mid + 1
        else:
            hi = mid
    return lo, calls


def verify(conn: Any, kind: Kind, ids: list[str]) -> dict[str, int]:
    """Every measured job, checked at the end: counts by state."""
    states: dict[str, int] = {}
    for start in range(0, len(ids), 500):
        with conn.pipeline(transaction=False) as pipe:
            for ident in ids[start:start + 500]:
                pipe.hget(kind.key(ident), "status")     # RQ: gone (None) = succeeded, as result_ttl is 0
            for reply in pipe.execute():
                if kind.command == "hget":
                    state = reply.decode() if reply else "missing"
                else:
                    state = "succeeded" if reply is None else f"rq-{reply.decode()}"
                states[state] = states.get(state, 0) + 1
    return states


def enqueue_lambent(conn: Any, config_file: Path, function: str, ids: list[str]) -> float:
    from runtime.asyncq.store import AsyncStore
    from runtime.config import Config

    store = AsyncStore(conn, Config.load(config_file, environ={}))
    started = time.perf_counter()
    for index, request_id in enumerate(ids):
        store.accept(function=function, qualifier="$LATEST", payload=b"{}", trigger="async", request_id=request_id)
        if (index + 1) % 1000 == 0:
            progress(f"  enqueued {index + 1}/{len(ids)}")
    return time.perf_counter() - started


def enqueue_rq(conn: Any, queue_name: str, ids: list[str]) -> float:
    from rq import Queue
    from rq.serializers import JSONSerializer

    queue = Queue(queue_name, connection=conn, serializer=JSONSerializer)
    started = time.perf_counter()
    for index, job_id in enumerate(ids):
        # The options of Lambent's jobs (AsyncStore._enqueue), one MULTI per job as there.
        with conn.pipeline() as pipe:
            pipe.multi()
            queue.enqueue_call(NOOP_FUNC, job_id=job_id, timeout=-1, result_ttl=0, failure_ttl=86400,
                               pipeline=pipe)
            pipe.execute()
        if (index + 1) % 1000 == 0:
            progress(f"  enqueued {index + 1}/{len(ids)}")
    return time.perf_counter() - started


REDIS_URL_ENV = "BENCH_REDIS_URL"     # how the RQ worker gets the Redis URL: argv would show its password to ps


CONCURRENCY: list[int] = [1]          # worker processes of each kind (--concurrency)


def worker_argv(kind: Kind, tag: str) -> list[str]:
    """The worker's argv; the RQ baseline finds the Redis URL in $BENCH_REDIS_URL (see main)."""
    if kind.label == "lambent":
        return [sys.executable, "-m", "runtime", "worker", "--concurrency", str(CONCURRENCY[0])]
    flavour = "fork" if kind.phase == 3 else "simple"
    return [sys.executable, str(Path(__file__).resolve()), "--_rq-worker", flavour, kind.queue,
            f"bench-{tag}-{flavour}-{os.getpid()}", str(CONCURRENCY[0] if flavour == "simple" else 1)]


def run_rq_worker(flavour: str, queue_name: str, name: str, count: str = "1") -> None:
    """The baseline worker process: exactly what `lambent worker` does around its Runner. With a count above 1
    it supervises that many, as `lambent worker --concurrency N` does: SIGTERM goes to each (RQ's own handler
    then registers its death, so the next round may reuse its name), and one that exits ends them all."""
    if int(count) > 1:
        supervise_rq_workers(flavour, queue_name, name, int(count))
        return
    import redis
    from rq import Queue, SimpleWorker, Worker
    from rq.serializers import JSONSerializer

    connection = redis.Redis.from_url(os.environ[REDIS_URL_ENV])
    queue = Queue(queue_name, connection=connection, serializer=JSONSerializer)
    cls = SimpleWorker if flavour == "simple" else Worker
    worker = cls([queue], connection=connection, serializer=JSONSerializer, name=name)
    worker.work(burst=False, logging_level="WARNING", with_scheduler=False)   # until SIGTERM, as `lambent worker`


def supervise_rq_workers(flavour: str, queue_name: str, name: str, count: int) -> None:
    children = {subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--_rq-worker", flavour,
                                  queue_name, f"{name}-{os.getpid()}-{index}", "1"]).pid for index in range(count)}
    codes: dict[int, int] = {}                   # reaped here, by os.wait: never by Popen

    def stop(signum: int, frame: Any) -> None:
        for pid in children - codes.keys():
            os.kill(pid, signal.SIGTERM)         # not reaped yet, so the PID is still that child's

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while len(codes) < count:
        pid, status = os.wait()
        if pid in children:
            codes[pid] = os.waitstatus_to_exitcode(status)
            stop(signal.SIGTERM, None)           # the first to exit (by SIGTERM, or on its own) ends the others
    raise SystemExit(next((code for code in codes.values() if code), 0))


# -- one drain -----------------------------------------------------------------------------

def cpu_sample(worker_pid: int, redis_pid: int | None) -> CpuSample:
    """The worker with its sandbox (or work horses), Redis, and this bench (the poller)."""
    return CpuSample.take({"worker": worker_pid, "redis": redis_pid}, children_as={"worker": "sandbox"})


@dataclass
class Drain:
    label: str
    jobs: int
    drain_s: float
    e2e_s: float
    enqueue_s: float
    startup_s: float                     # worker spawn -> last warm-up job done
    cpu: dict[str, float] = field(default_factory=dict)
    commands: dict[str, tuple[int, int]] = field(default_factory=dict)   # name -> (calls, usec)
    states: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.jobs / self.drain_s if self.drain_s > 0 else 0.0

    @property
    def e2e_rate(self) -> float:
        return self.jobs / self.e2e_s if self.e2e_s > 0 else 0.0


def commandstats(conn: Any) -> dict[str, tuple[int, int]]:
    stats = conn.info("commandstats")
    return {name.removeprefix("cmdstat_"): (int(value["calls"]), int(value["usec"])) for name, value in stats.items()}


def stats_delta(after: dict[str, tuple[int, int]], before: dict[str, tuple[int, int]],
                own: dict[str, int]) -> dict[str, tuple[int, int]]:
    delta = {}
    for name, (calls, usec) in after.items():
        was_calls, was_usec = before.get(name, (0, 0))
        calls -= was_calls + own.get(name, 0)
        if name == "info":
            continue
        if calls > 0:
            delta[name] = (calls, usec - was_usec)
    return delta


def drain(procs: Processes, conn: Any, kind: Kind, *, jobs: int, warmup: int, round_: int, tag: str,
          redis_url: str, redis_pid: int | None, workdir: Path, env: dict[str, str],
          enqueue: Callable[[list[str]], float], profile: Path | None = None) -> Drain:
    warm_ids = [bench_id(tag, kind.phase, round_, index) for index in range(warmup)]
    ids = [bench_id(tag, kind.phase, round_, warmup + index) for index in range(jobs)]
    progress(f"{kind.label}: enqueueing {warmup} warm-up + {jobs} jobs on queue {kind.queue}")
    first_enqueue = time.perf_counter()
    enqueue_s = enqueue(warm_ids + ids)
    progress(f"{kind.label}: enqueued in {enqueue_s:.2f} s ({(warmup + jobs) / enqueue_s:,.0f}/s); starting the worker")

    log_file = workdir / f"worker-{kind.label.replace(' ', '-')}-{round_}.log"
    own: dict[str, int] = {}          # the poller's own commands, subtracted from commandstats
    spy: subprocess.Popen[bytes] | None = None
    with open(log_file, "wb") as log:
        spawned = time.perf_counter()
        proc = procs.start(worker_argv(kind, tag), cwd=str(REPO), env=env, stdout=log, stderr=log)
    try:
        # Bounded: worker start-up plus at least 10 jobs/s, and a poll count to match.
        deadline = spawned + 60.0 + (warmup + jobs) * 0.1
        max_polls = int((deadline - spawned) / POLL_S) + 1000
        t0 = t1 = spawned
        before = cpu_sample(proc.pid, redis_pid)
        stats_before = commandstats(conn)
        waiting_warmup = True                 # first the last warm-up job, then the last measured one
        target = warm_ids[-1]
        next_progress = time.perf_counter() + PROGRESS_S
        finished = False
        for _ in range(max_polls):
            done = poll_one(conn, kind, target)
            own[kind.command] = own.get(kind.command, 0) + 1
            now = time.perf_counter()
            if done and waiting_warmup:
                t0 = now
                # The measured window starts here: samples of CPU and Redis commands.
                before = cpu_sample(proc.pid, redis_pid)
                stats_before = commandstats(conn)
                own = {}
                waiting_warmup = False
                target = ids[-1]
                progress(f"{kind.label}: worker warm {t0 - spawned:.2f} s after its start; measuring {jobs} jobs")
                if profile is not None:
                    spy = start_py_spy(proc.pid, profile)
                continue
            if done:
                t1 = now
                finished = True
                break
            if now >= next_progress:
                if waiting_warmup:
                    progress(f"{kind.label}: waiting for the worker to warm up "
                             f"({now - spawned:.1f} s since its start)")
                else:
                    count, calls = count_done(conn, kind, ids)
                    own[kind.command] = own.get(kind.command, 0) + calls
                    progress(f"{kind.label}: {count}/{jobs} done, {count / (now - t0):,.0f} jobs/s so far")
                next_progress = now + PROGRESS_S
            if proc.poll() is not None and not poll_one(conn, kind, target):
                raise RuntimeError(f"{kind.label} worker exited with {proc.returncode} before the jobs were "
                                   f"done:\n{tail(log_file)}")
            if now > deadline:
                raise RuntimeError(f"{kind.label}: not done within {deadline - spawned:.0f} s:\n{tail(log_file)}")
            time.sleep(POLL_S)
        if not finished:
            raise RuntimeError(f"{kind.label}: poll budget exhausted:\n{tail(log_file)}")
        # The worker still runs (waiting for more jobs), and so does its sandbox: sample, then stop it.
        after = cpu_sample(proc.pid, redis_pid)
        stats_after = commandstats(conn)
        procs.stop(proc)
        if spy is not None:
            finish_py_spy(spy, profile)
    finally:
        procs.stop(proc)
        if spy is not None and spy.poll() is None:
            spy.kill()
            spy.wait()
    states = verify(conn, kind, ids)
    result = Drain(label=kind.label, jobs=jobs, drain_s=t1 - t0, e2e_s=t1 - first_enqueue, enqueue_s=enqueue_s,
                   startup_s=t0 - spawned, cpu=after.minus(before),
                   commands=stats_delta(stats_after, stats_before, own), states=states)
    ok = states.get("succeeded", 0) == jobs
    progress(f"{kind.label}: {jobs} jobs in {result.drain_s:.3f} s = {result.rate:,.0f} jobs/s "
             f"(e2e {result.e2e_rate:,.0f}/s); " + ("all succeeded" if ok else f"STATES {states}"))
    if not ok:
        raise RuntimeError(f"{kind.label}: not every job succeeded: {states}\n{tail(log_file)}")
    return result


# -- profiling -----------------------------------------------------------------------------

PY_SPY_RATE = 250


def start_py_spy(pid: int, out: Path) -> subprocess.Popen[bytes] | None:
    spy = py_spy_path()
    if spy is None:
        progress("profile: py-spy not found; skipped (pip install py-spy)")
        return None
    # --idle: every thread is sampled whether it runs or waits, so the worker's main thread (which runs
    # the jobs one after the other) gives wall time per job. Ends by itself when the worker exits.
    return subprocess.Popen([str(spy), "record", "--pid", str(pid), "--duration", "600", "--rate", str(PY_SPY_RATE),
                             "--format", "raw", "--threads", "--idle", "--nonblocking", "--output", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def finish_py_spy(spy: subprocess.Popen[bytes], out: Path | None) -> None:
    try:
        output, _ = spy.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        spy.send_signal(signal.SIGINT)
        output, _ = spy.communicate(timeout=10)
    if out is None or not out.exists():
        progress(f"profile: py-spy wrote nothing: {output.decode(errors='replace')[-500:]}")


# Where the worker's main thread is, by the innermost frame that names a stage (leaf first). Lambent's
# worker runs its own loop (runtime/asyncq/rqworker.py: Worker.work, Worker._next_job) and hands each
# invocation to the loop thread through Runner._on_loop; RQ's SimpleWorker runs BaseWorker.work.
STAGES = [
    ("AsyncStore.start ", "lambent: AsyncStore.start (EVALSHA _START)"),
    ("AsyncStore.finish ", "lambent: AsyncStore.finish (EVALSHA _FINISH)"),
    ("Runner._call ", "lambent: waiting on the loop thread (invocation)"),
    ("Runner._on_loop ", "lambent: waiting on the loop thread (invocation)"),
    ("Runner.run ", "lambent: rest of run_job (Python)"),
    ("run_job ", "lambent: rest of run_job (Python)"),
    ("Job.perform ", "rq: Job.perform (the job function)"),
    ("BaseWorker.dequeue_job_and_maintain_ttl ", "rq: dequeue (LMOVE, fetch, heartbeat)"),
    ("Worker._next_job ", "rq: dequeue (LMOVE, fetch, heartbeat)"),
    ("BaseWorker.prepare_execution ", "rq: prepare execution"),
    ("BaseWorker.prepare_job_execution ", "rq: prepare job execution"),
    ("BaseWorker._finalize_success ", "rq: success bookkeeping"),
    ("SimpleWorker.execute_job ", "rq: rest of execute_job"),
    ("BaseWorker.work ", "rq: work loop (heartbeat, state, suspension)"),
    ("Worker.work ", "rq: work loop (heartbeat, state, suspension)"),
]
OTHER_STAGE = "other (start-up, exit)"


def profile_stages(path: Path, jobs: int) -> tuple[dict[str, float], dict[str, float]]:
    """From py-spy's collapsed stacks: µs per job of the main thread in each stage, and the seconds
    sampled of every thread."""
    stages: dict[str, int] = {}
    threads: dict[str, int] = {}
    for frames, count in collapsed_stacks(path):
        thread = re.sub(r"^thread \(\w+\): ", "", frames[0]) if frames[0].startswith("thread") else "?"
        threads[thread] = threads.get(thread, 0) + count
        if thread != "MainThread":
            continue
        stage = OTHER_STAGE
        for frame in reversed(frames):
            hit = next((name for marker, name in STAGES if frame.startswith(marker)), None)
            if hit:
                stage = hit
                break
        stages[stage] = stages.get(stage, 0) + count
    per_job = {stage: 1e6 * count / PY_SPY_RATE / jobs for stage, count in stages.items()}
    return per_job, {name: count / PY_SPY_RATE for name, count in threads.items()}


def print_profiles(profiles: dict[str, tuple[Path, "Drain"]]) -> None:
    results = {label: profile_stages(path, drain.jobs) for label, (path, drain) in profiles.items()}
    print("\nprofile (py-spy --idle, one extra drain of each, not counted): where the worker's main thread")
    print("spends its wall time, µs per job; Redis round trips and waits are counted in their stage.")
    stages = list(dict.fromkeys([name for _, name in STAGES] + [OTHER_STAGE]))
    print(f"{'':58}" + "".join(f"{label:>17}" for label in profiles))
    for stage in stages:
        values = [results[label][0].get(stage, 0.0) for label in profiles]
        if any(value >= 1 for value in values):
            print(f"  {stage:56}" + "".join(f"{value:17.0f}" for value in values))
    totals = [sum(results[label][0].values()) for label in profiles]
    print(f"  {'total (main-thread samples / rate / jobs)':56}" + "".join(f"{value:17.0f}" for value in totals))
    walls = [1e6 * drain.drain_s / drain.jobs for _, drain in profiles.values()]
    print(f"  {'measured drain wall per job (under py-spy)':56}" + "".join(f"{value:17.0f}" for value in walls))
    for label, (path, _) in profiles.items():
        threads = results[label][1]
        print(f"  {label}: seconds sampled per thread: " + ", ".join(
            f"{name} {secs:.1f}" for name, secs in sorted(threads.items(), key=lambda item: -item[1])))
        print(f"  {label}: collapsed stacks in {path}")


MONITOR_LINE = re.compile(r'^[\d.]+ \[\d+ ([^\]]+)\] (.*)$')


def trace(procs: Processes, conn: Any, kind: Kind, *, tag: str, redis_url: str, workdir: Path,
          env: dict[str, str], enqueue: Callable[[list[str]], float], warmup: int, jobs: int = 5) -> None:
    """Run `jobs` jobs after a warm-up under MONITOR; print the commands of one job cycle of the worker."""
    warm_ids = [bench_id(tag, kind.phase, 0xFFF, index) for index in range(warmup)]
    ids = [bench_id(tag, kind.phase, 0xFFF, warmup + index) for index in range(jobs)]
    enqueue(warm_ids + ids)
    ours = {client["addr"] for client in conn.client_list()}      # this bench's connections
    out_file = workdir / f"monitor-{kind.phase}.txt"
    log_file = workdir / f"worker-{kind.phase}-trace.log"
    monitor = proc = None
    try:
        with open(out_file, "wb") as out:
            monitor_argv, monitor_env = redis_cli(redis_url, "monitor")
            monitor = procs.start(monitor_argv, env=monitor_env, stdout=out, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 5
            while out_file.stat().st_size == 0 and time.monotonic() < deadline:   # "OK" once MONITOR is on
                time.sleep(0.01)
            with open(log_file, "wb") as log:
                proc = procs.start(worker_argv(kind, tag), cwd=str(REPO), env=env, stdout=log,
                                   stderr=log)
            deadline = time.monotonic() + 60
            while not poll_one(conn, kind, ids[-1]) and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.02)
            time.sleep(0.2)
            procs.stop(proc)
    finally:
        if monitor is not None:
            procs.stop(monitor)
        if proc is not None:
            procs.stop(proc)
    lines = []
    for raw in out_file.read_text(errors="replace").splitlines():
        match = MONITOR_LINE.match(raw)
        if match and match.group(1) not in ours:
            lines.append(match.groups())
    # A job cycle starts where the worker takes a job off the queue; keep the cycles of the traced jobs.
    starts = [i for i, (_, command) in enumerate(lines) if re.match(r'"(B?LMOVE|B?LPOP)" "rq:queue:', command, re.I)]
    cycles = [lines[a:b] for a, b in zip(starts, starts[1:] + [len(lines)])]
    traced = [cycle for cycle in cycles if any(ids[0] in c or ids[1] in c or ids[2] in c or ids[3] in c
                                               for _, c in cycle[:40])]
    if len(traced) < 2:
        progress(f"trace {kind.label}: could not find the traced job cycles in {out_file}")
        return
    cycle = traced[1]
    lua = sum(1 for client, _ in cycle if client == "lua")
    # Round trips: every command a client sends, but a MULTI..EXEC block once (RQ and Lambent send those
    # as one pipeline); the commands of a plain pipeline cannot be told apart here and count one by one.
    trips: dict[str, int] = {}
    in_multi: set[str] = set()
    for client, command in cycle:
        if client == "lua":
            continue
        name = command.split('"')[1].upper() if command.count('"') >= 2 else command
        if client in in_multi:
            if name == "EXEC":
                in_multi.discard(client)
            continue
        if name == "MULTI":
            in_multi.add(client)
        trips[client] = trips.get(client, 0) + 1
    names = {client: f"conn{index + 1}" for index, client in enumerate(trips)}
    print(f"\nMONITOR trace, {kind.label}: commands per job cycle {[len(c) for c in traced]} "
          f"(dequeue to next dequeue; the last one includes the worker's idle wait and exit). One cycle: "
          f"{len(cycle)} commands, {lua} of them inside Lua scripts (marked lua); round trips "
          f"{sum(trips.values())} (" + ", ".join(f"{names[c]} {n}" for c, n in trips.items()) + "):")
    for client, command in cycle:
        where = "lua  " if client == "lua" else f"{names.get(client, '?'):5}"
        print(f"  {where} {command[:150]}")


# -- cleanup on a Redis that is not ours -------------------------------------------------------

GLOBAL_KEYS = ["lambent:catalog:generation", "lambent:functions", "lambent:async:leases", "lambent:async:delayed",
               "rq:queues", "rq:workers", "rq:clean_groups", "rq:clean_registries"]


def cleanup_shared_redis(conn: Any, tag: str, function: str, code_hash: str | None, worker_pids: list[int],
                         preexisting: set[str]) -> int:
    """Delete every key this run created (they carry the tag or the function's name), take this run's
    members out of shared sets, and drop shared keys that only exist because of this run."""
    from runtime import keys

    deleted = 0
    patterns = [f"*{tag}*"] + [f"rq:worker:lambent-*-{pid}-*" for pid in worker_pids]
    for pattern in patterns:
        cursor, rounds = 0, 0
        while rounds < 100_000:
            cursor, found = conn.scan(cursor=cursor, match=pattern, count=1000)
            if found:
                deleted += conn.delete(*found)
            rounds += 1
            if cursor == 0:
                break
    for sorted_set in (keys.ASYNC_LEASES, keys.ASYNC_DELAYED):
        members = [m for m in conn.zrange(sorted_set, 0, -1) if tag in m.decode(errors="replace")]
        for start in range(0, len(members), 1000):
            conn.zrem(sorted_set, *members[start:start + 1000])
    for shared_set in ("rq:queues", "rq:workers"):
        members = [m for m in conn.smembers(shared_set) if tag in m.decode(errors="replace")
                   or any(f"-{pid}-" in m.decode(errors="replace") for pid in worker_pids)]
        if members:
            conn.srem(shared_set, *members)
    deleted += conn.hdel(keys.FUNCTIONS, function)
    if code_hash:
        deleted += conn.delete(keys.code(code_hash))
    for key in GLOBAL_KEYS:
        if key in preexisting:
            continue      # e.g. the catalog generation another deployment counts on: left as it is
        kind = conn.type(key).decode()
        size = {"set": conn.scard, "zset": conn.zcard, "hash": conn.hlen, "list": conn.llen}.get(kind)
        if kind == "none" or (size is not None and size(key) > 0):
            continue      # gone already, or someone else's members are in it now
        deleted += conn.delete(key)
    return deleted


# -- report --------------------------------------------------------------------------------

def per_job_table(drains: dict[str, Drain]) -> None:
    print("\nCPU time per measured job (µs):")
    print(f"{'':16}{'worker':>9}{'sandbox':>9}{'redis':>9}{'bench':>9}{'total':>9}{'wall':>9}{'busy':>7}")
    for label, d in drains.items():
        per = {key: 1e6 * value / d.jobs for key, value in d.cpu.items()}
        wall = 1e6 * d.drain_s / d.jobs
        busy = sum(d.cpu.values()) / (d.drain_s * (os.cpu_count() or 1)) * 100
        print(f"{label:16}{per['worker']:9.0f}{per['sandbox']:9.0f}{per['redis']:9.0f}{per['bench']:9.0f}"
              f"{sum(per.values()):9.0f}{wall:9.0f}{busy:6.0f}%")
    print("\nRedis commands per measured job (INFO commandstats deltas, the poller's own removed;")
    print("commands run inside Lua scripts are counted too):")
    names = sorted({name for d in drains.values() for name in d.commands},
                   key=lambda name: -max(d.commands.get(name, (0, 0))[0] / d.jobs for d in drains.values()))
    print(f"{'':24}" + "".join(f"{label:>16}" for label in drains))
    for name in names:
        row = "".join(f"{d.commands.get(name, (0, 0))[0] / d.jobs:16.2f}" for d in drains.values())
        print(f"  {name:22}{row}")
    totals = "".join(f"{sum(c for c, _ in d.commands.values()) / d.jobs:16.2f}" for d in drains.values())
    usec = "".join(f"{sum(u for _, u in d.commands.values()) / d.jobs:16.1f}" for d in drains.values())
    print(f"  {'total calls':22}{totals}")
    print(f"  {'redis usec in cmds':22}{usec}   (EVALSHA's time includes its inner commands' again)")


def report(rounds: list[dict[str, Drain]], fork: Drain | None, redis_shared: bool) -> float:
    print()
    print(f"{'':20}{'jobs':>7}{'drain s':>9}{'jobs/s':>9}{'e2e/s':>9}{'enqueue/s':>11}{'warm-up s':>11}")
    for index, drains in enumerate(rounds):
        for label, d in drains.items():
            print(f"{label + f' r{index + 1}':20}{d.jobs:7d}{d.drain_s:9.3f}{d.rate:9,.0f}{d.e2e_rate:9,.0f}"
                  f"{d.jobs / d.enqueue_s:11,.0f}{d.startup_s:11.2f}")
    if fork is not None:
        print(f"{'rq Worker fork':20}{fork.jobs:7d}{fork.drain_s:9.3f}{fork.rate:9,.0f}{fork.e2e_rate:9,.0f}"
              f"{fork.jobs / fork.enqueue_s:11,.0f}{fork.startup_s:11.2f}")
    print("(jobs/s: drain rate of a warm worker, last warm-up job done -> last measured job done, same for all;")
    print(" e2e/s: first enqueue -> last result, enqueueing, worker start-up and warm-up included)")

    best = {label: max((r[label] for r in rounds), key=lambda d: d.rate) for label in rounds[0]}
    chosen = {label: d for label, d in best.items()}
    if fork is not None:
        chosen["rq Worker fork"] = fork
    per_job_table(chosen)
    if redis_shared:
        print("(a shared Redis: other clients' commands and CPU are in these figures too)")

    print()
    per_round = [r["lambent"].rate / r["rq SimpleWorker"].rate for r in rounds if r["rq SimpleWorker"].rate]
    if len(per_round) > 1:
        print("ratio per round (each pair run back to back): " + ", ".join(f"{x:.2f}" for x in per_round)
              + f"; median {statistics.median(per_round):.2f}")
    ratio = best["lambent"].rate / best["rq SimpleWorker"].rate if best["rq SimpleWorker"].rate else 0.0
    print(f"lambent {best['lambent'].rate:,.0f} jobs/s, rq SimpleWorker {best['rq SimpleWorker'].rate:,.0f} jobs/s"
          + (f", rq Worker (fork) {fork.rate:,.0f} jobs/s" if fork is not None else "")
          + (" (best of each)" if len(rounds) > 1 else ""))
    print(f"ratio lambent/SimpleWorker throughput {ratio:.2f}, {CONCURRENCY[0]} worker process(es) of each "
          f"(target >= {TARGET_RATIO}) "
          f"{verdict(ratio >= TARGET_RATIO)}")
    return ratio


# -- main ----------------------------------------------------------------------------------

def deploy_function(redis_url: str, data_dir: Path, folder: Path, name: str) -> str:
    """Deploy through the Catalog, as `lambent deploy` would; returns the code hash."""
    from redis.asyncio import Redis

    from runtime.functions.catalog import Catalog
    from runtime.functions.package import check_zip, pack_folder

    async def go() -> str:
        client = Redis.from_url(redis_url)
        try:
            package = check_zip(pack_folder(folder))
            result = await Catalog(client, data_dir=data_dir).deploy(name, package)
            assert result.version is not None, "a deploy publishes a version"
            return result.version.code_hash
        finally:
            await client.aclose()

    return asyncio.run(go())


def main() -> int:
    parser = argparse.ArgumentParser(description="Lambent async-invoke benchmark against plain RQ workers.")
    parser.add_argument("--jobs", type=int, default=2000, help="measured jobs per drain (default 2000)")
    parser.add_argument("--warmup", type=int, default=20, help="warm-up jobs before each drain (default 20)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="repeat the SimpleWorker + Lambent pair this many times, keep the best (default 3)")
    parser.add_argument("--fork-jobs", type=int, default=100,
                        help="jobs for the forking rq.Worker, for context (default 100; 0 skips)")
    parser.add_argument("--redis-url", help="use this Redis instead of starting a redis-server")
    parser.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="the Lambent worker's logs.level (default WARNING)")
    parser.add_argument("--trace", action="store_true", help="print one job cycle's Redis commands (MONITOR)")
    parser.add_argument("--profile", type=Path,
                        help="py-spy one extra drain of Lambent and of SimpleWorker; collapsed stacks to FILE-<kind>")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs) at the end")
    parser.add_argument("--concurrency", type=int, default=1,
                        help="worker processes of each kind: `lambent worker --concurrency C` against C "
                             "SimpleWorkers (default 1)")
    parser.add_argument("--_rq-worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args._rq_worker:
        run_rq_worker(*args._rq_worker)
        return 0
    if not 1 <= args.jobs <= 1_000_000 or not 1 <= args.warmup <= 10_000 or not 1 <= args.rounds <= 20 \
            or not 0 <= args.fork_jobs <= 100_000 or not 1 <= args.concurrency <= 8:
        parser.error("--jobs 1..1000000, --warmup 1..10000, --rounds 1..20, --fork-jobs 0..100000, "
                     "--concurrency 1..8")
    CONCURRENCY[0] = args.concurrency
    if args.concurrency > 1:
        args.warmup = max(args.warmup, 100 * args.concurrency)

    sys.path.insert(0, str(REPO))
    import redis

    workdir = Path(tempfile.mkdtemp(prefix="lambent-bench-async-"))
    procs = Processes(all_children=True)    # a worker's children: its sandbox, or the forking Worker's horses
    started = time.monotonic()
    tag = uuid.uuid4().hex[:8]
    function = f"benchasync-{tag}"
    code_hash = None
    conn = None
    preexisting: set[str] = set()
    try:
        progress(f"work folder {workdir}; {os.cpu_count()} CPUs; run tag {tag}")
        redis_url, redis_pid = use_redis(procs, workdir, args.redis_url)
        conn = redis.Redis.from_url(redis_url)
        conn.ping()
        preexisting = {key for key in GLOBAL_KEYS if conn.exists(key)}

        folder = workdir / "src" / function
        folder.mkdir(parents=True)
        (folder / "handler.py").write_text(f"# {function}\n{HANDLER_SOURCE}")
        (workdir / "functions").mkdir()
        lambent_queue = f"lambent-bench-{tag}"
        config_file = write_config(workdir, redis_url, {"logs": {"level": args.log_level},
                                                        "async": {"queue": lambent_queue}})
        code_hash = deploy_function(redis_url, workdir / "deployer-data", folder, function)
        progress(f"deployed {function} through Catalog.deploy")

        env = lambent_env(config_file)
        # The RQ baseline worker imports this file (NOOP_FUNC), and this file imports common.py: both here.
        env["PYTHONPATH"] = os.pathsep.join([str(BENCH_DIR), str(REPO)] + (
            [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        env[REDIS_URL_ENV] = redis_url

        lambent = lambent_kind(lambent_queue)
        simple = rq_kind("rq SimpleWorker", f"bench-{tag}-simple", 2)
        forking = rq_kind("rq Worker fork", f"bench-{tag}-fork", 3)
        enqueuers: dict[str, Callable[[list[str]], float]] = {
            lambent.label: lambda ids: enqueue_lambent(conn, config_file, function, ids),
            simple.label: lambda ids: enqueue_rq(conn, simple.queue, ids),
            forking.label: lambda ids: enqueue_rq(conn, forking.queue, ids),
        }
        common = dict(warmup=args.warmup, tag=tag, redis_url=redis_url, redis_pid=redis_pid,
                      workdir=workdir, env=env)

        rounds: list[dict[str, Drain]] = []
        for index in range(args.rounds):
            progress(f"round {index + 1} of {args.rounds}")
            # Alternate which goes first, so a slow patch of the shared machine hits both alike.
            order = [simple, lambent] if index % 2 == 0 else [lambent, simple]
            results = {}
            for kind in order:
                results[kind.label] = drain(procs, conn, kind, jobs=args.jobs, round_=index,
                                            enqueue=enqueuers[kind.label], **common)
            rounds.append({label: results[label] for label in (lambent.label, simple.label)})
        fork = None
        if args.fork_jobs:
            fork = drain(procs, conn, forking, jobs=args.fork_jobs, round_=0, enqueue=enqueuers[forking.label],
                         **common)
        ratio = report(rounds, fork, redis_shared=bool(args.redis_url))

        if args.trace:
            for kind in (lambent, simple):
                trace(procs, conn, kind, tag=tag, redis_url=redis_url, workdir=workdir, env=env,
                      enqueue=enqueuers[kind.label], warmup=args.warmup)
        if args.profile is not None:
            profiles: dict[str, tuple[Path, Drain]] = {}
            for kind in (lambent, simple):
                out = args.profile.resolve().with_name(
                    f"{args.profile.stem}-{kind.label.split()[-1].lower()}{args.profile.suffix or '.txt'}")
                out.unlink(missing_ok=True)
                progress(f"profile: one extra {kind.label} drain of {args.jobs} jobs under py-spy (not counted)")
                result = drain(procs, conn, kind, jobs=args.jobs, round_=0xFFE, enqueue=enqueuers[kind.label],
                               profile=out, **common)
                if out.exists():
                    profiles[kind.label] = (out, result)
            if profiles:
                print_profiles(profiles)
        progress(f"done in {time.monotonic() - started:.0f} s (ratio {ratio:.2f})")
        return 0
    finally:
        procs.stop_all()
        if args.redis_url and conn is not None:
            try:
                deleted = cleanup_shared_redis(conn, tag, function, code_hash, procs.started, preexisting)
                progress(f"deleted {deleted} keys of this run from {masked(args.redis_url)}")
            except Exception as exc:
                print(f"warning: cleanup of {masked(args.redis_url)} failed: {exc}", file=sys.stderr)
        if conn is not None:
            conn.close()
        discard_workdir(workdir, args.keep)


if __name__ == "__main__":
    sys.exit(main())
