"""Attacks from inside a deployed function, each of which the jail must refuse, and what a function may do.

Every test invokes a real function through a real gateway, jailed as `sandbox.isolation: auto` jails on this
host, and asserts both that the attack failed and that the platform and the other functions are unharmed.
The `probe` functions run the Python given in the event (`result` is what they return), so each attack reads
as the code an attacker would deploy.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any, Iterator, cast

import httpx
import pytest
import redis
import yaml

from .helpers import ROOT, Gateway, fresh_redis_url, start_gateway, wait_until

PROBE = '''
def handler(event, context):
    scope = {"event": event, "context": context}
    exec(event["code"], scope)
    return scope.get("result")
'''
FUNCTIONS: dict[str, dict[str, Any]] = {
    "probe": {"timeout": 10, "memory_mb": 256, "environment": {"PROBE_SECRET": "probe-only"}},
    "victim": {"timeout": 10, "environment": {"VICTIM_SECRET": "victim-only"}},
    "nonet": {"timeout": 10, "network": "none"},
    "smallmem": {"timeout": 20, "memory_mb": 128},
    "bigtmp": {"timeout": 60, "memory_mb": 1024, "ephemeral_storage_mb": 512},
    "withdeps": {"timeout": 10},
}
SERVER_ENV = {"AWS_SECRET_ACCESS_KEY": "server-secret", "DB_PASSWORD": "hunter2"}


def write_functions(folder: Path) -> Path:
    for name, spec in FUNCTIONS.items():
        (folder / name).mkdir(parents=True)
        (folder / name / "handler.py").write_text(PROBE)
        (folder / name / "function.yaml").write_text(yaml.safe_dump(spec))
    (folder / "withdeps" / "requirements.txt").write_text("six==1.16.0\n")
    return folder


@pytest.fixture(scope="module")
def jailed(tmp_path_factory: pytest.TempPathFactory, redis_base_url: str) -> Iterator[Gateway]:
    workdir = tmp_path_factory.mktemp("jailed")
    gateway = start_gateway(workdir, fresh_redis_url(redis_base_url), functions_dir=write_functions(workdir / "fn"),
                            config={"sandbox": {"isolation": "jail"}}, env=SERVER_ENV)
    yield gateway
    gateway.stop()


def run(gateway: Gateway, code: str, *, function: str = "probe", **values: Any) -> httpx.Response:
    return gateway.invoke(function, {"code": textwrap.dedent(code), **values})


def result(gateway: Gateway, code: str, *, function: str = "probe", **values: Any) -> Any:
    response = run(gateway, code, function=function, **values)
    assert response.status_code == 200, response.text
    return response.json()


def assert_unharmed(gateway: Gateway) -> None:
    """The gateway answers, and another function still runs its own code with its own environment."""
    assert gateway.request("GET", "/healthz", timeout=5).status_code == 200
    assert result(gateway, "import os; result = os.environ.get('VICTIM_SECRET')", function="victim") == "victim-only"


def host_processes_with(marker: str) -> list[int]:
    """PIDs on the host whose command line holds `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


# -- the server's secrets --------------------------------------------------------------------------------

def test_the_servers_environment_cannot_be_read_through_proc(jailed: Gateway) -> None:
    code = """
    import os
    seen, errors = [], {}
    for pid in [event["gateway_pid"], 1] + [int(p) for p in os.listdir("/proc") if p.isdigit()]:
        try:
            seen.append(open(f"/proc/{pid}/environ", "rb").read().decode(errors="replace"))
        except OSError as exc:
            errors[str(pid)] = type(exc).__name__
    result = {"seen": seen, "errors": errors, "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit())}
    """
    answer = result(jailed, code, gateway_pid=jailed.process.pid)
    assert not any("hunter2" in text or "server-secret" in text for text in answer["seen"])
    assert answer["errors"][str(jailed.process.pid)] == "FileNotFoundError"      # not in its PID namespace
    assert answer["errors"]["1"] == "PermissionError"                             # the jail's init is not its own
    assert max(answer["pids"]) < 10                                               # it sees only its own processes
    assert_unharmed(jailed)


def test_the_environment_holds_only_the_functions_own_variables(jailed: Gateway) -> None:
    env = result(jailed, "import os; result = dict(os.environ)")
    assert env["PROBE_SECRET"] == "probe-only"
    assert not {"DB_PASSWORD", "AWS_SECRET_ACCESS_KEY", "VICTIM_SECRET", "LAMBENT_CONFIG"} & env.keys()
    assert env["LAMBDA_TASK_ROOT"] == "/var/task" and env["LAMBDA_RUNTIME_DIR"] == "/var/runtime"


def test_the_data_dir_other_functions_and_the_servers_code_are_not_there(jailed: Gateway) -> None:
    code = """
    import os
    result = {path: os.path.exists(path) for path in event["paths"]}
    result["/"] = sorted(os.listdir("/"))
    """
    paths = [str(jailed.data_dir), str(jailed.data_dir / "code"), str(ROOT / "runtime"), str(ROOT / ".venv"),
             str(Path.home()), "/root", "/home", "/work", str(jailed.log_path)]
    answer = result(jailed, code, paths=paths)
    assert set(answer.pop("/")) <= {"bin", "dev", "etc", "lib", "lib32", "lib64", "libx32", "opt", "proc", "sbin",
                                    "tmp", "usr", "var"}
    assert answer == {path: False for path in paths}


def test_the_platforms_redis_refuses_a_function_that_finds_it(jailed: Gateway) -> None:
    # given another function's records as they are, and an attacker that knows Redis's address but not its password
    catalog = redis.Redis.from_url(jailed.redis_url)

    def victims_records() -> dict[bytes, bytes | None]:
        # (a client without decode_responses answers bytes; redis-py's annotations say bytes | str)
        keys = cast(list[bytes], catalog.keys("lambent:fn:victim:*"))
        return {key: catalog.dump(key) for key in sorted(keys)
                if b":stats:" not in key and not key.endswith(b":logs")}

    before = victims_records()
    assert before
    port = int(jailed.redis_url.rsplit(":", 1)[1].split("/")[0])
    code = """
    import socket
    answers = []
    for command in (b"PING", b"FLUSHALL", b"CONFIG SET requirepass mine", b"DEL lambent:fn:victim:dlq"):
        with socket.create_connection(("127.0.0.1", event["port"]), timeout=5) as conn:
            conn.sendall(command + b"\\r\\n")
            answers.append(conn.recv(200).decode())
    result = answers
    """
    # when it sends commands straight to Redis
    answers = result(jailed, code, port=port)
    # then each is refused for want of the password, and nothing changed
    assert all(answer.startswith("-NOAUTH") for answer in answers), answers
    assert victims_records() == before
    assert catalog.config_get("requirepass")["requirepass"] not in ("", "mine")
    catalog.close()
    assert_unharmed(jailed)


def test_a_function_that_calls_the_gateways_admin_api_over_loopback_is_anonymous(jailed: Gateway) -> None:
    # given a gateway with no admin key configured, which generated one into its data dir
    code = """
    import json, urllib.error, urllib.request
    answers = {}
    for method, path in (("DELETE", "/functions/victim"), ("PUT", "/functions/victim/code"),
                         ("DELETE", "/functions/victim/dlq"), ("GET", "/functions/victim")):
        request = urllib.request.Request(event["url"] + path, data=b"PK" if method == "PUT" else None, method=method)
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                answers[f"{method} {path}"] = [answer.status, None]
        except urllib.error.HTTPError as exc:
            answers[f"{method} {path}"] = [exc.code, json.loads(exc.read())["error"]]
    try:
        key = open(event["key"]).read()
    except OSError as exc:
        key = type(exc).__name__
    result = {"answers": answers, "key": key}
    """
    # when a jailed function calls the admin API over the host's loopback, and looks for the key
    answer = result(jailed, code, url=jailed.url, key=str(jailed.data_dir / "admin.key"))
    answers = answer["answers"]
    # then each call is refused as anonymous, the key is out of its sight, and the victim is untouched
    assert all(answer == [401, "MissingAuthenticationTokenException"] for answer in answers.values()), answers
    assert answer["key"] == "FileNotFoundError"
    assert_unharmed(jailed)
    with jailed.client() as client:             # the operator holds the generated key
        assert client.get("/functions/victim/dlq").status_code == 200


# -- other functions and the server's files --------------------------------------------------------------

def test_code_dependencies_and_runtime_are_read_only(jailed: Gateway) -> None:
    code = """
    import errno
    result = {}
    for path in ("/var/task/handler.py", "/var/task/new.py", "/opt/python/x.py", "/var/runtime/bootstrap.py",
                 "/var/runtime/boto3/__init__.py", "/var/lang/bin/python3", "/usr/bin/x", "/etc/passwd"):
        try:
            open(path, "a").write("pwned = True\\n")
            result[path] = "written"
        except OSError as exc:
            result[path] = errno.errorcode[exc.errno]
    """
    answer = result(jailed, code)
    assert all(outcome in ("EROFS", "EACCES", "ENOENT") for outcome in answer.values()), answer
    assert result(jailed, "result = 'still mine'", function="victim") == "still mine"
    assert "pwned" not in (ROOT / "runtime" / "sandbox" / "bootstrap.py").read_text()


def test_stack_traces_show_var_task_as_on_lambda(jailed: Gateway) -> None:
    response = run(jailed, "raise ValueError('boom')")
    assert response.status_code == 500
    assert any('File "/var/task/handler.py"' in frame for frame in response.json()["stackTrace"])


def test_a_function_runs_as_an_unprivileged_user_without_capabilities(jailed: Gateway) -> None:
    code = """
    import os
    status = dict(line.split(":\\t", 1) for line in open("/proc/self/status").read().splitlines() if ":\\t" in line)
    result = {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(),
              "caps": [status[k].strip() for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")],
              "nnp": status["NoNewPrivs"].strip(), "seccomp": status["Seccomp"].strip()}
    """
    answer = result(jailed, code)
    assert (answer["uid"], answer["gid"], answer["groups"]) == (993, 990, [])
    assert answer["caps"] == ["0000000000000000"] * 5
    assert (answer["nnp"], answer["seccomp"]) == ("1", "2")


def test_the_seccomp_filter_refuses_namespaces_mounts_and_ptrace(jailed: Gateway) -> None:
    code = """
    import ctypes, os, subprocess
    libc = ctypes.CDLL(None, use_errno=True)
    def call(name, *args):
        code = getattr(libc, name)(*args)
        return os.strerror(ctypes.get_errno()) if code == -1 else "allowed"
    child = subprocess.Popen(["sleep", "5"])
    result = {
        "ptrace": call("ptrace", 16, child.pid, 0, 0),                  # PTRACE_ATTACH to its own child
        "unshare": call("unshare", 0x10000000),                         # CLONE_NEWUSER
        "mount": call("mount", b"none", b"/tmp", b"tmpfs", 0, None),
        "keyctl": call("syscall", 250, 0, 0, 0),                        # keyctl on x86_64
        "bpf": call("syscall", 321, 0, 0, 0),
    }
    child.kill()
    """
    if os.uname().machine != "x86_64":
        pytest.skip("the raw syscall numbers in this test are x86_64's")
    answer = result(jailed, code)
    assert answer == {name: "Operation not permitted" for name in answer}, answer


def test_a_function_cannot_signal_the_gateway_or_any_host_process(jailed: Gateway) -> None:
    code = """
    import os
    result = {}
    for pid in (event["gateway_pid"], event["test_pid"]):
        try:
            os.kill(pid, 9)
            result[str(pid)] = "killed"
        except OSError as exc:
            result[str(pid)] = type(exc).__name__
    try:
        os.kill(1, 9)
        result["1"] = "killed"
    except OSError as exc:
        result["1"] = type(exc).__name__
    """
    answer = result(jailed, code, gateway_pid=jailed.process.pid, test_pid=os.getpid())
    assert answer == {str(jailed.process.pid): "ProcessLookupError", str(os.getpid()): "ProcessLookupError",
                      "1": "PermissionError"}
    # kill(-1): every process it may signal but itself, which is nothing outside its own sandbox
    assert result(jailed, "import os; os.kill(-1, 9); result = 'alive'") == "alive"
    assert jailed.process.poll() is None
    assert_unharmed(jailed)


# -- processes that try to outlive or outgrow their sandbox ------------------------------------------------

def test_a_setsid_double_fork_dies_with_its_sandbox_at_the_timeout(jailed: Gateway) -> None:
    marker = f"3{uuid.uuid4().int % 10**8}.5"
    code = """
    import os, time
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.execvp("sleep", ["sleep", event["marker"]])
        os._exit(0)
    time.sleep(60)      # past the timeout: the sandbox is killed
    """
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(run, jailed, code, marker=marker)
        wait_until(lambda: host_processes_with(marker), message="the escaped child to start")
        response = pending.result()
    assert response.status_code == 504
    wait_until(lambda: not host_processes_with(marker), timeout=10, message="the escaped child to be gone")
    assert_unharmed(jailed)


def test_a_fork_bomb_stops_at_the_sandboxs_pids_limit(jailed: Gateway) -> None:
    code = """
    import os, time
    children, error = [], None
    for _ in range(10000):
        try:
            pid = os.fork()
        except OSError as exc:
            error = type(exc).__name__
            break
        if pid == 0:
            time.sleep(3)
            os._exit(0)
        children.append(pid)
    result = {"children": len(children), "error": error}
    for pid in children:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    """
    answer = result(jailed, code, function="bigtmp")       # memory enough for 1,024 processes
    assert answer["error"] == "BlockingIOError" and answer["children"] < 1024, answer
    assert_unharmed(jailed)
    assert subprocess.run(["true"]).returncode == 0          # the host can still fork


def test_memory_through_four_children_ends_the_invocation_with_out_of_memory(jailed: Gateway) -> None:
    code = """
    import subprocess, sys
    hog = "import time; block = b'x' * (60 << 20); time.sleep(15)"
    children = [subprocess.Popen([sys.executable, "-c", hog]) for _ in range(4)]
    result = [child.wait() for child in children]
    """
    response = run(jailed, code, function="smallmem")          # memory_mb: 128, four children of 60 MB
    assert response.status_code == 500, response.text
    assert response.json()["errorType"] == "Runtime.OutOfMemory"
    assert result(jailed, "result = 'fine'", function="smallmem") == "fine"     # the next sandbox is healthy
    assert_unharmed(jailed)


def test_writing_tmp_past_ephemeral_storage_is_enospc_inside_and_nothing_outside(jailed: Gateway) -> None:
    code = """
    import errno
    written, chunk = 0, b"x" * (1 << 20)
    try:
        with open("/tmp/fill", "wb") as sink:
            for _ in range(700):
                sink.write(chunk)
                sink.flush()
                written += 1
    except OSError as exc:
        result = {"error": errno.errorcode[exc.errno], "mb": written}
    else:
        result = {"error": None, "mb": written}
    """
    host_tmp_before = os.statvfs("/tmp")
    answer = result(jailed, code, function="bigtmp")           # ephemeral_storage_mb: 512
    assert answer["error"] == "ENOSPC" and 500 <= answer["mb"] <= 512, answer
    host_tmp_after = os.statvfs("/tmp")
    grown = (host_tmp_before.f_bavail - host_tmp_after.f_bavail) * host_tmp_after.f_frsize
    assert grown < 100 * 1024 * 1024                          # nothing of it landed on the host's disk
    assert_unharmed(jailed)


def test_the_kill_of_a_gateway_takes_its_sandboxes_with_it(tmp_path: Path, redis_url: str) -> None:
    gateway = start_gateway(tmp_path, redis_url, functions_dir=write_functions(tmp_path / "fn"),
                            config={"sandbox": {"isolation": "jail"}})
    marker = f"4{uuid.uuid4().int % 10**8}.5"
    code = """
    import os, subprocess, time
    subprocess.Popen(["setsid", "sleep", event["marker"]])
    time.sleep(8)
    """
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(run, gateway, code, marker=marker)
            wait_until(lambda: host_processes_with(marker), message="the function's child to start")
            gateway.process.send_signal(signal.SIGKILL)          # with an invocation in flight
            gateway.process.wait()
    finally:
        gateway.stop()
    wait_until(lambda: not host_processes_with(marker), timeout=10,
               message="every process of the killed gateway's sandboxes to be gone")


# -- what a function may do ------------------------------------------------------------------------------

def test_tmp_persists_across_warm_invocations_and_no_other_function_sees_it(jailed: Gateway) -> None:
    token = uuid.uuid4().hex
    write = "import os; open('/tmp/mine', 'w').write(event['token']); result = os.getpid()"
    read = "import os; result = [open('/tmp/mine').read() if os.path.exists('/tmp/mine') else None, os.getpid()]"
    pid = result(jailed, write, token=token)
    assert result(jailed, read) == [token, pid]                 # the same warm sandbox keeps its /tmp
    assert result(jailed, read, function="victim")[0] is None   # another function has a /tmp of its own
    assert not Path("/tmp/mine").exists() or Path("/tmp/mine").read_text() != token   # and the host's is untouched


def test_boto3_is_importable_from_the_runtime_in_a_function_that_ships_nothing(jailed: Gateway) -> None:
    code = "import boto3, botocore; result = [boto3.__file__, botocore.__file__, boto3.client('s3').meta.region_name]"
    boto3_file, botocore_file, region = result(jailed, code)
    assert boto3_file.startswith("/var/runtime/boto3/") and botocore_file.startswith("/var/runtime/botocore/")
    assert region == "us-east-1"


def test_requirements_are_imported_from_opt_python_before_the_runtimes_copy(jailed: Gateway) -> None:
    # its deploy at start-up installs six with pip: it may still be under way
    wait_until(lambda: jailed.request("GET", "/functions/withdeps", timeout=5).status_code == 200, timeout=120,
               interval=0.2, message="withdeps to be deployed")
    answer = result(jailed, "import six, sys; result = [six.__file__, six.__version__, sys.path[:3]]",
                    function="withdeps")
    assert answer[0].startswith("/opt/python/") and answer[1] == "1.16.0"
    assert answer[2] == ["/var/task", "/opt/python", "/var/runtime"]


def test_network_none_has_no_network_and_default_reaches_the_host(jailed: Gateway) -> None:
    port = int(jailed.url.rsplit(":", 1)[1])
    code = """
    import os, socket
    try:
        socket.create_connection(("127.0.0.1", event["port"]), timeout=3).close()
        reached = True
    except OSError as exc:
        reached = type(exc).__name__
    if os.path.isdir("/sys/class/net"):
        interfaces = sorted(os.listdir("/sys/class/net"))
    else:
        interfaces = [line.split(":")[0].strip() for line in open("/proc/net/dev").read().splitlines()[2:]]
    result = {"reached": reached, "interfaces": interfaces}
    """
    closed = result(jailed, code, function="nonet", port=port)
    assert closed["reached"] == "ConnectionRefusedError" and closed["interfaces"] == ["lo"]
    assert result(jailed, code, port=port)["reached"] is True


def test_healthz_names_the_isolation_in_force(jailed: Gateway) -> None:
    health = jailed.request("GET", "/healthz", timeout=5).json()
    assert health["isolation"]["mode"] == "jail" and health["isolation"]["cgroups"] in (1, 2)


def test_isolation_jail_refuses_to_start_where_the_host_cannot_jail(tmp_path: Path, redis_url: str) -> None:
    # given a host where bubblewrap cannot be found (an empty PATH for the server)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"redis_url": redis_url, "data_dir": str(tmp_path / "data"),
                                      "functions_dir": str(tmp_path), "sandbox": {"isolation": "jail"}}))
    env = {"LAMBENT_CONFIG": str(config), "PATH": str(tmp_path / "nothing")}
    # when the gateway starts, then it refuses with a message that names what is missing
    out = subprocess.run([sys.executable, "-m", "runtime", "serve", "--port", "0"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode != 0
    assert "bubblewrap is not installed" in out.stderr and "Traceback" not in out.stderr


def test_isolation_auto_warns_and_names_the_risk_where_the_host_cannot_jail(tmp_path: Path, redis_url: str) -> None:
    env = {"PATH": str(tmp_path / "nothing")}
    gateway = start_gateway(tmp_path, redis_url, config={"sandbox": {"isolation": "auto"}}, env=env)
    try:
        assert "NO JAIL" in gateway.log() and "bubblewrap is not installed" in gateway.log()
        health = gateway.request("GET", "/healthz", timeout=5).json()
        assert health["isolation"]["mode"] == "none"
        assert "bubblewrap" in health["isolation"]["reason"]
    finally:
        gateway.stop()
