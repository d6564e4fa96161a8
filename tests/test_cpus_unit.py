"""sandbox.separate_cpu (runtime.executor.cpus): the gateway alone pins itself, every role's sandboxes leave its CPU.
Each case runs in a child interpreter, as pinning is the whole process's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.timeout(30),
              pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs or more")]

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = """
import json, os, sys
from runtime.config import Config
from runtime.executor import pin_server_cpu
from runtime.executor.cpus import sandbox_cpus
config = Config.model_validate({"sandbox": {"separate_cpu": sys.argv[1] == "on"}})
if sys.argv[2] == "gateway":
    pin_server_cpu(config)
cpus = sandbox_cpus(config)
print(json.dumps({"own": sorted(os.sched_getaffinity(0)), "sandboxes": None if cpus is None else sorted(cpus)}))
"""


def cpus_of(role: str, separate_cpu: str) -> dict[str, list[int] | None]:
    done = subprocess.run([sys.executable, "-c", SCRIPT, separate_cpu, role], capture_output=True, text=True,
                          cwd=ROOT, timeout=20, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    answer: dict[str, list[int] | None] = json.loads(done.stdout)
    return answer


def test_the_gateway_takes_the_highest_cpu_and_its_sandboxes_the_others() -> None:
    available = sorted(os.sched_getaffinity(0))
    assert cpus_of("gateway", "on") == {"own": [available[-1]], "sandboxes": available[:-1]}


def test_another_role_stays_unpinned_and_its_sandboxes_leave_the_gateways_cpu() -> None:
    available = sorted(os.sched_getaffinity(0))
    assert cpus_of("worker", "on") == {"own": available, "sandboxes": available[:-1]}


def test_without_separate_cpu_nothing_is_pinned() -> None:
    available = sorted(os.sched_getaffinity(0))
    assert cpus_of("gateway", "off") == {"own": available, "sandboxes": None}
