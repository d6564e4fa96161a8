"""requirements.txt installs: real pip against PyPI, checked the way the sandbox imports (`python -I -S`)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from runtime.functions.deps import DepsError, install, installed, requirements_hash

SIX_16 = b"six==1.16.0\n"
SIX_15 = b"# the old one\nsix==1.15.0\n"
MISSING_PYTHON = "/nonexistent/python3"   # any pip run with it fails: proves a call ran no pip


def sandbox_import_six(folder: Path) -> str:
    """six.__version__ as a sandbox sees it: isolated, no site-packages, only `folder` added to sys.path."""
    code = f"import sys; sys.path.insert(0, {str(folder)!r}); import six; print(six.__version__)"
    done = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def counting_python(tmp_path: Path, *, delay_s: float = 0) -> tuple[str, Path]:
    """An interpreter that records each run in a log, then is the real one: counts pip runs."""
    runs = tmp_path / "pip-runs.log"
    script = tmp_path / "counting-python"
    script.write_text(f'#!/bin/sh\necho run >> "{runs}"\nsleep {delay_s}\nexec "{sys.executable}" "$@"\n')
    script.chmod(0o755)
    return str(script), runs


def pip_runs(runs: Path) -> int:
    return len(runs.read_text().splitlines()) if runs.exists() else 0


def entries(deps_dir: Path) -> list[str]:
    """What an install left in deps_dir, lock files aside."""
    return sorted(p.name for p in deps_dir.iterdir() if not p.name.endswith(".lock"))


def test_two_functions_pinning_different_versions_each_import_their_own(tmp_path: Path) -> None:
    deps_dir = tmp_path / "deps"

    new = install(SIX_16, deps_dir=deps_dir)
    old = install(SIX_15, deps_dir=deps_dir)

    assert new is not None and old is not None
    assert new != old
    assert new == deps_dir / requirements_hash(SIX_16)
    assert sandbox_import_six(new) == "1.16.0"
    assert sandbox_import_six(old) == "1.15.0"
    assert entries(deps_dir) == sorted([new.name, old.name])


def test_second_install_of_same_requirements_is_a_cache_hit_without_pip(tmp_path: Path) -> None:
    deps_dir = tmp_path / "deps"
    assert installed(SIX_16, deps_dir=deps_dir) is None
    first = install(SIX_16, deps_dir=deps_dir)
    assert first is not None
    made = first.stat().st_mtime_ns

    started = time.monotonic()
    again = install(SIX_16, deps_dir=deps_dir, python=MISSING_PYTHON)

    assert again == first
    assert time.monotonic() - started < 0.5
    assert first.stat().st_mtime_ns == made
    assert installed(SIX_16, deps_dir=deps_dir) == first


def test_unknown_package_raises_deps_error_naming_it_and_leaves_no_folder(tmp_path: Path) -> None:
    deps_dir = tmp_path / "deps"
    requirements = b"this-package-does-not-exist-lambent==0.0.1\n"

    with pytest.raises(DepsError) as caught:
        install(requirements, deps_dir=deps_dir)

    assert "this-package-does-not-exist-lambent" in caught.value.output
    assert "this-package-does-not-exist-lambent" in str(caught.value)
    assert "fix requirements.txt" in str(caught.value)
    assert entries(deps_dir) == []
    assert installed(requirements, deps_dir=deps_dir) is None


def test_syntax_error_raises_deps_error_naming_the_line(tmp_path: Path) -> None:
    deps_dir = tmp_path / "deps"

    with pytest.raises(DepsError) as caught:
        install(b"six==1.16.0\nnot a valid line !!\n", deps_dir=deps_dir)

    assert "Invalid requirement" in str(caught.value)
    assert "line 2 of requirements.txt" in caught.value.output
    assert entries(deps_dir) == []


def test_requirements_of_only_comments_install_nothing(tmp_path: Path) -> None:
    deps_dir = tmp_path / "deps"
    requirements = b"# nothing yet\n\n   \n"

    assert install(requirements, deps_dir=deps_dir, python=MISSING_PYTHON) is None
    assert installed(requirements, deps_dir=deps_dir) is None
    assert not deps_dir.exists()


def test_concurrent_installs_in_two_processes_run_pip_once_and_share_the_folder(tmp_path: Path) -> None:
    deps_dir = tmp_path / "deps"
    python, runs = counting_python(tmp_path, delay_s=1)   # the delay keeps the two attempts overlapping
    code = ("import sys; from pathlib import Path; from runtime.functions.deps import install; "
            "print(install(sys.argv[1].encode(), deps_dir=Path(sys.argv[2]), python=sys.argv[3]))")
    argv = [sys.executable, "-c", code, SIX_16.decode(), str(deps_dir), python]

    workers = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [worker.communicate(timeout=100) for worker in workers]

    assert [worker.returncode for worker in workers] == [0, 0], [err for _, err in results]
    folder = deps_dir / requirements_hash(SIX_16)
    assert [out.strip() for out, _ in results] == [str(folder), str(folder)]
    assert pip_runs(runs) == 1
    assert entries(deps_dir) == [folder.name]
    assert sandbox_import_six(folder) == "1.16.0"


def test_concurrent_installs_in_threads_of_one_process_run_pip_once(tmp_path: Path) -> None:
    deps_dir = tmp_path / "deps"
    python, runs = counting_python(tmp_path, delay_s=1)

    with ThreadPoolExecutor(max_workers=3) as pool:
        folders = list(pool.map(lambda _: install(SIX_16, deps_dir=deps_dir, python=python), range(3)))

    assert folders == [deps_dir / requirements_hash(SIX_16)] * 3
    assert pip_runs(runs) == 1
    assert entries(deps_dir) == [requirements_hash(SIX_16)]


def test_pip_past_its_timeout_is_killed_with_its_children(tmp_path: Path) -> None:
    deps_dir = tmp_path / "deps"
    child_pid = tmp_path / "child.pid"
    hanging = tmp_path / "hanging-python"   # stands in for pip stuck building an sdist
    hanging.write_text(f'#!/bin/sh\necho building\nsleep 60 &\necho $! > "{child_pid}"\nwait\n')
    hanging.chmod(0o755)

    started = time.monotonic()
    with pytest.raises(DepsError) as caught:
        install(SIX_16, deps_dir=deps_dir, python=str(hanging), timeout_s=1)

    assert time.monotonic() - started < 10
    assert "did not finish within 1 s" in str(caught.value)
    assert "building" in caught.value.output
    assert entries(deps_dir) == []
    pid = int(child_pid.read_text())
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)


def test_leftovers_of_a_crashed_install_are_removed(tmp_path: Path) -> None:
    deps_dir = tmp_path / "deps"
    leftover = deps_dir / f".{requirements_hash(SIX_16)}.crashed"
    (leftover / "site").mkdir(parents=True)

    folder = install(SIX_16, deps_dir=deps_dir)

    assert folder is not None and sandbox_import_six(folder) == "1.16.0"
    assert not leftover.exists()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A killed child of the shell is reparented and reaped by init; until then it is a zombie.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False
