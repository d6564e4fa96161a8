"""`Config.load`: defaults, the YAML file, LAMBENT_* overrides, and clear refusals. Pure: no services."""

from __future__ import annotations

import re
from pathlib import Path

import pydantic
import pytest

from runtime.config import Config, ConfigError


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def no_config_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with no config.yaml, so `load()` has nothing to find."""
    workdir = tmp_path / "empty"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    return workdir


# -- defaults and the file ----------------------------------------------------------------


def test_no_file_and_no_environment_gives_the_documented_defaults(no_config_here: Path) -> None:
    config = Config.load(environ={})

    assert config.redis_url == "redis://127.0.0.1:6379/0"
    assert config.kafka_bootstrap_servers is None
    assert config.functions_dir == Path("functions")
    assert config.data_dir == Path(".state/data")
    assert config.region == "us-east-1"
    assert config.account_id == "000000000000"
    assert (config.gateway.host, config.gateway.port) == ("127.0.0.1", 8080)
    assert config.gateway.sync_payload_limit_bytes == 6 * 1024 * 1024
    assert config.gateway.async_payload_limit_bytes == 1024 * 1024
    assert config.auth.require_invoke_key is False and config.auth.keys == ()


def test_environ_defaults_to_none_and_then_no_variable_applies(no_config_here: Path) -> None:
    assert Config.load() == Config.load(environ={})


def test_config_yaml_in_the_working_directory_is_read_when_no_path_is_given(no_config_here: Path) -> None:
    write(no_config_here / "config.yaml", "region: eu-west-1\n")

    config = Config.load(environ={})

    assert config.region == "eu-west-1"
    assert config.functions_dir == no_config_here.resolve() / "functions"


def test_values_in_the_file_are_read(tmp_path: Path) -> None:
    path = write(tmp_path / "config.yaml", """
redis_url: redis://db:6379/3
kafka_bootstrap_servers: kafka:9092
region: eu-central-1
account_id: "123456789012"
gateway: {host: 0.0.0.0, port: 9090}
sandbox: {idle_s: 5, max_per_node: 4, python: /usr/bin/python3}
logs: {format: json, level: DEBUG}
auth:
  require_invoke_key: true
  keys:
    - {id: ops, secret_env: LAMBENT_OPS_SECRET, role: admin}
    - {id: app, secret_env: APP_SECRET, role: invoke}
""")

    config = Config.load(path, environ={})

    assert config.redis_url == "redis://db:6379/3"
    assert config.kafka_bootstrap_servers == "kafka:9092"
    assert config.region == "eu-central-1"
    assert config.account_id == "123456789012"
    assert (config.gateway.host, config.gateway.port) == ("0.0.0.0", 9090)
    assert (config.sandbox.idle_s, config.sandbox.max_per_node) == (5.0, 4)
    assert config.sandbox.python == "/usr/bin/python3"
    assert (config.logs.format, config.logs.level) == ("json", "DEBUG")
    assert config.auth.require_invoke_key is True
    assert [(key.id, key.secret_env, key.role) for key in config.auth.keys] == [
        ("ops", "LAMBENT_OPS_SECRET", "admin"), ("app", "APP_SECRET", "invoke")]


def test_an_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    path = write(tmp_path / "config.yaml", "# nothing set\n")

    config = Config.load(path, environ={})

    assert config.redis_url == "redis://127.0.0.1:6379/0"
    assert config.gateway.port == 8080


def test_the_repository_config_yaml_loads(tmp_path: Path) -> None:
    config = Config.load(Path(__file__).parent.parent / "config.yaml", environ={})

    assert config.gateway.port == 8080


def test_relative_folders_in_the_file_are_relative_to_the_file(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    path = write(folder / "config.yaml", "functions_dir: fns\ndata_dir: ../var/data\n")
    monkeypatch.chdir(tmp_path)

    config = Config.load(Path("etc/config.yaml"), environ={})

    assert config.functions_dir == folder.resolve() / "fns"
    assert config.data_dir == folder.resolve() / "../var/data"
    assert path.exists()


def test_absolute_folders_in_the_file_are_kept(tmp_path: Path) -> None:
    path = write(tmp_path / "config.yaml", f"functions_dir: {tmp_path / 'abs'}\n")

    config = Config.load(path, environ={})

    assert config.functions_dir == tmp_path / "abs"


# -- environment overrides -----------------------------------------------------------------


def test_top_level_keys_are_overridden_by_lambent_variables(tmp_path: Path) -> None:
    path = write(tmp_path / "config.yaml", "redis_url: redis://file:6379/0\n")

    config = Config.load(path, environ={
        "LAMBENT_REDIS_URL": "redis://env:6379/1",
        "LAMBENT_KAFKA_BOOTSTRAP_SERVERS": "broker1:9092,broker2:9092",
        "LAMBENT_FUNCTIONS_DIR": "/srv/functions",
        "LAMBENT_DATA_DIR": "/srv/data",
    })

    assert config.redis_url == "redis://env:6379/1"
    assert config.kafka_bootstrap_servers == "broker1:9092,broker2:9092"
    assert config.functions_dir == Path("/srv/functions")
    assert config.data_dir == Path("/srv/data")


def test_a_nested_key_is_overridden_with_a_double_underscore_and_converted_to_its_type(tmp_path: Path) -> None:
    path = write(tmp_path / "config.yaml", "gateway: {host: 127.0.0.1, port: 8080}\n")

    config = Config.load(path, environ={"LAMBENT_GATEWAY__PORT": "9000", "LAMBENT_AUTH__REQUIRE_INVOKE_KEY": "true",
                                        "LAMBENT_SANDBOX__IDLE_S": "2.5"})

    assert config.gateway.port == 9000 and isinstance(config.gateway.port, int)
    assert config.gateway.host == "127.0.0.1"
    assert config.auth.require_invoke_key is True
    assert config.sandbox.idle_s == 2.5


def test_string_values_from_the_environment_stay_strings(no_config_here: Path) -> None:
    # YAML would read these as the number 0 and the boolean False.
    config = Config.load(environ={"LAMBENT_ACCOUNT_ID": "000000000123", "LAMBENT_REGION": "no"})

    assert config.account_id == "000000000123"
    assert config.region == "no"


def test_a_list_can_be_given_in_yaml_flow_style(no_config_here: Path) -> None:
    config = Config.load(environ={"LAMBENT_AUTH__KEYS": "[{id: ops, secret_env: OPS_SECRET, role: admin}]"})

    assert [(key.id, key.role) for key in config.auth.keys] == [("ops", "admin")]


def test_relative_folders_from_the_environment_are_kept_as_given(tmp_path: Path) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    path = write(folder / "config.yaml", "functions_dir: fns\ndata_dir: data\n")

    config = Config.load(path, environ={"LAMBENT_FUNCTIONS_DIR": "my/functions", "LAMBENT_DATA_DIR": "my/data"})

    assert config.functions_dir == Path("my/functions")
    assert config.data_dir == Path("my/data")


def test_lambent_config_names_the_file(tmp_path: Path, no_config_here: Path) -> None:
    path = write(tmp_path / "elsewhere.yaml", "region: ap-south-1\n")

    config = Config.load(environ={"LAMBENT_CONFIG": str(path)})

    assert config.region == "ap-south-1"
    assert config.functions_dir == tmp_path.resolve() / "functions"


def test_an_explicit_path_wins_over_lambent_config(tmp_path: Path) -> None:
    chosen = write(tmp_path / "chosen.yaml", "region: eu-north-1\n")
    other = write(tmp_path / "other.yaml", "region: sa-east-1\n")

    config = Config.load(chosen, environ={"LAMBENT_CONFIG": str(other)})

    assert config.region == "eu-north-1"


def test_process_variables_and_referenced_secrets_are_not_taken_for_keys(no_config_here: Path) -> None:
    write(no_config_here / "config.yaml",
          "auth:\n  keys:\n    - {id: ops, secret_env: LAMBENT_OPS_SECRET, role: admin}\n")

    config = Config.load(environ={"LAMBENT_URL": "http://x", "LAMBENT_SECRET": "s", "LAMBENT_OPS_SECRET": "hunter2",
                                  "LAMBENT_TEST_REDIS_URL": "redis://t", "PATH": "/bin"})

    assert config.auth.keys[0].secret_env == "LAMBENT_OPS_SECRET"


def test_the_variables_readme_and_the_scripts_export_are_not_taken_for_keys(no_config_here: Path) -> None:
    # README's one-liner for docker compose, then `lambent serve` in the same shell; and the scripts' knobs
    exported = {name: "x" for name in ("LAMBENT_REDIS_PASSWORD", "LAMBENT_KAFKA_PASSWORD", "LAMBENT_SQS_PASSWORD",
                                       "LAMBENT_SECRET", "LAMBENT_BIN_DIR", "LAMBENT_CACHE", "LAMBENT_PYTHON",
                                       "LAMBENT_KAFKA_VERSION", "LAMBENT_ELASTICMQ_VERSION")}

    assert Config.load(environ=exported) == Config.load(environ={})


# -- refusals --------------------------------------------------------------------------------


def test_an_unknown_key_in_the_file_names_the_key_and_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "config.yaml", "redis_ulr: redis://x\n")

    with pytest.raises(ConfigError) as raised:
        Config.load(path, environ={})

    assert str(path) in str(raised.value)
    assert "redis_ulr: unknown key" in str(raised.value)


def test_an_unknown_nested_key_in_the_file_names_its_dotted_path(tmp_path: Path) -> None:
    path = write(tmp_path / "config.yaml", "gateway: {prot: 1}\n")

    with pytest.raises(ConfigError, match=r"gateway\.prot: unknown key") as raised:
        Config.load(path, environ={})

    assert str(path) in str(raised.value)


def test_an_unknown_key_from_the_environment_names_the_variable(tmp_path: Path) -> None:
    path = write(tmp_path / "config.yaml", "{}\n")

    with pytest.raises(ConfigError) as raised:
        Config.load(path, environ={"LAMBENT_GATEWAY__PROT": "9000"})

    assert "environment LAMBENT_GATEWAY__PROT" in str(raised.value)
    assert "unknown key" in str(raised.value)
    assert str(path) not in str(raised.value)


def test_an_unknown_top_level_variable_is_refused(no_config_here: Path) -> None:
    with pytest.raises(ConfigError, match="environment LAMBENT_REDIS_ULR: redis_ulr: unknown key"):
        Config.load(environ={"LAMBENT_REDIS_ULR": "redis://x"})


@pytest.mark.parametrize("port", ["abc", "70000", "-1"])
def test_a_bad_port_from_the_environment_names_the_variable_and_the_key(no_config_here: Path, port: str) -> None:
    with pytest.raises(ConfigError, match="environment LAMBENT_GATEWAY__PORT: gateway.port: "):
        Config.load(environ={"LAMBENT_GATEWAY__PORT": port})


@pytest.mark.parametrize("port", ["abc", "70000"])
def test_a_bad_port_in_the_file_names_the_key_and_the_file(tmp_path: Path, port: str) -> None:
    path = write(tmp_path / "config.yaml", f"gateway: {{port: {port}}}\n")

    with pytest.raises(ConfigError, match=r"gateway\.port: ") as raised:
        Config.load(path, environ={})

    assert str(raised.value).startswith(f"{path}: ")


def test_an_error_inside_a_list_set_by_the_environment_names_the_variable(no_config_here: Path) -> None:
    with pytest.raises(ConfigError, match=r"environment LAMBENT_AUTH__KEYS: auth\.keys\.0\.role: "):
        Config.load(environ={"LAMBENT_AUTH__KEYS": "[{id: x, secret_env: X, role: root}]"})


def test_a_bad_account_id_is_refused(no_config_here: Path) -> None:
    with pytest.raises(ConfigError, match="account_id"):
        Config.load(environ={"LAMBENT_ACCOUNT_ID": "12"})


def test_a_missing_file_is_refused_with_its_name(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"

    with pytest.raises(ConfigError, match=re.escape(f"{path}: ") + "file not found"):
        Config.load(path, environ={})


def test_a_missing_file_named_by_lambent_config_is_refused(tmp_path: Path, no_config_here: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        Config.load(environ={"LAMBENT_CONFIG": str(tmp_path / "nope.yaml")})


def test_a_folder_instead_of_a_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path}: cannot read the file")):
        Config.load(tmp_path, environ={})


def test_invalid_yaml_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "config.yaml", "gateway: {port: 1\n")

    with pytest.raises(ConfigError, match=re.escape(f"{path}: ") + "not valid YAML"):
        Config.load(path, environ={})


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_a_top_level_that_is_not_a_mapping_is_refused(tmp_path: Path, text: str) -> None:
    path = write(tmp_path / "config.yaml", text)

    with pytest.raises(ConfigError, match=re.escape(f"{path}: ") + "expected a mapping of keys at the top level"):
        Config.load(path, environ={})


def test_a_variable_below_a_key_that_is_not_a_section_is_refused(no_config_here: Path) -> None:
    with pytest.raises(ConfigError, match="environment LAMBENT_REGION__X: 'region' is not a section"):
        Config.load(environ={"LAMBENT_REGION": "eu-west-1", "LAMBENT_REGION__X": "1"})


def test_the_config_is_frozen(no_config_here: Path) -> None:
    config = Config.load(environ={})

    with pytest.raises(pydantic.ValidationError):
        config.redis_url = "redis://elsewhere"
    with pytest.raises(pydantic.ValidationError):
        config.gateway.port = 1
    assert config.redis_url == "redis://127.0.0.1:6379/0"
