"""The metrics ports of the roles without a gateway, when two stacks (or two replicas) share one host.

Real `lambent worker` and `lambent scheduler` processes with the default metrics settings (9101, 9103): each of
two stacks, with a Redis database, a data dir and so an admin key of its own, runs the same role; both run and
both serve /metrics, the one that found the port taken on a free port that it logs.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from .helpers import fresh_redis_url, start_role, stop_process, wait_until

SERVED = re.compile(r"metrics served at http://127\.0\.0\.1:(\d+)/metrics")
DEFAULT_PORTS = {"worker": 9101, "scheduler": 9103}


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """The roles a test starts; each is stopped (by PID) after it, whatever the test did."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for process in started:
            stop_process(process, timeout_s=40)


@pytest.mark.parametrize("role", sorted(DEFAULT_PORTS))
def test_two_stacks_on_one_host_both_serve_the_metrics_of_the_same_role(
        role: str, redis_url: str, tmp_path: Path, processes: list[subprocess.Popen[bytes]]) -> None:
    stacks = [tmp_path / "first", tmp_path / "second"]
    logs = [stack / f"{role}.log" for stack in stacks]
    for stack, log_path in zip(stacks, logs):     # (each role's config.yaml beside its log, in its stack folder)
        processes.append(start_role(role, log_path, config={"redis_url": fresh_redis_url(redis_url),
                                                            "data_dir": str(stack / "data")}).process)

    def served(index: int) -> int | None:
        text = logs[index].read_text(errors="replace")
        assert processes[index].poll() is None, text
        found = SERVED.search(text)
        return int(found.group(1)) if found else None

    ports = [wait_until(lambda: served(index), timeout=60, message=f"{role} {index + 1}'s metrics port")
             for index in range(2)]
    assert ports[0] != ports[1]
    default = DEFAULT_PORTS[role]
    for port, log_path in zip(ports, logs):
        if port != default:         # the default was taken (by the other stack, or by anything else here)
            assert f"metrics port 127.0.0.1:{default} is taken" in log_path.read_text(), log_path.read_text()
    wait_until(lambda: all(f"{role} started" in log_path.read_text() for log_path in logs), timeout=60,
               message=f"both {role}s to start")
    # each serves its own stack's metrics, behind that stack's admin key
    secrets = [(stack / "data" / "admin.key").read_text().strip() for stack in stacks]
    for index, port in enumerate(ports):
        url = f"http://127.0.0.1:{port}/metrics"
        answer = httpx.get(url, headers={"Authorization": f"Bearer {secrets[index]}"}, timeout=10)
        assert answer.status_code == 200 and "python_info" in answer.text, answer.text
        other = httpx.get(url, headers={"Authorization": f"Bearer {secrets[1 - index]}"}, timeout=10)
        assert other.status_code in (401, 403) and "python_info" not in other.text
    assert all(process.poll() is None for process in processes)
