"""A function's requirements.txt, installed with pip into a folder of its own on each node.

The sandbox runs `python -I -S`, so it sees no site-packages: a version's packages live in
`deps_dir/<sha256 of requirements.txt>/` and go on its sys.path after the task root. Two
functions that pin different versions of one package get two folders; one requirements file
is installed once per node and shared by every version that uses it.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

OUTPUT_TAIL_BYTES = 4096   # enough for pip's resolver message without flooding the deployer
_HINT = "fix requirements.txt and deploy again"


class DepsError(Exception):
    """pip could not install the requirements; `.output` holds the tail of what it printed, for the deployer."""

    def __init__(self, message: str, *, output: str) -> None:
        super().__init__(message)
        self.output = output


def requirements_hash(text: bytes) -> str:
    """The cache key: the sha256 of the file's exact bytes (a reformatted file installs again, which is harmless)."""
    return hashlib.sha256(text).hexdigest()


def has_requirements(text: bytes) -> bool:
    """False for a file of only blank lines and comments: there is nothing to install."""
    for line in text.decode("utf-8", errors="replace").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            return True
    return False


def installed(requirements: bytes, *, deps_dir: Path) -> Path | None:
    """The folder for these requirements if this node has installed them, else None (also when there are none)."""
    if not has_requirements(requirements):
        return None
    folder = deps_dir / requirements_hash(requirements)
    return folder if folder.is_dir() else None


def install(requirements: bytes, *, deps_dir: Path, python: str | None = None, timeout_s: float = 600) -> Path | None:
    """Install the requirements into `deps_dir/<hash>/` unless already there; return the folder for sys.path.

    None when the file lists nothing. Safe across processes: one installs while the others wait on
    `deps_dir/<hash>.lock`, and the folder appears whole (pip works in a temporary folder that is
    renamed into place). `python` is the interpreter that will import the packages; it must have pip.
    Raises DepsError when pip fails or runs past `timeout_s`.
    """
    if not has_requirements(requirements):
        return None
    digest = requirements_hash(requirements)
    folder = deps_dir / digest
    if folder.is_dir():
        return folder
    deps_dir.mkdir(parents=True, exist_ok=True)
    with open(deps_dir / f"{digest}.lock", "a") as lock:
        # Each open() is its own lock, so this also serialises threads of one process.
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if folder.is_dir():   # another process installed it while we waited
                return folder
            _remove_leftovers(deps_dir, digest)
            staging = Path(tempfile.mkdtemp(prefix=f".{digest}.", dir=deps_dir))
            try:
                target = staging / "site"
                requirements_file = staging / "requirements.txt"
                requirements_file.write_bytes(requirements)
                _run_pip(python or sys.executable, target, requirements_file, timeout_s=timeout_s, digest=digest)
                target.mkdir(exist_ok=True)   # pip creates no folder when the file holds only options
                target.rename(folder)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return folder


def _remove_leftovers(deps_dir: Path, digest: str) -> None:
    """Delete temporary folders of a process that died installing these requirements (we hold their lock)."""
    for leftover in deps_dir.glob(f".{digest}.*"):
        shutil.rmtree(leftover, ignore_errors=True)


def _run_pip(python: str, target: Path, requirements_file: Path, *, timeout_s: float, digest: str) -> None:
    command = [python, "-m", "pip", "install", "--no-input", "--disable-pip-version-check",
               "--no-warn-script-location", "--target", str(target),
               # Relative, with the staging folder as cwd, so pip's messages say "line 2 of requirements.txt".
               "-r", requirements_file.name]
    started = time.monotonic()
    log.info("installing requirements", extra={"requirements_hash": digest, "python": python})
    # A session of its own, so that a timeout kills pip together with any build it started for an sdist.
    with subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          cwd=requirements_file.parent, start_new_session=True) as process:
        try:
            output, _ = process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            output = _drain(process)
            raise DepsError(f"pip did not finish within {timeout_s:g} s; {_HINT} (or pin versions that have wheels)",
                            output=_tail(output)) from None
        except BaseException:
            _kill_group(process)
            raise
    elapsed_s = time.monotonic() - started
    if process.returncode != 0:
        text = _tail(output)
        log.info("pip failed", extra={"requirements_hash": digest, "exit_code": process.returncode,
                                      "elapsed_s": round(elapsed_s, 3)})
        raise DepsError(f"{_summary(text, process.returncode)}; {_HINT}", output=text)
    log.info("installed requirements", extra={"requirements_hash": digest, "elapsed_s": round(elapsed_s, 3)})


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _drain(process: subprocess.Popen[bytes]) -> bytes:
    """What pip printed before it was killed; gives up if a child that left the group still holds the pipe."""
    try:
        output, _ = process.communicate(timeout=5)
        return output or b""
    except subprocess.TimeoutExpired:
        return b""


def _tail(output: bytes | None) -> str:
    data = output or b""
    if len(data) <= OUTPUT_TAIL_BYTES:
        return data.decode("utf-8", errors="replace")
    cut = data[-OUTPUT_TAIL_BYTES:]
    newline = cut.find(b"\n")   # start at a whole line when there is one
    return "...\n" + (cut[newline + 1:] if 0 <= newline < len(cut) - 1 else cut).decode("utf-8", errors="replace")


def _summary(output: str, exit_code: int) -> str:
    """pip's last ERROR line, which names what went wrong; the exit code when it printed none."""
    errors = [line.strip() for line in output.splitlines() if line.startswith("ERROR:")]
    return errors[-1].removeprefix("ERROR:").strip() if errors else f"pip exited with status {exit_code}"
