"""Sync-invoke benchmark: Lambent against a raw FastAPI app, measured in the same run.

    .venv/bin/python bench/sync.py [--duration S] [--warmup S] [--rounds N] [--redis-url URL]
                                   [--loadgen auto|wrk|python] [--cold-runs N] [--profile FILE]

What it measures (a benchmark, not a test: it prints figures and PASS/MISS against targets):

1. Lambent: warm `POST /functions/{name}/invoke` (body `{}`) of a trivial handler,
   at concurrency 1 and 32: requests/s, p50 and p99 latency.
2. Raw baseline: a FastAPI app on the same uvicorn settings (uvloop, httptools, one worker) whose
   `POST /invoke` reads the body, json-parses it and calls the same handler in-process.
   The process hop (`--no-hop` skips it): the same app, whose endpoint sends each event to one of two plain
   child processes per CPU over pipes and answers what comes back: no jail, no timeout, no log capture, no
   record. It is what running the handler outside the server costs at the least, so Lambent's figure over the
   hop's is what Lambent itself costs beyond that (printed under the ratios).
3. Ratios Lambent/raw: throughput at each concurrency (targets: >= 0.8 at c=32, >= 0.7 at c=1), p99 at
   c=32 (target <= 1.5) and p50 at c=1 (target: within 0.1 ms of raw's). Lambent runs at the server's
   default log level, INFO, which writes a line per invocation (`--log-level` to change it).
4. Cold start: a side process deploys a new function (new name, new content) through
   `Catalog.deploy` against the same Redis; from the moment `deploy()` returns to the first
   200 answer of the gateway (target, jailed: median <= 2x a bare interpreter's start,
   `python -I -S -c pass`, timed in the same run).
   Beside the c=1 figures: a pipe round trip between two processes (two wake-ups; a warm invocation pays
   two more than raw's), the machine's price of waking a process, which moves with the host.
5. Each Lambent figure twice: jailed (`sandbox.isolation: jail`, the default on a host that can) and
   without a jail (`none`), so that the jail's price is printed beside the figure it costs
   (`--jail-only` skips the second).

Every server is started first and stays up for the whole run, but only one at a time has callers, so they
never compete for the CPUs. At each concurrency there are `--rounds` rounds (default 5): in each, every
server is warmed up for `--warmup` s and measured for `--duration` s, in an order that alternates from
round to round. Each ratio is taken within a round and the median over the rounds is printed with their
range: on a shared virtual machine the host's speed drifts over minutes (the same build's CPU per call
moved by a third between two runs), far more than within the few seconds of one round. Every
measurement prints its own figures as it goes.
The load generator is `wrk`
(with a Lua script for the POST body and the summary) when installed, else a Python load generator
on raw asyncio streams in its own process; the same one is used for both servers. Besides the
figures, it prints the CPU time per request of each process involved (server, sandboxes, Redis,
load generator), read from /proc, which shows where the time goes.

`--profile FILE` additionally runs py-spy (if installed in this interpreter's environment) on the
gateway during one extra c=32 load after the measurements, writes the collapsed stacks to FILE
and prints the functions with the most samples. The measured figures are not affected.

Every process this script starts is stopped at the end, even on error.
"""

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import (CpuSample, Processes, admin_headers, collapsed_stacks, discard_workdir, free_port,
                    lambent_env, masked, progress, py_spy_path, run_main, start_runtime, use_redis, verdict,
                    wait_healthy, write_config)

HANDLER_SOURCE = 'def handler(event, context):\n    return {"ok": True}\n'
EXPECTED_BODY = {"ok": True}
CONCURRENCIES = (1, 32)
# Issue 17's targets, jailed, at the server's default log level (INFO: a line per invocation).
TARGET_THROUGHPUT_RATIO = {32: 0.8, 1: 0.7}   # Lambent's req/s over raw FastAPI's, per concurrency
TARGET_P99_RATIO_C32 = 1.5
TARGET_P50_EXTRA_MS_C1 = 0.1   # at c=1, Lambent's p50 within this of raw's
TARGET_COLD_VS_BARE = 2.0     # jailed cold start (median) over a bare interpreter's start (`python -I -S -c pass`)
# The process hop's children: as many as Lambent's sandboxes of a CPU-bound handler (two per CPU).
HOP_CHILDREN = 2 * len(os.sched_getaffinity(0))
VARIANTS = ("jail", "none")   # Lambent as it runs by default (jailed), and without a jail: the price of the jail
NOISY_SHARE = 0.2          # other processes and the hypervisor taking more than this share of the CPUs: measure again
NOISY_RETRIES = 1
MAX_RPS = 200_000          # bounds the request count of every load run, with its duration


# -- load generation -----------------------------------------------------------------------

@dataclass
class LoadResult:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0


WRK_LUA = textwrap.dedent("""\
    wrk.method = "POST"
    wrk.body = "{}"
    wrk.headers["Content-Type"] = "application/json"

    -- A hard cap on the requests of one run (the run is also bounded by -d): wrk stops sending at it.
    local count, cap = 0, 1000000
    init = function(args)
      cap = tonumber(args[1]) or cap
    end
    response = function(status, headers, body)
      count = count + 1
      if count >= cap then wrk.thread:stop() end
    end

    done = function(summary, latency, requests)
      local e = summary.errors
      io.write(string.format(
        'BENCH_JSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,' ..
        '"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}\\n',
        summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
        e.connect, e.read, e.write, e.status, e.timeout))
    end
    """)


class LoadGenerator:
    def __init__(self, kind: str, workdir: Path) -> None:
        self.kind = kind
        self._lua = workdir / "post.lua"
        self._lua.write_text(WRK_LUA)

    @staticmethod
    def cap(seconds: float) -> int:
        """Most requests one run may send (far above what a Python server does on a small machine)."""
        return int(MAX_RPS * seconds)

    def run(self, url: str, concurrency: int, seconds: float) -> LoadResult:
        if self.kind == "wrk":
            return self._wrk(url, concurrency, seconds)
        return self._python(url, concurrency, seconds)

    def _wrk(self, url: str, concurrency: int, seconds: float) -> LoadResult:
        whole = max(1, round(seconds))
        argv = ["wrk", "-t1", f"-c{concurrency}", f"-d{whole}s", "--timeout", "10s", "--latency",
                "-s", str(self._lua), url, "--", str(self.cap(whole))]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=whole + 30)
        match = re.search(r"^BENCH_JSON (\{.*\})$", out.stdout, re.M)
        if out.returncode != 0 or match is None:
            raise RuntimeError(f"wrk failed (exit {out.returncode}): {out.stdout[-2000:]} {out.stderr[-2000:]}")
        data = json.loads(match.group(1))
        errors = sum(data[key] for key in ("connect", "read", "write", "status", "timeout"))
        if data["requests"] >= self.cap(whole):
            raise RuntimeError(f"wrk reached its cap of {self.cap(whole)} requests: raise MAX_RPS")
        return LoadResult(requests=data["requests"], seconds=data["duration_us"] / 1e6,
                          p50_ms=data["p50_us"] / 1000, p99_ms=data["p99_us"] / 1000, errors=errors)

    def _python(self, url: str, concurrency: int, seconds: float) -> LoadResult:
        argv = [sys.executable, str(Path(__file__).resolve()), "--_loadgen", url, str(concurrency), str(seconds),
                str(self.cap(seconds))]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
        if out.returncode != 0:
            raise RuntimeError(f"load generator failed (exit {out.returncode}): {out.stderr[-2000:]}")
        data = json.loads(out.stdout.strip().splitlines()[-1])
        return LoadResult(requests=data["requests"], seconds=data["seconds"], p50_ms=data["p50_ms"],
                          p99_ms=data["p99_ms"], errors=data["errors"])


def python_loadgen(url: str, concurrency: int, seconds: float, max_requests: int = 5_000_000) -> dict[str, Any]:
    """Keep-alive HTTP/1.1 POSTs on raw asyncio streams; one coroutine per connection."""
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    from urllib.parse import urlsplit
    parts = urlsplit(url)
    host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/"
    request = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
               f"Content-Length: 2\r\n\r\n{{}}").encode()
    latencies: list[int] = []
    counters = {"errors": 0, "sent": 0}

    async def connection(deadline: float) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.perf_counter() < deadline and counters["sent"] < max_requests:
                counters["sent"] += 1
                started = time.perf_counter_ns()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if length:
                    await reader.readexactly(length)
                if head[9:12] != b"200":
                    counters["errors"] += 1
                latencies.append(time.perf_counter_ns() - started)
        finally:
            writer.close()

    async def main() -> float:
        started = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(connection(started + seconds) for _ in range(concurrency))),
                               seconds + 20)
        return time.perf_counter() - started

    elapsed = asyncio.run(main())
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] / 1e6 if latencies else 0.0

    return {"requests": len(latencies), "seconds": elapsed, "p50_ms": pct(0.50), "p99_ms": pct(0.99),
            "errors": counters["errors"]}


# -- servers -------------------------------------------------------------------------------

def serve_raw(port: int, handler_file: Path, children: int = 0) -> None:
    """The baseline: FastAPI, one endpoint, the same handler called in-process; with `children`, the process
    hop: the same app sends each event to one of that many plain child processes (HOP_CHILD) and answers
    what comes back. A hop has no jail, no timeout, no log capture and no record: the least any runtime that
    runs the handler outside its server pays per call (two pipe writes, two wake-ups, an encoding each way)."""
    import collections
    import contextlib
    import importlib.util

    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response

    spec = importlib.util.spec_from_file_location("bench_handler", handler_file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    handler = module.handler
    free: collections.deque[HopChild] = collections.deque()
    waiting: collections.deque[asyncio.Future[HopChild]] = collections.deque()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        kids = [await HopChild.start(handler_file) for _ in range(children)]
        free.extend(kids)
        try:
            yield
        finally:
            for kid in kids:
                kid.stop()

    app = FastAPI(lifespan=lifespan)   # (no postponed annotations in this file: FastAPI must see `Request` itself)

    @app.post("/invoke")
    async def invoke(request: Request) -> Response:
        body = await request.body()
        event = json.loads(body) if body else {}
        if not children:
            return JSONResponse(handler(event, None))
        if free:
            kid = free.popleft()
        else:
            waiting.append(asyncio.get_running_loop().create_future())
            kid = await waiting[-1]
        try:
            answer = await kid.call(body)
        finally:
            if waiting:
                waiting.popleft().set_result(kid)
            else:
                free.append(kid)
        return Response(answer, media_type="application/json")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools", access_log=False,
                log_config=None)


HOP_LENGTH = struct.Struct("<I")      # the hop's frames: a length, then that many bytes of JSON
# A child of the hop baseline (argv[1]: the handler's file): read a frame, call the handler, write its answer,
# as plainly as it can be done.
HOP_CHILD = textwrap.dedent("""\
    import importlib.util, json, os, struct, sys
    spec = importlib.util.spec_from_file_location("bench_handler", sys.argv[1])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    length, buffered = struct.Struct("<I"), b""
    while True:
        while len(buffered) < 4 or len(buffered) < 4 + length.unpack_from(buffered)[0]:
            data = os.read(0, 1 << 16)
            if not data:
                sys.exit(0)
            buffered += data
        (size,) = length.unpack_from(buffered)
        event, buffered = buffered[4:4 + size], buffered[4 + size:]
        answer = json.dumps(module.handler(json.loads(event) if event else {}, None)).encode()
        os.write(1, length.pack(len(answer)) + answer)
    """)


class HopChild(asyncio.Protocol):
    """One child process of the hop baseline, as the server sees it: frames out on its stdin, frames back from
    its stdout, one call at a time."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self.writer: asyncio.WriteTransport | None = None
        self.buffer = bytearray()
        self.answer: asyncio.Future[bytes] | None = None

    @classmethod
    async def start(cls, handler_file: Path) -> "HopChild":
        process = subprocess.Popen([sys.executable, "-I", "-S", "-c", HOP_CHILD, str(handler_file)],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        assert process.stdin is not None and process.stdout is not None
        kid = cls(process)
        loop = asyncio.get_running_loop()
        await loop.connect_read_pipe(lambda: kid, process.stdout)
        kid.writer, _ = await loop.connect_write_pipe(asyncio.BaseProtocol, process.stdin)
        return kid

    def call(self, event: bytes) -> asyncio.Future[bytes]:
        assert self.writer is not None
        self.answer = asyncio.get_running_loop().create_future()
        self.writer.write(HOP_LENGTH.pack(len(event)) + event)
        return self.answer

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) < HOP_LENGTH.size:
            return
        (size,) = HOP_LENGTH.unpack_from(self.buffer)
        if len(self.buffer) < HOP_LENGTH.size + size:
            return
        answer = bytes(self.buffer[HOP_LENGTH.size:HOP_LENGTH.size + size])
        del self.buffer[:HOP_LENGTH.size + size]
        if self.answer is not None and not self.answer.done():
            self.answer.set_result(answer)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(RuntimeError(f"hop child {self.process.pid} exited"))

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


def check_answer(url: str) -> None:
    import httpx
    response = httpx.post(url, content=b"{}", headers={"Content-Type": "application/json"}, timeout=15.0)
    if response.status_code != 200 or response.json() != EXPECTED_BODY:
        raise RuntimeError(f"POST {url}: {response.status_code} {response.text[:500]}")


# -- measuring -----------------------------------------------------------------------------

def cpu_sample(server_pid: int, redis_pid: int | None) -> CpuSample:
    """The server with its sandboxes, Redis, and the load generators (waited-for children of this script)."""
    return CpuSample.take({"server": server_pid, "redis": redis_pid}, children_as={"server": "sandboxes"},
                          own=("loadgen", resource.RUSAGE_CHILDREN))


@dataclass
class Server:
    """One server under test. Every server is up for the whole run and they are loaded one at a time, never two
    at once; `slices` holds its measurements by concurrency, one per round."""
    label: str                          # as printed: "jailed ", "no jail", "raw    ", "hop    "
    base: str                           # http://127.0.0.1:PORT
    url: str                            # what is invoked
    proc: subprocess.Popen[bytes]
    ready: Any = None                   # Lambent's, after a warm-up: until its pool has grown to the callers
    slices: dict[int, list[LoadResult]] = field(default_factory=lambda: {c: [] for c in CONCURRENCIES})

    @property
    def pid(self) -> int:
        return self.proc.pid


def measure(load: LoadGenerator, server: Server, concurrency: int, warmup: float, duration: float,
            redis_pid: int | None, round_label: str) -> LoadResult:
    """One slice: a warm-up, then `duration` s at `concurrency`, taken again once if the machine was busy."""
    label = server.label.strip()
    load.run(server.url, concurrency, warmup)
    if server.ready is not None:
        server.ready(concurrency)
    kept: LoadResult | None = None
    for attempt in range(1 + NOISY_RETRIES):
        before = cpu_sample(server.pid, redis_pid)
        result = load.run(server.url, concurrency, duration)
        after = cpu_sample(server.pid, redis_pid)
        ours = after.minus(before)
        result.cpu = {**ours, **after.noise(before, ours)}
        cpus = result.seconds * (os.cpu_count() or 1)
        others, steal = result.cpu["others"] / cpus, result.cpu["steal"] / cpus
        progress(f"{round_label} {label} c={concurrency}: {result.rps:,.0f} req/s, p50 {result.p50_ms:.2f} ms, "
                 f"p99 {result.p99_ms:.2f} ms, other processes used {100 * others:.0f}% of the CPUs, "
                 f"the hypervisor {100 * steal:.0f}%" + (f", {result.errors} ERRORS" if result.errors else ""))
        if kept is None or result.rps > kept.rps:
            kept = result
        if others + steal <= NOISY_SHARE:
            break
        if attempt < NOISY_RETRIES:
            progress(f"{round_label} {label} c={concurrency}: the machine was busy with other work; measuring again")
    assert kept is not None
    return kept


def start_raw(procs: Processes, workdir: Path, handler_file: Path, *, children: int = 0) -> Server:
    """The raw baseline, or with `children` the process hop (serve_raw), answering."""
    port = free_port()
    label = "hop    " if children else "raw    "
    log_file = workdir / f"{label.strip()}.log"
    with open(log_file, "wb") as log:
        proc = procs.start([sys.executable, str(Path(__file__).resolve()), "--_serve-raw", str(port),
                            str(handler_file), str(children)], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    wait_healthy(base, proc, log_file)
    check_answer(f"{base}/invoke")
    return Server(label, base, f"{base}/invoke", proc)


def start_lambent(procs: Processes, load: LoadGenerator, workdir: Path, config_file: Path, name: str,
                  kind: str) -> Server:
    """A Lambent gateway of `config_file`, answering `name`'s invocations."""
    import httpx
    config = _read_yaml(config_file)
    base = f"http://127.0.0.1:{config['gateway']['port']}"
    log_file = workdir / "lambent.log"
    proc = start_runtime(procs, "serve", log_file, lambent_env(config_file), workdir)
    started = time.monotonic()
    wait_healthy(base, proc, log_file)
    isolation = httpx.get(f"{base}/healthz", timeout=5).json()["isolation"]
    progress(f"lambent ({kind}): healthy after {time.monotonic() - started:.2f} s (pid {proc.pid}, "
             f"isolation {isolation['mode']})")
    url = f"{base}/functions/{name}/invoke"
    check_answer(url)

    def ready(concurrency: int) -> None:
        # The first requests at c=32 start sandboxes, up to one per caller (a CPU-bound handler's pool stops at
        # two per CPU): warm up until the pool has stopped growing.
        seen = -1
        for _ in range(3):
            node = httpx.get(f"{base}/functions/{name}", headers=admin_headers(config_file),
                             timeout=5).json()["node"]
            if node["sandboxes"] >= min(concurrency, 32) or node["sandboxes"] == seen:
                return
            seen = node["sandboxes"]
            progress(f"lambent c={concurrency}: {seen} sandboxes after warm-up; warming up more")
            load.run(url, concurrency, 1)

    return Server("jailed " if kind == "jail" else "no jail", base, url, proc, ready)


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    return data


def bare_starts(runs: int) -> list[float]:
    """A bare interpreter's start, the floor of any cold start: `python -I -S -c pass`, in ms, `runs` times."""
    python = os.path.realpath(sys.executable)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([python, "-I", "-S", "-c", "pass"], check=True)
        times.append((time.perf_counter() - started) * 1000)
    progress(f"bare interpreter start: median {statistics.median(times):.1f} ms of {runs}")
    return times


def pipe_round_trips(count: int = 20_000) -> list[float]:
    """The machine's price of waking another process: one byte to a forked child over a pipe and one back, in
    µs, `count` times (two wake-ups, as each warm invocation pays between gateway and sandbox on top of raw's
    own two). It moves with the host (its idle states, the hypervisor), which c=1 feels most."""
    to_child, from_parent = os.pipe()
    from_child, to_parent = os.pipe()
    pid = os.fork()
    if pid == 0:                                  # the child echoes each byte, then leaves without cleanup
        try:
            for _ in range(count):
                os.read(to_child, 1)
                os.write(to_parent, b"x")
        finally:
            os._exit(0)
    times = []
    try:
        for _ in range(count):
            began = time.perf_counter_ns()
            os.write(from_parent, b"x")
            os.read(from_child, 1)
            times.append((time.perf_counter_ns() - began) / 1000)
    finally:
        for fd in (to_child, from_parent, from_child, to_parent):
            os.close(fd)
        os.waitpid(pid, 0)
    progress(f"pipe round trip between two processes: median {statistics.median(times):.0f} µs of {count}")
    return times


def run_cold(workdir: Path, base: str, redis_url: str, runs: int) -> list[dict[str, Any]]:
    progress(f"cold start: deploying {runs} new functions from a side process")
    folder = workdir / "cold"
    folder.mkdir(exist_ok=True)
    # The Redis URL goes in the environment: argv would show its password to ps.
    argv = [sys.executable, str(Path(__file__).resolve()), "--_cold", base,
            str(workdir / "deployer-data"), str(folder), str(runs), uuid.uuid4().hex[:8]]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60 + 10 * runs,
                         cwd=str(Path(__file__).resolve().parent.parent),
                         env={**os.environ, "BENCH_REDIS_URL": redis_url})
    if out.returncode != 0:
        raise RuntimeError(f"cold-start side process failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    data: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    for run in data["runs"]:
        init = f"{run['init_ms']:.1f}" if run["init_ms"] is not None else "?"
        progress(f"cold start {run['name']}: {run['cold_ms']:.1f} ms (deploy() took {run['deploy_ms']:.1f} ms, "
                 f"sandbox init {init} ms, next warm call {run['warm_ms']:.1f} ms, "
                 f"{run['attempts']} request(s))")
    timed: list[dict[str, Any]] = data["runs"]
    return timed


async def cold_side(base: str, redis_url: str, data_dir: Path, folder: Path, runs: int, tag: str) -> dict[str, Any]:
    """Runs in its own process: deploy new functions through the Catalog, time the first answer."""
    import httpx
    from redis.asyncio import Redis

    from runtime.functions.catalog import Catalog
    from runtime.functions.package import check_zip, pack_folder
    from runtime.observability.logs import read_logs

    redis = Redis.from_url(redis_url)
    catalog = Catalog(redis, data_dir=data_dir)
    results: list[dict[str, Any]] = []
    headers = {"Content-Type": "application/json"}
    try:
        async with httpx.AsyncClient(base_url=base, timeout=15.0) as client:
            for index in range(runs):
                name = f"cold-{tag}-{index}"
                source = folder / name
                source.mkdir(parents=True)
                # New content each time: a new code hash, so the gateway has to fetch and unpack it too.
                (source / "handler.py").write_text(f"# {name} {uuid.uuid4()}\n{HANDLER_SOURCE}")
                package = check_zip(pack_folder(source))
                (await client.get("/healthz")).raise_for_status()   # a warm keep-alive connection
                await asyncio.sleep(0.2)
                deploy_started = time.perf_counter()
                await catalog.deploy(name, package)
                started = time.perf_counter()
                attempts = 0
                while True:
                    attempts += 1
                    response = await client.post(f"/functions/{name}/invoke", content=b"{}", headers=headers)
                    if response.status_code == 200 or attempts >= 100 or time.perf_counter() - started > 10:
                        break
                    await asyncio.sleep(0.002)
                answered = time.perf_counter()
                if response.status_code != 200 or response.json() != EXPECTED_BODY:
                    raise RuntimeError(f"{name}: {response.status_code} {response.text[:500]}")
                warm_started = time.perf_counter()
                await client.post(f"/functions/{name}/invoke", content=b"{}", headers=headers)
                warm_ms = (time.perf_counter() - warm_started) * 1000
                results.append({"name": name, "cold_ms": (answered - started) * 1000,
                                "deploy_ms": (started - deploy_started) * 1000, "warm_ms": warm_ms,
                                "attempts": attempts, "init_ms": None})
        await asyncio.sleep(0.5)   # the gateway writes invocation logs to Redis in the background
        for result in results:
            for record in await read_logs(redis, result["name"], limit=5):
                match = re.search(r"Init Duration: ([\d.]+) ms", record["text"])
                if match:
                    result["init_ms"] = float(match.group(1))
    finally:
        await redis.aclose()
    return {"runs": results}


def run_profile(load: LoadGenerator, url: str, pid: int, duration: float, out: Path) -> None:
    spy = py_spy_path()
    if spy is None:
        progress("profile: py-spy not found; skipped (pip install py-spy)")
        return
    seconds = max(2, round(duration))
    progress(f"profile: py-spy on the gateway (pid {pid}) during {seconds} s of extra c=32 load")
    spy_proc = subprocess.Popen([str(spy), "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "200",
                                 "--format", "raw", "--output", str(out), "--nonblocking"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        time.sleep(0.5)
        load.run(url, 32, seconds)
        spy_out, _ = spy_proc.communicate(timeout=seconds + 30)
    finally:
        if spy_proc.poll() is None:
            spy_proc.kill()
            spy_proc.wait()
    if not out.exists():
        progress(f"profile: py-spy wrote nothing: {spy_out.decode(errors='replace')[-500:]}")
        return
    summarize_profile(out)


def summarize_profile(path: Path, top: int = 25) -> None:
    """Inclusive sample share per function (each function counted once per stack), from collapsed stacks."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for stack, count in collapsed_stacks(path):
        total += count
        frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack]
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
        own[frames[-1]] = own.get(frames[-1], 0) + count
    if not total:
        return
    print(f"\nprofile ({total} samples of the gateway's threads; {path}):")
    print("  most self time (a write() that wakes another process shows up here as the writer's time):")
    for frame, count in sorted(own.items(), key=lambda item: -item[1])[:top // 2]:
        print(f"  {100 * count / total:6.1f}%  {frame[:110]}")
    print("  Lambent's own functions, inclusive:")
    mine = [(frame, count) for frame, count in inclusive.items() if "runtime/" in frame
            and "runtime/__main__" not in frame and "runtime/cli" not in frame and "runners.py" not in frame]
    for frame, count in sorted(mine, key=lambda item: -item[1])[:top // 2]:
        print(f"  {100 * count / total:6.1f}%  {frame[:110]}")


# -- report --------------------------------------------------------------------------------

def pooled(slices: list[LoadResult]) -> LoadResult:
    """A server's slices at one concurrency as one figure: requests and CPU over all of them, and the median
    slice's latencies."""
    cpu: dict[str, float] = {}
    for result in slices:
        for key, value in result.cpu.items():
            cpu[key] = cpu.get(key, 0.0) + value
    return LoadResult(requests=sum(r.requests for r in slices), seconds=sum(r.seconds for r in slices),
                      p50_ms=statistics.median(r.p50_ms for r in slices),
                      p99_ms=statistics.median(r.p99_ms for r in slices),
                      errors=sum(r.errors for r in slices), cpu=cpu)


def per_round(mine: list[LoadResult], theirs: list[LoadResult], figure: str) -> list[float]:
    """Within each round, `figure` ("rps", "p99_ms") of one server over the other's: the host's speed drifts
    between rounds, not within one."""
    return [getattr(a, figure) / getattr(b, figure) if getattr(b, figure) else 0.0 for a, b in zip(mine, theirs)]


def spread(values: list[float], digits: int = 2) -> tuple[float, str]:
    """The median of the rounds' figures, and how it reads with their range."""
    middle = statistics.median(values)
    if len(values) < 2:
        return middle, f"{middle:.{digits}f}"
    return middle, f"{middle:.{digits}f} (rounds {min(values):.{digits}f} to {max(values):.{digits}f})"


def report(lambents: dict[str, Server], raw: Server, hop: Server | None, colds: dict[str, dict[str, Any] | None],
           bare_ms: float, pipe_us: float, rounds: int, load_kind: str, redis_owned: bool) -> None:
    lambent = lambents["jail"]
    servers = [*lambents.values(), raw, *([hop] if hop is not None else [])]
    figures = {server.label: {c: pooled(server.slices[c]) for c in CONCURRENCIES} for server in servers}
    print()
    print(f"load generator: {load_kind}; {rounds} round(s), each server once a round in alternating order; "
          "req/s over all rounds, latencies of the median round")
    print(f"{'':17}{'req/s':>9}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}")
    for c in CONCURRENCIES:
        for server in servers:
            r = figures[server.label][c]
            print(f"{server.label} c={c:<6}{r.rps:9,.0f}{r.p50_ms:10.2f}{r.p99_ms:10.2f}{r.errors:8d}")
    print()
    cpus = os.cpu_count() or 1
    print(f"CPU time per request (µs) over all rounds; 'ours' = our processes' share of the {cpus} CPUs,")
    print("'others' = the rest of the machine's busy time and 'steal' = the hypervisor's (both: noise):")
    print(f"{'':17}{'server':>8}{'sandbox':>8}{'redis':>8}{'loadgen':>8}{'total':>8}{'ours':>7}{'others':>7}"
          f"{'steal':>7}")
    for c in CONCURRENCIES:
        for server in servers:
            r = figures[server.label][c]
            per = {key: 1e6 * value / max(r.requests, 1) for key, value in r.cpu.items()}
            total = sum(per[key] for key in ("server", "sandboxes", "redis", "loadgen"))
            share = {key: 100 * r.cpu[key] / (r.seconds * cpus) for key in ("others", "steal")}
            ours = 100 * total * max(r.requests, 1) / 1e6 / (r.seconds * cpus)
            redis = f"{per['redis']:8.0f}" if redis_owned else f"{'-':>8}"
            print(f"{server.label} c={c:<6}{per['server']:8.0f}{per['sandboxes']:8.0f}{redis}{per['loadgen']:8.0f}"
                  f"{total:8.0f}{ours:6.0f}%{share['others']:6.0f}%{share['steal']:6.0f}%"
                  + ("  <- noisy" if share["others"] + share["steal"] > 100 * NOISY_SHARE else ""))
    print()
    print("ratios: within each round (the host's speed drifts between rounds), their median and range")
    for c in CONCURRENCIES:
        ratio, text = spread(per_round(lambent.slices[c], raw.slices[c], "rps"))
        line = f"ratio c={c:<2} throughput {text}"
        if "none" in lambents:
            line += f", without a jail {spread(per_round(lambents['none'].slices[c], raw.slices[c], 'rps'))[1]}"
        if c in TARGET_THROUGHPUT_RATIO:
            line += f" (target >= {TARGET_THROUGHPUT_RATIO[c]}) {verdict(ratio >= TARGET_THROUGHPUT_RATIO[c])}"
        print(line)
    if hop is not None:
        for c in CONCURRENCIES:
            print(f"     c={c:<2} the process hop alone {spread(per_round(hop.slices[c], raw.slices[c], 'rps'))[1]} "
                  f"of raw; jailed Lambent {spread(per_round(lambent.slices[c], hop.slices[c], 'rps'))[1]} of the hop")
    if 1 in CONCURRENCIES:
        extra, text = spread([a.p50_ms - b.p50_ms for a, b in zip(lambent.slices[1], raw.slices[1])])
        print(f"c=1  p50 {figures[lambent.label][1].p50_ms:.2f} ms against raw {figures[raw.label][1].p50_ms:.2f} ms: "
              f"{text} ms more (target <= +{TARGET_P50_EXTRA_MS_C1}) {verdict(extra <= TARGET_P50_EXTRA_MS_C1)}")
        print(f"     a pipe round trip between two processes on this machine (two wake-ups): median {pipe_us:.0f} µs")
    if 32 in CONCURRENCIES:
        ratio, text = spread(per_round(lambent.slices[32], raw.slices[32], "p99_ms"))
        print(f"ratio c=32 p99 {text} (target <= {TARGET_P99_RATIO_C32:g}) {verdict(ratio <= TARGET_P99_RATIO_C32)}")
    print(f"bare interpreter start (python -I -S -c pass): median {bare_ms:.1f} ms")
    for kind, cold in colds.items():
        if cold is None:
            continue
        times = (f"median {cold['median_ms']:.1f} ms, max {cold['max_ms']:.1f} ms, "
                 f"{cold['median_ms'] / bare_ms:.1f}x bare")
        if kind == "jail":
            met = cold["median_ms"] / bare_ms <= TARGET_COLD_VS_BARE
            print(f"cold start jailed: {times} (target <= {TARGET_COLD_VS_BARE:g}x) {verdict(met)}")
        else:
            print(f"cold start without a jail: {times}")
    errors = sum(result.errors for server in servers for slices in server.slices.values() for result in slices)
    if errors:
        print(f"WARNING: {errors} failed requests during the measurements: the figures are suspect")


# -- main ----------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description="Lambent sync-invoke benchmark against a raw FastAPI baseline.")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measurement (default 3)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up before each (default 1)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="measure every server this many times at each concurrency, once a round; ratios are "
                             "taken within a round and their median printed (default 5)")
    parser.add_argument("--redis-url", help="use this Redis instead of starting a redis-server")
    parser.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--cold-runs", type=int, default=5,
                        help="cold starts to time after the rounds (default 5; 0 skips)")
    parser.add_argument("--profile", type=Path, help="py-spy the gateway under extra c=32 load; collapsed stacks here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs) at the end")
    parser.add_argument("--separate-cpu", action="store_true",
                        help="run Lambent with sandbox.separate_cpu: the gateway on one CPU, "
                             "its sandboxes on the others")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="Lambent's server log level (default INFO, the server's default: a line per invocation)")
    parser.add_argument("--jail-only", action="store_true",
                        help="measure Lambent jailed only (not also without a jail): a shorter run")
    parser.add_argument("--no-hop", action="store_true",
                        help="skip the process-hop baseline (raw FastAPI handing each call to a plain child "
                             "process): a shorter run")
    parser.add_argument("--_serve-raw", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--_loadgen", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--_cold", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args._serve_raw:
        serve_raw(int(args._serve_raw[0]), Path(args._serve_raw[1]), int(args._serve_raw[2]))
        return 0
    if args._loadgen:
        url, concurrency, seconds, cap = args._loadgen
        print(json.dumps(python_loadgen(url, int(concurrency), float(seconds), int(cap))))
        return 0
    if args._cold:
        base, data_dir, folder, runs, tag = args._cold
        redis_url = os.environ["BENCH_REDIS_URL"]
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        print(json.dumps(asyncio.run(cold_side(base, redis_url, Path(data_dir), Path(folder), int(runs), tag))))
        return 0

    load_kind = args.loadgen
    if load_kind == "auto":
        load_kind = "wrk" if shutil.which("wrk") else "python"
    if load_kind == "wrk" and shutil.which("wrk") is None:
        parser.error("wrk is not installed (apt-get install -y wrk), use --loadgen python")

    workdir = Path(tempfile.mkdtemp(prefix="lambent-bench-"))
    procs = Processes()
    started = time.monotonic()
    try:
        progress(f"work folder {workdir}; load generator {load_kind}; {os.cpu_count()} CPUs")
        name = f"benchsync-{uuid.uuid4().hex[:6]}"
        function_dir = workdir / "functions" / name
        function_dir.mkdir(parents=True)
        handler_file = function_dir / "handler.py"
        handler_file.write_text(HANDLER_SOURCE)
        redis_url, redis_pid = use_redis(procs, workdir, args.redis_url)
        variants = VARIANTS[:1] if args.jail_only else VARIANTS
        for kind in variants:
            (workdir / kind).mkdir()
        configs = {kind: write_config(workdir / kind, redis_url, {
            "functions_dir": str(workdir / "functions"), "data_dir": str(workdir / kind / "data"),
            "gateway": {"host": "127.0.0.1", "port": free_port()}, "logs": {"level": args.log_level},
            "sandbox": {"separate_cpu": bool(args.separate_cpu), "isolation": kind}}) for kind in variants}
        load = LoadGenerator(load_kind, workdir)

        bare_runs = bare_starts(10)
        pipe_runs = pipe_round_trips()
        # Every server is started now and stays up; only the one being measured has callers.
        raw = start_raw(procs, workdir, handler_file)
        hop = None if args.no_hop else start_raw(procs, workdir, handler_file, children=HOP_CHILDREN)
        lambents = {kind: start_lambent(procs, load, workdir / kind, configs[kind], name, kind) for kind in variants}
        servers = [raw, *([hop] if hop is not None else []), *lambents.values()]
        for c in CONCURRENCIES:
            for index in range(args.rounds):
                # The order alternates, so that no server is always the one measured after another's load.
                for server in (servers if index % 2 == 0 else servers[::-1]):
                    server.slices[c].append(measure(load, server, c, args.warmup, args.duration, redis_pid,
                                                    f"round {index + 1}/{args.rounds}"))
        colds: dict[str, dict[str, Any] | None] = {}
        cold_names: list[str] = []
        for kind, server in lambents.items():
            runs = run_cold(workdir / kind, server.base, redis_url, args.cold_runs) if args.cold_runs > 0 else []
            times = [run["cold_ms"] for run in runs]
            colds[kind] = {"runs": runs, "median_ms": statistics.median(times), "max_ms": max(times)} if runs else None
            cold_names += [run["name"] for run in runs]
        if args.profile:
            run_profile(load, lambents["jail"].url, lambents["jail"].pid, args.duration, args.profile.resolve())
        bare_runs += bare_starts(10)
        pipe_runs += pipe_round_trips()
        report(lambents, raw, hop, colds, statistics.median(bare_runs), statistics.median(pipe_runs), args.rounds,
               load_kind, redis_owned=redis_pid is not None)
        if args.redis_url:
            made = [name, *cold_names]
            print(f"note: the functions {', '.join(made)} stay in the catalog at {masked(args.redis_url)}")
        progress(f"done in {time.monotonic() - started:.0f} s")
        return 0
    finally:
        procs.stop_all()
        discard_workdir(workdir, args.keep)


if __name__ == "__main__":
    run_main(main)
