"""Remote deploys: the CLI to a running server, versions and aliases, bad zips refused, dependencies."""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path
from typing import Iterator

import httpx
import redis
import pytest

from .helpers import Gateway, start_gateway, wait_until
from .test_cli import lambent

GREETER = "def handler(event, context):\n    return {{'says': '{word}', 'version': context.function_version}}\n"


@pytest.fixture
def server(tmp_path: Path, redis_url: str) -> Iterator[Gateway]:
    empty = tmp_path / "none"
    empty.mkdir()
    gateway = start_gateway(tmp_path / "server", redis_url, functions_dir=empty)
    yield gateway
    gateway.stop()


def folder(tmp_path: Path, name: str, word: str, extra: dict[str, str] | None = None) -> Path:
    target = tmp_path / "src" / name
    target.mkdir(parents=True, exist_ok=True)
    (target / "handler.py").write_text(GREETER.format(word=word))
    for relative, content in (extra or {}).items():
        (target / relative).write_text(content)
    return target


def zipped(entries: dict[str, bytes], *, links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return buffer.getvalue()


def put_code(server: Gateway, name: str, body: bytes) -> httpx.Response:
    return server.request("PUT", f"/functions/{name}/code", content=body, timeout=120,
                          headers={"Content-Type": "application/zip"})


def test_cli_deploy_makes_a_version_that_is_invoked_at_once(server: Gateway, tmp_path: Path) -> None:
    source = folder(tmp_path, "greeter", "hello")
    done = lambent("deploy", str(source), "--url", server.url, env=server.cli_env())
    assert done.returncode == 0, done.stderr
    assert "deployed greeter: new version 1" in done.stdout
    assert "packed" in done.stderr and "100%" in done.stderr           # progress is shown
    assert server.invoke("greeter", {}).json() == {"says": "hello", "version": "$LATEST"}
    again = lambent("deploy", str(source), "--url", server.url, env=server.cli_env())
    assert "unchanged: same content as version 1" in again.stdout


def test_aliases_roll_forward_and_back_and_answers_say_which_version_ran(server: Gateway, tmp_path: Path) -> None:
    assert lambent("deploy", str(folder(tmp_path, "greeter", "one")), "--alias", "prod", "--url",
                   server.url, env=server.cli_env()).returncode == 0
    assert lambent("deploy", str(folder(tmp_path, "greeter", "two")), "--url", server.url,
                   env=server.cli_env()).returncode == 0
    response = server.invoke("greeter:prod", {})
    assert response.json() == {"says": "one", "version": "1"} and response.headers["x-executed-version"] == "1"
    assert server.invoke("greeter", {}).json()["says"] == "two"                 # $LATEST is version 2
    assert lambent("alias", "greeter", "prod", "2", "--url", server.url, env=server.cli_env()).returncode == 0  # fwd
    assert server.invoke("greeter:prod", {}).json() == {"says": "two", "version": "2"}
    assert lambent("alias", "greeter", "prod", "1", "--url", server.url, env=server.cli_env()).returncode == 0  # back
    assert server.invoke("greeter:prod", {}).json() == {"says": "one", "version": "1"}
    missing = lambent("alias", "greeter", "prod", "9", "--url", server.url, env=server.cli_env())
    assert missing.returncode == 1 and "no such version" in missing.stderr
    with server.client() as client:
        assert client.get("/functions/greeter/aliases").json()["aliases"] == {"prod": 1}


def test_a_second_gateway_sees_the_deploy(server: Gateway, tmp_path: Path) -> None:
    empty = tmp_path / "none2"
    empty.mkdir()
    other = start_gateway(tmp_path / "other", server.redis_url, functions_dir=empty)
    try:
        assert put_code(other, "greeter", zipped({"handler.py": GREETER.format(word="everywhere").encode()})
                        ).status_code == 201
        response = wait_until(lambda: (r := server.invoke("greeter", {})).status_code == 200 and r, timeout=10,
                              message="the first gateway to serve the new function")
        assert response.json()["says"] == "everywhere"
        put_code(other, "greeter", zipped({"handler.py": GREETER.format(word="updated").encode()}))
        wait_until(lambda: server.invoke("greeter", {}).json()["says"] == "updated", timeout=10,
                   message="the first gateway to run version 2")
    finally:
        other.stop()


@pytest.mark.parametrize("entries, links, expected", [
    ({"handler.py": b"x", "../evil.py": b"x"}, None, "escape"),
    ({"handler.py": b"x", "/etc/evil.py": b"x"}, None, "absolute"),
    ({"handler.py": b"x"}, {"link.py": "/etc/passwd"}, "symbolic link"),
    ({"other.py": b"x"}, None, "no file handler.py"),
    ({"handler.py": b"x", "function.yaml": b"timeout: -3\n"}, None, "timeout"),
    ({"handler.py": b"x", "function.yaml": b"colour: blue\n"}, None, "unknown key"),
    ({"handler.py": b"x", "function.yaml": b"a: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]\n"}, None, "YAML aliases"),
    ({"handler.py": b"x", "function.yaml": b"# x\n" * 20000}, None, "larger than 65536 bytes"),
], ids=["zip-slip", "absolute", "symlink", "no-handler", "bad-yaml-value", "unknown-key", "yaml-alias",
        "yaml-size"])
def test_bad_zips_are_refused_and_change_nothing(server: Gateway, entries: dict[str, bytes],
                                                 links: dict[str, str] | None, expected: str) -> None:
    store = redis.Redis.from_url(server.redis_url)
    before = {key: store.dump(key) for key in store.keys("*") if b":stats:" not in key}
    response = put_code(server, "victim", zipped(entries, links=links))
    assert response.status_code == 400
    assert response.json()["error"] == "InvalidCode" and expected in response.json()["message"]
    assert server.request("GET", "/functions/victim", timeout=5).status_code == 404
    # a refused deploy stores nothing: no catalog entry, no code blob, no version
    assert {key: store.dump(key) for key in store.keys("*") if b":stats:" not in key} == before
    store.close()


def test_a_zip_bomb_and_an_oversized_zip_are_refused(tmp_path: Path, redis_url: str) -> None:
    empty = tmp_path / "none"
    empty.mkdir()
    small = start_gateway(tmp_path / "small", redis_url, functions_dir=empty,
                          config={"deploy": {"zipped_limit_bytes": 64 * 1024, "unzipped_limit_bytes": 1024 * 1024}})
    try:
        bomb = zipped({"handler.py": b"def handler(e, c): return 1\n", "zeros.bin": b"\0" * (8 * 1024 * 1024)})
        assert len(bomb) < 64 * 1024                                   # small on the wire, 8 MiB unpacked
        refused = put_code(small, "bomb", bomb)
        assert refused.status_code == 400 and "unpacks to more than" in refused.json()["message"]
        big = zipped({"handler.py": b"x", "noise.bin": bytes(range(256)) * 1024})
        too_big = put_code(small, "big", big + b"\0" * (70 * 1024))
        assert too_big.status_code == 413
        assert "not a zip" in put_code(small, "junk", b"this is not a zip").json()["message"]
        assert small.request("GET", "/functions", timeout=5).json()["functions"] == []
    finally:
        small.stop()


def test_a_handler_that_does_not_import_is_refused_with_its_error(server: Gateway, tmp_path: Path) -> None:
    source = folder(tmp_path, "broken", "x")
    (source / "handler.py").write_text("import not_installed_anywhere\n\ndef handler(e, c):\n    return 1\n")
    done = lambent("deploy", str(source), "--url", server.url, env=server.cli_env())
    assert done.returncode == 1
    assert "Runtime.ImportModuleError" in done.stderr and "not_installed_anywhere" in done.stderr
    assert "Traceback" not in done.stderr.split("error:")[-1]
    assert server.request("GET", "/functions/broken", timeout=5).status_code == 404
    # A later good deploy of a function whose newest version works is not replaced by a broken one.
    good = folder(tmp_path, "steady", "fine")
    assert lambent("deploy", str(good), "--url", server.url, env=server.cli_env()).returncode == 0
    (good / "handler.py").write_text("def handler_renamed(e, c):\n    return 1\n")
    refused = put_code(server, "steady", zipped({"handler.py": (good / "handler.py").read_bytes()}))
    assert refused.status_code == 400 and refused.json()["errorType"] == "Runtime.HandlerNotFound"
    assert server.invoke("steady", {}).json()["says"] == "fine"
    with server.client() as client:
        assert client.get("/functions/steady").json()["version"] == 1


def test_two_functions_with_conflicting_dependency_versions_both_work(server: Gateway, tmp_path: Path) -> None:
    handler = "import six\n\ndef handler(event, context):\n    return six.__version__\n"
    for name, pin in (("old_six", "six==1.15.0"), ("new_six", "six==1.16.0")):
        source = tmp_path / "src" / name
        source.mkdir(parents=True)
        (source / "handler.py").write_text(handler)
        (source / "requirements.txt").write_text(pin + "\n")
        done = lambent("deploy", str(source), "--url", server.url, timeout=300, env=server.cli_env())
        assert done.returncode == 0, done.stderr
    assert server.invoke("old_six", {}).json() == "1.15.0"
    assert server.invoke("new_six", {}).json() == "1.16.0"


def test_a_requirement_that_cannot_be_installed_refuses_the_deploy_with_pips_message(
        server: Gateway, tmp_path: Path) -> None:
    source = folder(tmp_path, "needy", "x", {"requirements.txt": "lambent-no-such-package-anywhere==9.9.9\n"})
    done = lambent("deploy", str(source), "--url", server.url, timeout=300, env=server.cli_env())
    assert done.returncode == 1
    assert "lambent-no-such-package-anywhere" in done.stderr and "requirements.txt" in done.stderr
    assert server.request("GET", "/functions/needy", timeout=5).status_code == 404


def test_lambentignore_leaves_files_out(server: Gateway, tmp_path: Path) -> None:
    source = folder(tmp_path, "tidy", "x", {".lambentignore": "secrets.txt\n", "secrets.txt": "hunter2"})
    (source / "handler.py").write_text(
        "import os\n\ndef handler(event, context):\n    return sorted(os.listdir('.'))\n")
    assert lambent("deploy", str(source), "--url", server.url, env=server.cli_env()).returncode == 0
    assert server.invoke("tidy", {}).json() == ["handler.py"]


def test_delete_removes_the_function(server: Gateway, tmp_path: Path) -> None:
    assert lambent("deploy", str(folder(tmp_path, "doomed", "bye")), "--url", server.url,
                   env=server.cli_env()).returncode == 0
    assert lambent("delete", "doomed", "--yes", "--url", server.url, env=server.cli_env()).returncode == 0
    assert server.invoke("doomed", {}).status_code == 404
    gone = lambent("delete", "doomed", "--yes", "--url", server.url, env=server.cli_env())
    assert gone.returncode == 1 and "404" in gone.stderr
