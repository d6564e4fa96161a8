"""README.md's shell blocks for the example functions `hello` and `todo` run as written against a started stack.

Each block is run by bash, in order, command by command, in a folder holding a copy of the repository's
`functions/`, with `lambent` on PATH as `make up` puts it there. The one liberty taken: the stack listens on a free
port, so `:8080` in the commands becomes that port (and `LAMBENT_URL` names it for the CLI). Every command must
exit 0 and answer no error; where README shows what a command prints (a `# {...}` line under it), the output must
be that JSON, `…` standing for any text and numbers for any number.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import orjson
import pytest

from .helpers import ROOT, Gateway, Role, clean_env, start_gateway, start_worker, wait_until

EXAMPLES = ("hello", "todo")
SEPARATOR = "\x1e-- lambent readme command done --"


@dataclass
class Command:
    text: str
    shows: str | None            # the JSON README prints under it, if any


def shell_blocks(readme: str) -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```", readme, flags=re.S | re.M)


def example_blocks() -> list[str]:
    """The blocks that talk to `hello` or `todo` through curl and lambent (the AWS CLI's, which need
    `pip install awscli` and a zip of one's own, are run by tests/test_lambda_api_writes.py)."""
    blocks = shell_blocks((ROOT / "README.md").read_text())
    return [block for block in blocks
            if re.search(r"\b(hello|todo)\b", block) and not re.search(r"^\s*(aws|make|docker|pip)\b", block, re.M)]


def commands(block: str) -> list[Command]:
    found: list[Command] = []
    pending = ""
    for line in block.splitlines():
        if pending:
            pending += "\n" + line
        elif line.lstrip().startswith("#"):
            if found and line.lstrip("# ").startswith("{"):
                found[-1].shows = line.lstrip("# ")
            continue
        elif line.strip():
            pending = line
        if pending and not pending.endswith("\\"):
            found.append(Command(text=pending, shows=None))
            pending = ""
    return found


def matches(shown: Any, got: Any) -> bool:
    """`got` is what README shows: the same keys, strings equal or matching around `…`, any number for a number."""
    if isinstance(shown, dict):
        return isinstance(got, dict) and shown.keys() == got.keys() and all(matches(shown[k], got[k]) for k in shown)
    if isinstance(shown, bool) or shown is None:
        return shown == got
    if isinstance(shown, (int, float)):
        return isinstance(got, (int, float)) and not isinstance(got, bool)
    if isinstance(shown, str) and "…" in shown:
        pattern = ".*".join(re.escape(part) for part in shown.split("…"))
        return isinstance(got, str) and re.fullmatch(pattern, got, flags=re.S) is not None
    return bool(shown == got)


@dataclass
class Stack:
    gateway: Gateway
    worker: Role
    folder: Path
    path: str                    # PATH: the launcher scripts/link-cli.sh wrote, then the system's (no .venv/bin)

    def run(self, block: str) -> list[tuple[Command, str]]:
        """Every command of `block` in one bash (so a variable set by one is seen by the next), in `folder`."""
        port = self.gateway.url.rsplit(":", 1)[1]
        listed = commands(block)
        script = "set -euo pipefail\n" + "".join(
            f"{command.text.replace(':8080', f':{port}')}\necho; echo '{SEPARATOR}'\n" for command in listed)
        env = clean_env({**self.gateway.cli_env(), "LAMBENT_URL": self.gateway.url, "PATH": self.path})
        result = subprocess.run(["bash", "-c", script], cwd=self.folder, env=env, capture_output=True, text=True,
                                timeout=300)
        outputs = result.stdout.split(SEPARATOR + "\n")
        assert result.returncode == 0, (f"README command {len(outputs)} of {len(listed)} failed "
                                        f"(exit {result.returncode}):\n{block}\nstdout:\n{result.stdout}\n"
                                        f"stderr:\n{result.stderr}")
        return [(command, output.strip()) for command, output in zip(listed, outputs)]


def system_path() -> list[str]:
    """PATH without this virtualenv's bin, as a new shell has it."""
    venv_bin = str(Path(sys.executable).parent)
    return [entry for entry in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep) if entry != venv_bin]


def link_cli(bin_dir: Path) -> Path:
    """What `make up` does to put `lambent` on PATH, into `bin_dir` (LAMBENT_BIN_DIR)."""
    subprocess.run([str(ROOT / "scripts" / "link-cli.sh")], env={**os.environ, "LAMBENT_BIN_DIR": str(bin_dir)},
                   check=True, capture_output=True, timeout=60)
    return bin_dir


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_base_url: str) -> Iterator[Stack]:
    from .helpers import fresh_redis_url

    folder = tmp_path_factory.mktemp("readme")
    path = os.pathsep.join([str(link_cli(folder / "bin")), *system_path()])
    shutil.copytree(ROOT / "functions", folder / "functions",
                    ignore=shutil.ignore_patterns("__pycache__"))
    gateway = start_gateway(folder / "node", fresh_redis_url(redis_base_url), functions_dir=folder / "functions")
    worker = start_worker(gateway)
    try:
        for name in EXAMPLES:
            wait_until(lambda: gateway.request("GET", f"/functions/{name}", timeout=5).status_code == 200,
                       timeout=60, interval=0.2, message=f"{name} deployed at start-up")
        yield Stack(gateway=gateway, worker=worker, folder=folder, path=path)
    finally:
        worker.stop()
        gateway.stop()


def test_readme_has_example_blocks() -> None:
    blocks = example_blocks()
    assert len(blocks) >= 4, blocks
    assert any("/functions/hello/invoke" in block for block in blocks)
    assert any("todo.lambda-url.localhost" in block for block in blocks)
    assert any("lambent deploy" in block for block in blocks) and any("lambent dlq" in block for block in blocks)


@pytest.mark.parametrize("index", range(len(example_blocks())))
def test_readme_block_runs_as_written(stack: Stack, index: int) -> None:
    block = example_blocks()[index]
    # A block may delete `hello` (the Deploying one does): each starts from the folder's hello deployed again.
    stack.run("lambent deploy functions/hello\n")
    for command, output in stack.run(block):
        if command.shows is not None:
            assert matches(orjson.loads(command.shows), orjson.loads(output)), (command.text, output)
        if output.startswith("{"):
            answer = orjson.loads(output)
            assert not {"errorType", "error"} & answer.keys(), (command.text, output)


def test_make_up_puts_lambent_on_path(tmp_path: Path) -> None:
    bin_dir = link_cli(tmp_path / "bin")
    env = {**os.environ, "PATH": os.pathsep.join([str(bin_dir), *system_path()])}
    found = subprocess.run(["bash", "-c", "command -v lambent && lambent --version"], env=env, capture_output=True,
                           text=True, timeout=60)
    lines = found.stdout.splitlines()
    assert found.returncode == 0 and lines[0] == str(bin_dir / "lambent") and lines[1].startswith("lambent, version")


def test_link_cli_leaves_a_foreign_lambent_alone(tmp_path: Path) -> None:
    (tmp_path / "lambent").write_text("#!/bin/sh\necho mine\n")
    result = subprocess.run([str(ROOT / "scripts" / "link-cli.sh")], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "LAMBENT_BIN_DIR": str(tmp_path)})
    assert result.returncode == 0 and "is not Lambent's launcher: left as it is" in result.stderr
    assert (tmp_path / "lambent").read_text() == "#!/bin/sh\necho mine\n"
