"""Streams benchmark: `lambent streams` against a plain kafka-python consumer loop, measured in the same run.

    .venv/bin/python bench/streams.py [--records N] [--bootstrap HOST:PORT] [--redis-url URL]
                                      [--rounds N] [--timeout S]
                                      [--streams-config JSON] [--profile FILE] [--keep]

What it measures (a benchmark, not a test: it prints figures and PASS/MISS against a target):

1. Lambent: records/s that `lambent streams` consumes through a trivial handler (it counts the records
   of its batch and sends the count to this script in a UDP datagram, so that every record is seen to reach
   it; jailed, as by default) with
   batch_size 100, batch_window 0.5, on a 1-partition and on a 4-partition topic. The N records
   (keyed, 100-byte values) are produced BEFORE the consumer starts: the measure is pure consumption.
2. Baseline: a plain kafka-python loop (KafkaConsumer, fresh group, enable_auto_commit False,
   max_poll_records 500, `consumer.commit()` after every poll that returned records) reading the same
   topics, in its own process, until it has seen the N records.
3. Ratio Lambent/plain for 1 and 4 partitions (target on 4 partitions: >= 0.9).

Both are timed the same way, from outside: this script reads the consumer group's committed offsets
(KafkaAdminClient.list_group_offsets) every POLL_S seconds. "startup" is from the process start to
the first committed offset > 0 seen (it includes the interpreter, imports, the group join, the first
fetch and, for Lambent, the sandbox's cold start); "joined" is when the group was first seen Stable
with a member. records/s is the steady rate: the records committed from the first commit seen to the
moment every partition's committed offset reached its end offset, over that time. The rate from the
process start ("incl. startup") is printed too.

A run whose committed offsets do not move for STALL_S seconds while records are left is reported as
STALLED (with each partition's committed/end offsets), its rate counted up to its last progress; it
fails the target (kafka-python 3.0.12 has stalls of its own that runtime/streams/compat.py and the
consumer's watchdogs work around). `--streams-config` passes extra keys of the `streams` config
section (e.g. poll_timeout_s) to `lambent streams`, for experiments.

The consumers run one at a time so they never compete for the CPUs; each is measured `--rounds` times
(default 2, alternating which goes first) and the best figure of each is kept, because the noise of a
shared machine only ever slows a run down. A run during which other processes used more than
NOISY_SHARE of the CPUs is measured once more. Besides the figures, it prints the CPU time per record
of each process involved (consumer, its sandboxes, Kafka broker, Redis, this script's offset polling)
in the steady window, read from /proc, which shows where the time goes.

Setup: a Kafka broker of its own (scripts/kafka.sh, state in the work folder; it requires SASL PLAIN as
`lambent`, with the password kafka.sh made) unless `--bootstrap` is given (its login, if it needs one,
from LAMBENT_KAFKA_SASL__PASSWORD and optionally __USERNAME, __MECHANISM), and a redis-server of its own
unless `--redis-url` is given. The function is deployed by
starting `lambent serve` (which deploys the folders of functions_dir), waiting for /healthz and
stopping it; it is deployed again, pointing at the other topic, before the second topic's runs, so
that `lambent streams` only ever consumes the topic being measured. A Lambent run that is repeated on
the same topic deletes the (empty) consumer group first, so it reads from offset 0 again.

`--profile FILE` additionally runs py-spy (if installed in this interpreter's environment) on
`lambent streams` during one extra 4-partition run
after the measurements, writes the collapsed stacks by thread to FILE and prints how busy each thread
was and the functions with the most samples. The measured figures are not affected.

Every process this script starts is stopped at the end, even on error; topics and groups made on a
broker given with `--bootstrap` are deleted. Processes, Redis, config, CPU accounting and progress lines
come from bench/common.py, as in the other benchmarks.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import (CpuSample, Processes, collapsed_stacks, discard_workdir, free_port, lambent_env, masked,
                    progress, py_spy_path, run_main, start_runtime, tail, use_redis, verdict, wait_healthy,
                    write_config)

ROOT = Path(__file__).resolve().parent.parent
# The handler tells the script how many records each batch held in a UDP datagram to 127.0.0.1 (a jail hides the
# host's folders from it, not the host's loopback: a function shares the host network by default).
HANDLER_SOURCE = '''\
import os
import socket

_HOST, _, _PORT = os.environ.get("BENCH_COUNT_ADDR", "").rpartition(":")
_SOCKET = socket.socket(socket.AF_INET, socket.SOCK_DGRAM) if _PORT else None


def handler(event, context):
    count = 0
    for records in event["records"].values():
        count += len(records)
    if _SOCKET is not None:
        _SOCKET.sendto(str(count).encode(), (_HOST, int(_PORT)))
    return None
'''
PARTITIONS = (1, 4)
BATCH_SIZE = 100
BATCH_WINDOW_S = 0.5
VALUE_BYTES = 100
TARGET_RATIO_4P = 0.9                 # issue 17
POLL_S = 0.05              # how often committed offsets are read while a consumer runs
STALL_S = 30.0             # no committed progress for this long, with records left: the run stalled
NOISY_SHARE = 0.2          # other processes using more than this share of the CPUs: measure once more
NOISY_RETRIES = 1


# -- setup: Kafka, topics, the function ---------------------------------------------------

class Broker:
    """Our own broker through scripts/kafka.sh (stopped at the end), or the one given."""

    def __init__(self, bootstrap: str | None, workdir: Path) -> None:
        self.owned = bootstrap is None
        self.state_dir = workdir / "kafka"
        self.bootstrap = bootstrap or ""
        self.pid: int | None = None
        self.sasl: dict[str, str] | None = None         # config.yaml's kafka_sasl, when the broker needs a login
        if not self.owned and os.environ.get("LAMBENT_KAFKA_SASL__PASSWORD"):
            self.sasl = {"mechanism": os.environ.get("LAMBENT_KAFKA_SASL__MECHANISM", "PLAIN"),
                         "username": os.environ.get("LAMBENT_KAFKA_SASL__USERNAME", "lambent"),
                         "password": os.environ["LAMBENT_KAFKA_SASL__PASSWORD"]}

    def config(self) -> dict[str, Any]:
        """The config.yaml keys that say where the broker is and how to log in."""
        return {"kafka_bootstrap_servers": self.bootstrap, **({"kafka_sasl": self.sasl} if self.sasl else {})}

    def start(self) -> None:
        if not self.owned:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        progress("kafka: starting a broker of our own (scripts/kafka.sh; the first start downloads jars)")
        started = time.monotonic()
        env = {**os.environ, "LAMBENT_PYTHON": sys.executable}
        out = subprocess.run([str(ROOT / "scripts" / "kafka.sh"), "start", str(self.state_dir)],
                             capture_output=True, text=True, timeout=900, env=env)
        if out.returncode != 0:
            raise RuntimeError(f"scripts/kafka.sh start failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
        self.bootstrap = out.stdout.strip().splitlines()[-1]
        password = subprocess.run([str(ROOT / "scripts" / "kafka.sh"), "password", str(self.state_dir)],
                                  capture_output=True, text=True, timeout=60, check=True).stdout.strip()
        self.sasl = {"mechanism": "PLAIN", "username": "lambent", "password": password}
        pid_text = (self.state_dir / "kafka.pid").read_text().strip()
        self.pid = int(pid_text) if pid_text.isdigit() else None
        progress(f"kafka: broker at {self.bootstrap} (pid {self.pid}) after {time.monotonic() - started:.1f} s")

    def stop(self) -> None:
        if self.owned and self.state_dir.exists():
            subprocess.run([str(ROOT / "scripts" / "kafka.sh"), "stop", str(self.state_dir)],
                           capture_output=True, text=True, timeout=120)


def kafka_options(config_file: Path) -> dict[str, Any]:
    """How Lambent's own clients connect with this config (address, SASL login): the baseline and this script's
    admin client and producer connect the same way."""
    from runtime.config import Config
    from runtime.streams.clients import client_options
    return client_options(Config.load(config_file, environ={}))


def admin_client(kafka: dict[str, Any]) -> Any:
    from kafka import KafkaAdminClient
    return KafkaAdminClient(**kafka, client_id="lambent-bench-streams", request_timeout_ms=10_000)


def make_topic(admin: Any, kafka: dict[str, Any], topic: str, partitions: int, records: int) -> dict[Any, int]:
    """Create the topic, produce `records` keyed records, return each partition's end offset."""
    from kafka import KafkaProducer, TopicPartition
    from kafka.admin import NewTopic, OffsetSpec

    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    admin.wait_for_topics([topic], timeout_ms=30_000)
    started = time.monotonic()
    producer = KafkaProducer(**kafka, acks=1, linger_ms=20, batch_size=256 * 1024)
    try:
        filler = b"x" * VALUE_BYTES
        for index in range(records):
            key = f"key-{index:08d}".encode()
            value = (f"{index:08d}:".encode() + filler)[:VALUE_BYTES]
            producer.send(topic, key=key, value=value)
        producer.flush(timeout=120)
    finally:
        producer.close(timeout=30)
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    listed = admin.list_partition_offsets({tp: OffsetSpec.LATEST for tp in tps})
    ends = {tp: int(info.offset) for tp, info in listed.items()}
    total = sum(ends.values())
    if total != records:
        raise RuntimeError(f"{topic}: {total} records on the broker after producing {records}")
    spread = ", ".join(str(ends[tp]) for tp in tps)
    progress(f"topic {topic}: {partitions} partition(s), {records:,} records produced in "
             f"{time.monotonic() - started:.1f} s (per partition: {spread})")
    return ends


class BatchCounts:
    """The batch sizes the handler reports (one UDP datagram a batch), read by a thread of this script."""

    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self._socket.bind(("127.0.0.1", 0))
        self.address = "%s:%d" % self._socket.getsockname()
        self._counts: list[int] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._read, name="batch-counts", daemon=True).start()

    def _read(self) -> None:
        while True:
            data = self._socket.recv(64)
            with self._lock:
                self._counts.append(int(data))

    def reset(self) -> None:
        with self._lock:
            self._counts = []

    def taken(self, *, settle_s: float = 0.2) -> list[int]:
        """What was reported; first waits until no datagram has come for `settle_s` (the last ones in flight)."""
        seen = -1
        while True:
            with self._lock:
                if len(self._counts) == seen:
                    return list(self._counts)
                seen = len(self._counts)
            time.sleep(settle_s)


def write_function(function_dir: Path, topic: str, counts: BatchCounts) -> None:
    function_dir.mkdir(parents=True, exist_ok=True)
    (function_dir / "handler.py").write_text(HANDLER_SOURCE)
    spec = {"handler": "handler.handler", "timeout": 30, "memory_mb": 128,
            "environment": {"BENCH_COUNT_ADDR": counts.address},
            "events": [{"kafka": {"topic": topic, "batch_size": BATCH_SIZE, "batch_window": BATCH_WINDOW_S}}]}
    (function_dir / "function.yaml").write_text(json.dumps(spec, indent=2))   # JSON is YAML


def deploy(procs: Processes, workdir: Path, config_file: Path, port: int) -> None:
    """`lambent serve` deploys the folders of functions_dir at start-up; once healthy it is stopped."""
    log_file = workdir / "serve.log"
    proc = start_runtime(procs, "serve", log_file, lambent_env(config_file), ROOT)
    try:
        started = time.monotonic()
        wait_healthy(f"http://127.0.0.1:{port}", proc, log_file, deadline_s=60.0)
        progress(f"deploy: lambent serve healthy after {time.monotonic() - started:.2f} s; stopping it")
    finally:
        procs.stop(proc)


# -- measuring -----------------------------------------------------------------------------

@dataclass
class Run:
    kind: str                 # "lambent" or "plain"
    partitions: int
    records: int              # N
    startup_s: float          # process start -> first commit seen
    joined_s: float | None    # process start -> group seen Stable with a member
    steady_records: int       # committed from the first commit seen to the last progress seen
    steady_s: float
    total_s: float            # process start -> every partition committed to its end (or the last progress)
    delivered: int | None     # records the handler / loop saw (>= N: at least once)
    stalled: str | None = None                            # partitions whose committed offset stopped short
    cpu: dict[str, float] = field(default_factory=dict)   # steady window only

    @property
    def rate(self) -> float:
        return self.steady_records / self.steady_s if self.steady_s > 0 else 0.0

    @property
    def rate_total(self) -> float:
        return self.records / self.total_s if self.total_s > 0 and not self.stalled else 0.0

    @property
    def others_share(self) -> float:
        return self.cpu.get("others", 0.0) / (max(self.steady_s, 1e-9) * (os.cpu_count() or 1))


@dataclass
class Watched:
    first_at: float
    joined_at: float | None
    first_done: int
    last_at: float            # when the last progress was seen (the end, unless stalled)
    done: int
    cpu: dict[str, float]
    stalled: str | None


class Watch:
    """Reads a group's committed offsets (and, until it has joined, its state) in a bounded loop."""

    def __init__(self, admin: Any, group: str, ends: dict[Any, int]) -> None:
        self.admin = admin
        self.group = group
        self.ends = ends
        self.offsets: dict[Any, int] = {}

    def committed(self) -> int:
        answer = admin_call(lambda: self.admin.list_group_offsets({self.group: list(self.ends)}))
        offsets = answer.get(self.group, {})
        total = 0
        for tp, end in self.ends.items():
            meta = offsets.get(tp)
            offset = min(max(-1 if meta is None else int(meta.offset), 0), end)
            self.offsets[tp] = offset
            total += offset
        return total

    def stable(self) -> bool:
        try:
            info = self.admin.describe_groups([self.group]).get(self.group) or {}
        except Exception:     # not known yet: the coordinator has not heard of the group
            return False
        return info.get("group_state") == "Stable" and bool(info.get("members"))

    def short(self) -> str:
        """The partitions not committed to their end: "p0 2000/2468, ..."."""
        return ", ".join(f"p{tp.partition} {self.offsets.get(tp, 0)}/{end}"
                         for tp, end in sorted(self.ends.items(), key=lambda item: item[0].partition)
                         if self.offsets.get(tp, 0) < end)

    def run(self, proc: subprocess.Popen[bytes], started: float, timeout_s: float, stall_s: float, label: str,
            log_file: Path, sample: Any, on_idle: Any = None) -> Watched:
        """Until every partition is committed to its end, or nothing moved for `stall_s` seconds."""
        need = sum(self.ends.values())
        first_at: float | None = None
        first_done = 0
        joined_at: float | None = None
        before = after = None
        last_at = started
        last_done = 0
        after_at = 0.0
        next_report = started + 10.0
        deadline = started + timeout_s
        while True:
            now = time.monotonic()
            done = self.committed()
            if first_at is None and done > 0:
                first_at, first_done = now, done
                before = sample()
            if joined_at is None and first_at is None and self.stable():
                joined_at = time.monotonic()
            if done > last_done:
                last_at, last_done = now, done
                if done >= need or now - after_at >= 0.5:    # CPU up to the last progress, not past it
                    after, after_at = sample(), now
            if on_idle is not None and first_at is not None and (done >= need or now - last_at > 2.0):
                on_idle()           # the profile covers the work, not a stall's idle time
                on_idle = None
            if done >= need or (first_at is not None and now - last_at > stall_s):
                assert first_at is not None and before is not None and after is not None
                stalled = None if done >= need else self.short()
                return Watched(first_at=first_at, joined_at=joined_at, first_done=first_done, last_at=last_at,
                               done=last_done, cpu=cpu_used(before, after), stalled=stalled)
            if proc.poll() is not None:
                raise RuntimeError(f"{label}: the consumer exited ({proc.returncode}) with {done:,} of {need:,} "
                                   f"records committed:\n{tail(log_file)}")
            if now > deadline:
                raise RuntimeError(f"{label}: {done:,} of {need:,} records committed after {timeout_s:.0f} s "
                                   f"(--timeout)")
            if first_at is None and now - started > max(stall_s, 60.0):
                raise RuntimeError(f"{label}: nothing committed {now - started:.0f} s after the start:\n"
                                   f"{tail(log_file)}")
            if now >= next_report:
                rate = ""
                if first_at is not None and now > first_at:
                    rate = f" ({(done - first_done) / (now - first_at):,.0f} records/s since the first commit)"
                progress(f"{label}: {done:,} of {need:,} committed after {now - started:.0f} s{rate}")
                next_report = now + 10.0
            time.sleep(POLL_S)


def cpu_sample(consumer_pid: int, ctx: Context) -> CpuSample:
    """The consumer (its sandboxes apart), the broker and Redis when they are ours, this script."""
    return CpuSample.take({"consumer": consumer_pid, "broker": ctx.broker_pid, "redis": ctx.redis_pid},
                          children_as={"consumer": "sandboxes"})


def cpu_used(before: CpuSample, after: CpuSample) -> dict[str, float]:
    used = after.minus(before)
    return {**used, **after.noise(before, used)}


def _result(kind: str, partitions: int, records: int, started: float, watched: Watched,
            delivered: int | None) -> Run:
    w = watched
    return Run(kind=kind, partitions=partitions, records=records, startup_s=w.first_at - started,
               joined_s=None if w.joined_at is None else w.joined_at - started,
               steady_records=w.done - w.first_done, steady_s=w.last_at - w.first_at, total_s=w.last_at - started,
               delivered=delivered, stalled=w.stalled, cpu=w.cpu)


def describe(run: Run, label: str) -> str:
    joined = f", group joined {run.joined_s:.2f} s" if run.joined_s is not None else ""
    delivered = f", {run.delivered:,} records delivered" if run.delivered is not None else ""
    whole = f", {run.rate_total:,.0f} records/s incl. startup" if not run.stalled else ""
    text = (f"{label}: {run.rate:,.0f} records/s steady ({run.steady_records:,} records in {run.steady_s:.2f} s), "
            f"startup to first commit {run.startup_s:.2f} s{joined}{whole}{delivered}; "
            f"other processes used {100 * run.others_share:.0f}% of the CPUs")
    if run.stalled:
        text += f"\n    STALLED: no commit for {STALL_S:.0f} s with records left (committed/end): {run.stalled}"
    return text


def run_lambent(procs: Processes, admin: Any, ctx: Context, partitions: int, *,
                profile: Profile | None = None) -> Run:
    group = f"lambent-{ctx.function}-0-{ctx.topics[partitions]}"
    ends = ctx.ends[partitions]
    kind = "lambent"
    label = f"{kind} {partitions}p"
    reset_group(admin, group)
    ctx.counts.reset()
    log_file = ctx.workdir / "streams.log"
    argv = [sys.executable, "-m", "runtime", "streams"]
    with open(log_file, "ab") as log:
        log.write(f"---- {label} ----\n".encode())
        log.flush()
        started = time.monotonic()
        proc = procs.start(argv, stdout=log, stderr=subprocess.STDOUT, env=lambent_env(ctx.config_file),
                           cwd=str(ROOT))
    if profile is not None:
        time.sleep(0.5)         # py-spy needs the interpreter loaded to attach
        profile.start(proc.pid)
    try:
        watched = Watch(admin, group, ends).run(
            proc, started, ctx.timeout_s, STALL_S, label, log_file,
            lambda: cpu_sample(proc.pid, ctx),
            on_idle=profile.stop if profile is not None else None)
    finally:
        if profile is not None:
            profile.stop()
        procs.stop(proc)
    counts = ctx.counts.taken()
    run = _result(kind, partitions, ctx.records, started, watched, sum(counts))
    if sum(counts) < watched.done:
        raise RuntimeError(f"{label}: the handler saw {sum(counts):,} records, fewer than the {watched.done:,} "
                           f"committed")
    sizes = f"; {len(counts)} batches, {sum(counts) / max(len(counts), 1):.0f} records each on average"
    progress(describe(run, label) + sizes)
    return run


def run_plain(procs: Processes, admin: Any, ctx: Context, partitions: int) -> Run:
    group = f"bench-plain-{uuid.uuid4().hex[:10]}"
    ends = ctx.ends[partitions]
    label = f"plain {partitions}p"
    log_file = ctx.workdir / "plain.log"
    out_file = ctx.workdir / f"plain-{group}.json"
    with open(log_file, "ab") as log:
        started = time.monotonic()
        proc = procs.start([sys.executable, str(Path(__file__).resolve()), "--_plain", str(ctx.config_file),
                            ctx.topics[partitions], group, str(ctx.records), str(out_file),
                            str(ctx.timeout_s)], stdout=log, stderr=subprocess.STDOUT, cwd=str(ROOT))
    ctx.plain_groups.append(group)
    try:
        watched = Watch(admin, group, ends).run(
            proc, started, ctx.timeout_s, STALL_S, label, log_file,
            lambda: cpu_sample(proc.pid, ctx))
        proc.wait(30)
    finally:
        procs.stop(proc)
    delivered = json.loads(out_file.read_text())["seen"] if out_file.exists() else None
    run = _result("plain", partitions, ctx.records, started, watched, delivered)
    progress(describe(run, label))
    return run


def plain_consumer(config_file: Path, topic: str, group: str, records: int, out_file: Path,
                   timeout_s: float) -> None:
    """The baseline, in its own process: poll, count, commit after every poll, until N records seen. It reads
    the broker's address and login from the config file (never from its command line)."""
    from kafka import KafkaConsumer
    consumer = KafkaConsumer(topic, **kafka_options(config_file), group_id=group, enable_auto_commit=False,
                             auto_offset_reset="earliest", max_poll_records=500)
    seen = 0
    deadline = time.monotonic() + timeout_s
    try:
        while seen < records and time.monotonic() < deadline:
            fetched = consumer.poll(timeout_ms=1000)
            if not fetched:
                continue
            for batch in fetched.values():
                seen += len(batch)
            consumer.commit()
    finally:
        consumer.close(autocommit=False)
    out_file.write_text(json.dumps({"seen": seen}))


def reset_group(admin: Any, group: str) -> None:
    """Before a repeated run: delete the group (empty once its consumer left), so it starts at offset 0."""
    if not admin_call(lambda: admin.list_group_offsets({group: None})).get(group):
        return
    deadline = time.monotonic() + 30
    while True:
        answer = admin_call(lambda: admin.delete_groups([group]))
        if answer.get(group) in ("OK", "GroupIdNotFoundError"):
            return
        if time.monotonic() > deadline:      # e.g. NonEmptyGroupError: the last member has not left
            raise RuntimeError(f"could not delete consumer group {group}: {answer}")
        time.sleep(0.5)


def admin_call(call: Any, attempts: int = 40) -> Any:
    """An admin request, retried while the broker says "not yet" (a fresh broker has no offsets topic)."""
    from kafka.errors import KafkaError
    for attempt in range(attempts):
        try:
            return call()
        except KafkaError as exc:
            if not getattr(exc, "retriable", False) or attempt == attempts - 1:
                raise
            time.sleep(0.25)
    raise AssertionError("unreachable")


# -- profile -------------------------------------------------------------------------------

PROFILE_RATE = 200


@dataclass
class Profile:
    out: Path
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    seconds: float = 0.0

    def start(self, pid: int) -> None:
        spy = py_spy_path()
        if spy is None:
            progress("profile: py-spy not found; skipped (pip install py-spy)")
            return
        progress(f"profile: py-spy on lambent streams (pid {pid}) for this run")
        # Busy samples only (no --idle), by thread; not the sandboxes (their time is in the CPU table).
        self.proc = subprocess.Popen([str(spy), "record", "--pid", str(pid), "--rate", str(PROFILE_RATE),
                                      "--format", "raw", "--threads", "--nonblocking", "--output", str(self.out)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        self.started = time.monotonic()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)          # py-spy writes its output on Ctrl-C
        self.seconds = time.monotonic() - self.started
        try:
            spy_out, _ = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            spy_out, _ = self.proc.communicate()
        if not self.out.exists():
            progress(f"profile: py-spy wrote nothing: {spy_out.decode(errors='replace')[-500:]}")


def summarize_profile(profile: Profile, top: int = 14) -> None:
    """Busy share of each thread over the recording, then self and inclusive time of the busy samples."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    threads: dict[str, int] = {}
    total = 0
    for (thread, *rest), count in collapsed_stacks(profile.out):
        total += count
        name = re.sub(r"\d+", "N", thread.partition(": ")[2] or thread)
        threads[name] = threads.get(name, 0) + count
        frames = [re.sub(r":\d+\)$", ")", frame) for frame in rest]
        if not frames:
            continue
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
        own[frames[-1]] = own.get(frames[-1], 0) + count
    if not total:
        return
    possible = PROFILE_RATE * max(profile.seconds, 1e-9)
    print(f"\nprofile of lambent streams: {total} busy samples in {profile.seconds:.1f} s at {PROFILE_RATE} Hz "
          f"({profile.out}).")
    print("  busy share of the wall time, by thread (the rest of the time the thread waits):")
    for name, count in sorted(threads.items(), key=lambda item: -item[1]):
        print(f"  {100 * count / possible:6.1f}%  {name[:100]}")
    print("  most self time (share of the busy samples):")
    for frame, count in sorted(own.items(), key=lambda item: -item[1])[:top]:
        print(f"  {100 * count / total:6.1f}%  {frame[:120]}")
    print("  Lambent's own functions, inclusive (share of the busy samples):")
    mine = [(frame, count) for frame, count in inclusive.items() if "runtime/" in frame
            and "runtime/__main__" not in frame and "runtime/cli" not in frame and "run_streams" not in frame
            and "StreamsRunner.run " not in frame]
    for frame, count in sorted(mine, key=lambda item: -item[1])[:top]:
        print(f"  {100 * count / total:6.1f}%  {frame[:120]}")


# -- report --------------------------------------------------------------------------------

def best(runs: list[Run]) -> Run:
    """Across rounds: noise only ever slows a run down, so the fastest is kept (a run that finished first)."""
    return max(runs, key=lambda run: (run.stalled is None, run.rate))


def report(best_runs: dict[str, dict[int, Run]], rounds: int, records: int, broker_owned: bool,
           redis_owned: bool) -> None:
    kinds = list(best_runs)
    print()
    print(f"{rounds} round(s), best of each kept; N = {records:,} records per topic, {VALUE_BYTES}-byte keyed values, "
          f"batch_size {BATCH_SIZE}, batch_window {BATCH_WINDOW_S} s")
    print("records/s = steady rate, from the first committed offset seen to the end; startup = process start to "
          "that first commit")
    print(f"{'':16}{'records/s':>11}{'startup s':>11}{'joined s':>10}{'steady s':>10}{'incl.start':>12}"
          f"{'delivered':>11}")
    for p in PARTITIONS:
        for kind in kinds:
            r = best_runs[kind][p]
            joined = f"{r.joined_s:10.2f}" if r.joined_s is not None else f"{'-':>10}"
            delivered = f"{r.delivered:11,}" if r.delivered is not None else f"{'-':>11}"
            whole = f"{r.rate_total:12,.0f}" if not r.stalled else f"{'STALLED':>12}"
            print(f"{kind:<11} {p}p  {r.rate:11,.0f}{r.startup_s:11.2f}{joined}{r.steady_s:10.2f}{whole}{delivered}")
    print()
    cpus = os.cpu_count() or 1
    busy: dict[tuple[str, int], float] = {}
    print(f"CPU time per record (µs) in the steady window; 'ours' = our processes' share of the {cpus} CPUs,")
    print("'others' = the rest of the machine's busy time and 'steal' = the hypervisor's (both: noise):")
    print(f"{'':16}{'consumer':>9}{'sandbox':>9}{'broker':>9}{'redis':>8}{'bench':>8}{'total':>8}{'ours':>7}"
          f"{'others':>7}{'steal':>7}")
    for p in PARTITIONS:
        for kind in kinds:
            r = best_runs[kind][p]
            if not r.steady_records or r.steady_s <= 0:
                print(f"{kind:<11} {p}p  (no steady window: nothing was committed after the first commit seen)")
                continue
            n = r.steady_records
            per = {key: 1e6 * value / n for key, value in r.cpu.items()}
            total = sum(per[key] for key in ("consumer", "sandboxes", "broker", "redis", "bench"))
            ours = 100 * total * n / 1e6 / (r.steady_s * cpus)
            busy[(kind, p)] = ours
            share = {key: 100 * r.cpu[key] / (r.steady_s * cpus) for key in ("others", "steal")}
            broker = f"{per['broker']:9.1f}" if broker_owned else f"{'-':>9}"
            redis = f"{per['redis']:8.1f}" if redis_owned else f"{'-':>8}"
            print(f"{kind:<11} {p}p  {per['consumer']:9.1f}{per['sandboxes']:9.1f}{broker}{redis}{per['bench']:8.1f}"
                  f"{total:8.1f}{ours:6.0f}%{share['others']:6.0f}%{share['steal']:6.0f}%"
                  + ("  <- noisy" if share["others"] > 100 * NOISY_SHARE else ""))
    if not broker_owned:
        print("(--bootstrap: the broker is not ours, its CPU time counts in 'others')")
    print()
    plain = best_runs["plain"]
    for kind in (k for k in kinds if k != "plain"):
        for p in PARTITIONS:
            r = best_runs[kind][p]
            ratio = r.rate / plain[p].rate if plain[p].rate else 0.0
            line = f"ratio {kind}/plain {p} partition{'s' if p > 1 else ' '}: {ratio:.2f}"
            if not r.stalled and plain[p].rate_total:
                line += f" (incl. startup {r.rate_total / plain[p].rate_total:.2f})"
            if p == 4 and kind == "lambent":
                ok = ratio >= TARGET_RATIO_4P and not r.stalled
                line += f"  target >= {TARGET_RATIO_4P}: {verdict(ok)}"
            if r.stalled:
                line += f"  STALLED at {r.stalled} (committed/end)"
            print(line)
    for (kind, p), ours in sorted(busy.items()):
        if kind != "plain" and ours < 50:
            print(f"note: {kind} {p}p kept our processes busy {ours:.0f}% of the CPUs (plain: "
                  f"{busy.get(('plain', p), 0):.0f}%): it waits more than it computes")
    for kind in kinds:
        startup = ", ".join(f"{p}p {best_runs[kind][p].startup_s:.2f} s" for p in PARTITIONS)
        print(f"startup to the first commit, {kind}: {startup}")


# -- main ----------------------------------------------------------------------------------

@dataclass
class Context:
    workdir: Path
    config_file: Path
    function: str
    counts: BatchCounts
    bootstrap: str
    records: int
    timeout_s: float
    broker_pid: int | None
    redis_pid: int | None
    topics: dict[int, str] = field(default_factory=dict)
    ends: dict[int, dict[Any, int]] = field(default_factory=dict)
    plain_groups: list[str] = field(default_factory=list)


def measured(run_once: Any, label: str) -> Run:
    """One run, and one more if other processes were busy meanwhile; the better is kept."""
    kept: Run | None = None
    for attempt in range(1 + NOISY_RETRIES):
        run = run_once()
        if kept is None or (run.stalled is None, run.rate) > (kept.stalled is None, kept.rate):
            kept = run
        if run.others_share <= NOISY_SHARE or run.stalled:    # a stall is no noise: not measured again
            break
        if attempt < NOISY_RETRIES:
            progress(f"{label}: the machine was busy with other work; measuring again")
    assert kept is not None
    return kept


def main() -> int:
    parser = argparse.ArgumentParser(description="Lambent streams benchmark against a plain kafka-python consumer.")
    parser.add_argument("--records", type=int, default=100_000, help="records per topic (default 100000)")
    parser.add_argument("--bootstrap", help="use this Kafka broker instead of starting one")
    parser.add_argument("--redis-url", help="use this Redis instead of starting a redis-server")
    parser.add_argument("--rounds", type=int, default=2,
                        help="measure every consumer this many times per topic and keep the best (default 2)")
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="longest time one consumer run may take, in seconds (default 900)")
    parser.add_argument("--profile", type=Path, help="py-spy lambent streams in an extra 4-partition run; "
                                                      "collapsed stacks here")
    parser.add_argument("--streams-config", type=json.loads, default={}, metavar="JSON",
                        help='extra keys for the `streams` section of the config, for experiments '
                             '(e.g. \'{"poll_timeout_s": 0.01}\'); printed with the results')
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs) at the end")
    parser.add_argument("--_plain", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args._plain:
        config_path, topic, group, records, out_file, timeout_s = args._plain
        plain_consumer(Path(config_path), topic, group, int(records), Path(out_file), float(timeout_s))
        return 0
    if args.records < 1 or args.rounds < 1:
        parser.error("--records and --rounds must be at least 1")

    workdir = Path(tempfile.mkdtemp(prefix="lambent-bench-streams-"))
    procs = Processes(stop_timeout=15.0)    # lambent streams lets in-flight batches finish, then leaves
    broker = Broker(args.bootstrap, workdir)
    admin = None
    ctx: Context | None = None
    started = time.monotonic()
    try:
        progress(f"work folder {workdir}; {os.cpu_count()} CPUs; {args.records:,} records per topic")
        redis_url, redis_pid = use_redis(procs, workdir, args.redis_url)
        broker.start()
        tag = uuid.uuid4().hex[:6]
        function = f"benchstreams-{tag}"
        port = free_port()
        sections: dict[str, Any] = {**broker.config(), "gateway": {"host": "127.0.0.1", "port": port},
                                    "logs": {"level": "WARNING"}}
        if args.streams_config:
            sections["streams"] = dict(args.streams_config)
            progress(f"lambent streams config: {json.dumps(sections['streams'])} (an experiment, not the defaults)")
        config_file = write_config(workdir, redis_url, sections)      # mode 0600: it holds the passwords
        kafka = kafka_options(config_file)
        admin = admin_client(kafka)
        ctx = Context(workdir=workdir, config_file=config_file, function=function,
                      counts=BatchCounts(), bootstrap=broker.bootstrap, records=args.records,
                      timeout_s=args.timeout, broker_pid=broker.pid, redis_pid=redis_pid)
        for p in PARTITIONS:
            ctx.topics[p] = f"bench-streams-{tag}-{p}p"
            ctx.ends[p] = make_topic(admin, kafka, ctx.topics[p], p, args.records)

        kinds = ["plain", "lambent"]
        runs: dict[str, dict[int, list[Run]]] = {kind: {p: [] for p in PARTITIONS} for kind in kinds}
        for p_index, p in enumerate(PARTITIONS):
            # Point the function at this topic only: `lambent streams` consumes the latest version's events.
            write_function(workdir / "functions" / function, ctx.topics[p], ctx.counts)
            deploy(procs, workdir, config_file, port)
            for index in range(args.rounds):
                progress(f"{p} partition(s): round {index + 1} of {args.rounds}")
                # The order alternates, so that a slow stretch of the shared machine does not always hit the same one.
                for kind in (kinds if (index + p_index) % 2 == 0 else kinds[::-1]):
                    if kind == "plain":
                        run = measured(lambda: run_plain(procs, admin, ctx, p), f"plain {p}p")
                    else:
                        run = measured(lambda: run_lambent(procs, admin, ctx, p), f"{kind} {p}p")
                    runs[kind][p].append(run)
        best_runs = {kind: {p: best(by_p[p]) for p in PARTITIONS} for kind, by_p in runs.items()}
        report(best_runs, args.rounds, args.records, broker_owned=broker.owned, redis_owned=redis_pid is not None)
        if args.streams_config:
            print(f"(lambent streams ran with streams config {json.dumps(args.streams_config)}, not the defaults)")
        if args.profile is not None:
            profile = Profile(out=args.profile.resolve())
            profile.out.unlink(missing_ok=True)
            print()
            run_lambent(procs, admin, ctx, PARTITIONS[-1], profile=profile)
            if profile.out.exists():
                summarize_profile(profile)
        if args.redis_url:
            print(f"note: the function {function} stays in the catalog at {masked(args.redis_url)}")
        progress(f"done in {time.monotonic() - started:.0f} s")
        return 0
    finally:
        procs.stop_all()
        if admin is not None and ctx is not None and not broker.owned:
            # Someone else's broker: leave nothing of ours on it.
            try:
                groups = [f"lambent-{ctx.function}-0-{topic}" for topic in ctx.topics.values()]
                admin.delete_groups(groups + ctx.plain_groups)
                admin.delete_topics(list(ctx.topics.values()), raise_errors=False)
            except Exception as exc:
                print(f"warning: could not delete the benchmark's topics/groups: {exc}", file=sys.stderr)
        if admin is not None:
            admin.close()
        broker.stop()
        discard_workdir(workdir, args.keep)


if __name__ == "__main__":
    run_main(main)
