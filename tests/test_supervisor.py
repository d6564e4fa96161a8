"""`lambent up` (runtime/supervisor.py): a real supervisor and its roles, stopped as a user stops them."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import yaml

from .helpers import free_port, start_role, wait_until

ROLES = ("gateway", "worker", "scheduler")      # KAFKA off, no SQS: no streams role
STOP_DEADLINE_S = 30.0      # below `up`'s own grace (35 s), past which it would kill a role and say so
READY = ("Uvicorn running on", "worker started", "scheduler started")   # each role's line once it takes signals


class Up:
    """`python -m runtime up` in a process group of its own (as a terminal's job), its output in a file."""

    def __init__(self, folder: Path, redis_url: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "functions").mkdir(exist_ok=True)
        self.port = free_port()
        config = folder / "config.yaml"
        config.write_text(yaml.safe_dump({
            "redis_url": redis_url, "functions_dir": str(folder / "functions"), "data_dir": str(folder / "data"),
            "gateway": {"host": "127.0.0.1", "port": self.port},
            "metrics": {"worker_port": 0, "scheduler_port": 0, "streams_port": 0}}))
        self.log_path = folder / "up.log"
        self.role = start_role("up", self.log_path, args=("--config", str(config)), new_session=True,
                               ready=self.ready, ready_timeout_s=60)
        self.process = self.role.process

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def ready(self) -> bool:
        """/healthz answers and each role said it started (start_role fails at once when `up` exits)."""
        try:
            healthy = httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False
        return healthy and all(line in self.output() for line in READY)

    def kill(self) -> None:
        """SIGKILL to the group this test started (`up` and its roles), when it still runs."""
        self.role.kill()


@pytest.fixture
def up(tmp_path: Path, redis_url: str) -> Iterator[Up]:
    started = Up(tmp_path / "up", redis_url)        # once it and each of its roles started
    try:
        yield started
    finally:
        started.kill()


@pytest.mark.parametrize("whom", ["supervisor", "process-group"])
def test_ctrl_c_stops_every_role_cleanly_and_says_so_without_exit_codes(up: Up, whom: str) -> None:
    # given `lambent up` with its roles running
    # when SIGINT comes: `kill -INT` to `up` alone, or Ctrl-C in a terminal (the whole group has it)
    sent = time.monotonic()
    if whom == "supervisor":
        os.kill(up.process.pid, signal.SIGINT)
    else:
        os.killpg(up.process.pid, signal.SIGINT)
    try:
        code = up.process.wait(STOP_DEADLINE_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"lambent up still runs {STOP_DEADLINE_S:.0f} s after SIGINT:\n{up.output()}")
    took = time.monotonic() - sent
    output = up.output()
    # then it exits 0 within the deadline, and each role it stopped is said to have stopped, nothing more
    assert code == 0, output
    ended = dict(re.findall(r"^lambent up: (\w+) +(\S.*)$", output.split("lambent up: stopping\n", 1)[-1], re.M))
    assert ended == {role: "stopped" for role in ROLES}, output
    assert not re.search(r"exit -\d|killing|Traceback", output), output     # (not "-15": a tmp path may hold it)
    assert took < STOP_DEADLINE_S


# A supervisor of three roles, each of which prints "NAME ready" once its SIGTERM handling is set up:
# one that exits 0 on SIGTERM, one that exits 3 on it, and one that ignores it (and is killed after the grace).
_ROLES = '''
import signal, sys, time
name, answer = sys.argv[1], sys.argv[2]
if answer == "ignore":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(int(answer)))
print(name, "ready", flush=True)
while True:
    time.sleep(0.1)
'''
_SUPERVISOR = '''
import sys
from runtime.supervisor import Role, supervise
roles = [Role(name=name, argv=[sys.executable, "-c", sys.argv[1], name, answer])
         for name, answer in (("polite", "0"), ("grumpy", "3"), ("deaf", "ignore"))]
sys.exit(supervise(roles, env={}, stop_grace_s=1.0))
'''


def test_a_role_that_does_not_stop_as_asked_is_named_with_what_happened(tmp_path: Path) -> None:
    # given a supervisor whose roles answer SIGTERM with exit 0, with exit 3, and not at all
    log_path = tmp_path / "supervisor.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen([sys.executable, "-c", _SUPERVISOR, _ROLES], cwd=Path(__file__).parent.parent,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: all(f"{name} ready" in log_path.read_text() for name in ("polite", "grumpy", "deaf")),
                   timeout=30, message="the three roles to be ready")
        # when it is asked to stop
        process.send_signal(signal.SIGTERM)
        code = process.wait(STOP_DEADLINE_S)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    output = log_path.read_text()
    # then the role that stopped is "stopped"; the others say what they did instead; the stop was not clean
    assert re.search(r"^lambent up: polite +stopped$", output, re.M), output
    assert re.search(r"^lambent up: grumpy +stopped \(exit 3\)$", output, re.M), output
    assert re.search(r"^lambent up: deaf +killed \(SIGKILL\): it did not stop in time$", output, re.M), output
    assert code == 1
