"""The catalog: start-up deploys make versions only when content changed; every node sees them."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import orjson
import redis

from runtime import keys
from runtime.functions.package import pack_folder

from .helpers import TEST_FUNCTIONS, start_gateway, wait_until
from .test_lambda_api import client as lambda_client


def _functions(tmp_path: Path) -> Path:
    folder = tmp_path / "functions"
    shutil.copytree(TEST_FUNCTIONS / "echo", folder / "echo")
    (folder / "not a name").mkdir()
    (folder / "not a name" / "handler.py").write_text("def handler(e, c): return 1\n")
    (folder / "badyaml").mkdir()
    (folder / "badyaml" / "handler.py").write_text("def handler(e, c): return 1\n")
    (folder / "badyaml" / "function.yaml").write_text("timeout: -1\n")
    return folder


def test_restart_with_unchanged_folder_keeps_the_version_and_a_change_makes_a_new_one(
        tmp_path: Path, redis_url: str) -> None:
    functions = _functions(tmp_path)
    first = start_gateway(tmp_path / "a", redis_url, functions_dir=functions)
    try:
        assert first.invoke("echo").status_code == 200
        # Bad folders are skipped with a clear log line; they never stop the gateway.
        assert "badyaml" in first.log() and "timeout" in first.log()
        assert "not a name" in first.log()
        with first.client() as client:
            assert client.get("/functions/badyaml").status_code == 404
    finally:
        first.stop()
    second = start_gateway(tmp_path / "b", redis_url, functions_dir=functions)
    try:
        with second.client() as client:
            assert client.get("/functions/echo").json()["version"] == 1
        (functions / "echo" / "handler.py").write_text(
            "def handler(event, context):\n    return {'new': context.function_version}\n")
    finally:
        second.stop()
    third = start_gateway(tmp_path / "c", redis_url, functions_dir=functions)
    try:
        assert third.invoke("echo").json() == {"new": "$LATEST"}
        with third.client() as client:
            detail = client.get("/functions/echo").json()
        assert detail["version"] == 2
        assert [version["version"] for version in detail["versions"]] == [1, 2]
        old = third.invoke("echo:1").json()       # the old version still runs when asked for
        assert old["context"]["function_version"] == "1"
    finally:
        third.stop()


def test_a_second_node_sees_the_first_nodes_deploy_and_runs_it_from_its_own_cache(
        tmp_path: Path, redis_url: str) -> None:
    functions = _functions(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    node_b = start_gateway(tmp_path / "b", redis_url, functions_dir=empty)
    node_a = start_gateway(tmp_path / "a", redis_url, functions_dir=functions)
    try:
        with node_b.client() as client:
            wait_until(lambda: client.get("/functions/echo").status_code == 200, message="node b to see echo")
        response = node_b.invoke("echo", {"via": "b"})
        assert response.status_code == 200 and response.json()["event"] == {"via": "b"}
        assert any((node_b.data_dir / "code").iterdir())     # unpacked from Redis, not read from a folder
    finally:
        node_a.stop()
        node_b.stop()


def test_a_function_deleted_and_created_again_on_one_node_is_the_new_one_on_the_other(
        tmp_path: Path, redis_url: str) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    node_a = start_gateway(tmp_path / "a", redis_url, functions_dir=empty)
    node_b = start_gateway(tmp_path / "b", redis_url, functions_dir=empty)
    try:
        assert node_a.admin_secret and node_b.admin_secret
        on_a = lambda_client(node_a, "local-admin", node_a.admin_secret)
        on_b = lambda_client(node_b, "local-admin", node_b.admin_secret)

        def make(release: str) -> None:
            folder = tmp_path / release / "reborn"
            folder.mkdir(parents=True)
            (folder / "handler.py").write_text(f"def handler(event, context):\n    return {release!r}\n")
            on_a.create_function(FunctionName="reborn", Role="arn:aws:iam::000000000000:role/any",
                                 Handler="handler.handler", Code={"ZipFile": pack_folder(folder)}, Publish=True)

        def version_1_on_b() -> bytes:
            return bytes(on_b.invoke(FunctionName="reborn:1")["Payload"].read())

        # given version 1 of a function, run (and so cached) on node b
        make("first")
        assert wait_until(lambda: node_b.request("GET", "/functions/reborn").status_code == 200)
        assert version_1_on_b() == b'"first"'
        # when node a deletes it and creates it again, its numbers starting at 1 again
        on_a.delete_function(FunctionName="reborn")
        make("second")
        # then node b runs the new version 1, not the one it cached
        assert wait_until(lambda: version_1_on_b() == b'"second"', message="node b to run the new version 1")
    finally:
        node_a.stop()
        node_b.stop()


def test_idle_sandboxes_are_stopped_after_the_idle_time(tmp_path: Path, redis_url: str) -> None:
    node = start_gateway(tmp_path / "n", redis_url, functions_dir=_functions(tmp_path),
                         config={"sandbox": {"idle_s": 0.5}})
    try:
        assert node.invoke("echo").status_code == 200
        with node.client() as client:
            assert client.get("/functions/echo").json()["node"]["sandboxes"] == 1
            wait_until(lambda: client.get("/functions/echo").json()["node"]["sandboxes"] == 0, timeout=15,
                       message="the idle sandbox to be stopped")
        assert node.invoke("echo").status_code == 200     # and a new one starts on demand
    finally:
        node.stop()


def test_a_catalog_written_before_latest_had_its_own_record_reads_as_lambdas_model(
        tmp_path: Path, redis_url: str) -> None:
    # given the records an older Lambent wrote: every deploy a numbered version, the index holding the newest

    folder = tmp_path / "old" / "legacy"
    shutil.copytree(TEST_FUNCTIONS / "echo", folder)
    records = []
    for number in (1, 2):
        (folder / "note.txt").write_text(f"release {number}\n")
        zipped = pack_folder(folder)
        code_hash = hashlib.sha256(zipped).hexdigest()
        record = orjson.dumps({"function": "legacy", "version": number, "code_hash": code_hash,
                               "spec": {"handler": "handler.handler"}, "created": "2026-01-0%dT00:00:00.000+00:00"
                               % number})
        records.append((number, code_hash, zipped, record))
    store = redis.Redis.from_url(redis_url)
    try:
        for number, code_hash, zipped, record in records:
            store.set(keys.code(code_hash), zipped)
            store.hset(keys.versions("legacy"), str(number), record)
        store.hset(keys.FUNCTIONS, "legacy", records[-1][3])
        store.set(keys.version_seq("legacy"), 2)
        store.hset(keys.aliases("legacy"), "live", 1)
    finally:
        store.close()
    # when a gateway of this model serves it
    gateway = start_gateway(tmp_path / "node", redis_url, functions_dir=tmp_path / "none")
    try:
        # then $LATEST has the newest version's content, both numbers stay published, the alias still works
        unqualified = gateway.invoke("legacy").json()["context"]
        assert unqualified["function_version"] == "$LATEST"
        with gateway.client() as client:
            detail = client.get("/functions/legacy").json()
            assert detail["version"] == 2 and detail["code_hash"] == records[-1][1]
            assert [version["version"] for version in detail["versions"]] == [1, 2]
        # and publishing now gives version 2 again: $LATEST has its content
        assert gateway.admin_secret
        aws = lambda_client(gateway, "local-admin", gateway.admin_secret)
        assert aws.publish_version(FunctionName="legacy")["Version"] == "2"
        assert gateway.invoke("legacy:live").json()["context"]["function_version"] == "1"
        assert gateway.invoke("legacy:2").json()["context"]["function_version"] == "2"
    finally:
        gateway.stop()
