"""`function.yaml` parsing (FunctionSpec) and function-name splitting (split_name). Pure: no services."""

from __future__ import annotations

import pydantic
import pytest

from runtime.functions.catalog import split_name
from runtime.functions.spec import FunctionSpec, SpecError

# DESIGN.md's function.yaml example, key for key.
DESIGN_EXAMPLE = """
handler: handler.handler        # module.attribute, as Lambda's Handler setting
timeout: 3                      # seconds; the sandbox is killed when it runs past this
memory_mb: 128                  # address-space limit of the sandbox process
environment: {GREETING: hi}
reserved_concurrency: 10        # most concurrent executions of this function, cluster-wide
async:
  max_retry_attempts: 2         # Lambda: 0..2, default 2
  retry_delays: [60, 120]       # seconds before each retry (Lambda: about 1 and 2 minutes)
  max_event_age: 21600          # seconds, Lambda: 60..21600
  on_success: {function: audit}           # optional destination
  on_failure: {function: alert}           # optional; the DLQ always receives failures
events:
  - http: {}                                # function URL: ANY /fn/hello and /fn/hello/{path}
  - schedule: {expression: "rate(5 minutes)", input: {"k": "v"}, timezone: UTC}
  - kafka:
      topic: orders
      batch_size: 100
      batch_window: 0.5         # seconds to wait to fill a batch
      starting_position: TRIM_HORIZON        # or LATEST
      max_retry_attempts: -1    # -1: retry until the record expires
      max_record_age: -1        # seconds; -1: no limit
      bisect_on_error: false
      report_batch_item_failures: false
      on_failure: {topic: orders-dlq}        # or {function: name}
"""


def refusal(text: str) -> str:
    """The SpecError message for `text`; fails the test when it parses."""
    with pytest.raises(SpecError) as raised:
        FunctionSpec.parse(text)
    return str(raised.value)


# -- defaults ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [None, "", b"", "# only a comment\n", "{}"])
def test_an_empty_spec_gives_every_default(text: str | bytes | None) -> None:
    spec = FunctionSpec.parse(text)

    assert spec.handler == "handler.handler"
    assert spec.timeout_s == 3
    assert spec.memory_mb == 128
    assert spec.environment == {}
    assert spec.reserved_concurrency is None
    assert spec.async_.max_retry_attempts == 2
    assert spec.async_.retry_delays_s == (60, 120)
    assert spec.async_.max_event_age_s == 21600
    assert spec.async_.on_success is None and spec.async_.on_failure is None
    assert spec.events == ()
    assert spec.triggers == [] and not spec.has_http


# -- DESIGN.md's example ------------------------------------------------------------------------


def test_every_key_of_the_design_example_parses() -> None:
    spec = FunctionSpec.parse(DESIGN_EXAMPLE)

    assert (spec.handler, spec.timeout_s, spec.memory_mb) == ("handler.handler", 3, 128)
    assert spec.environment == {"GREETING": "hi"}
    assert spec.reserved_concurrency == 10
    assert spec.async_.max_retry_attempts == 2
    assert spec.async_.retry_delays_s == (60, 120)
    assert spec.async_.max_event_age_s == 21600
    assert spec.async_.on_success is not None and spec.async_.on_success.function == "audit"
    assert spec.async_.on_failure is not None and spec.async_.on_failure.function == "alert"
    http, schedule, kafka = spec.events
    assert http.kind == "http" and http.http is not None
    assert schedule.schedule is not None
    assert schedule.schedule.expression == "rate(5 minutes)"
    assert schedule.schedule.input == {"k": "v"}
    assert schedule.schedule.timezone == "UTC"
    assert kafka.kafka is not None
    assert kafka.kafka.topic == "orders"
    assert kafka.kafka.batch_size == 100
    assert kafka.kafka.batch_window_s == 0.5
    assert kafka.kafka.starting_position == "TRIM_HORIZON"
    assert kafka.kafka.max_retry_attempts == -1
    assert kafka.kafka.max_record_age_s == -1
    assert kafka.kafka.bisect_on_error is False
    assert kafka.kafka.report_batch_item_failures is False
    assert kafka.kafka.on_failure is not None and kafka.kafka.on_failure.topic == "orders-dlq"
    assert spec.triggers == ["http", "kafka", "schedule"] and spec.has_http


def test_a_spec_survives_the_json_round_trip_used_by_the_catalog() -> None:
    spec = FunctionSpec.parse(DESIGN_EXAMPLE)

    assert FunctionSpec.from_json(spec.to_json()) == spec
    assert spec.to_json()["timeout"] == 3 and spec.to_json()["async"]["retry_delays"] == [60, 120]


def test_kafka_on_failure_may_name_a_function_and_latest_is_a_starting_position() -> None:
    spec = FunctionSpec.parse("events: [{kafka: {topic: t, starting_position: LATEST, on_failure: {function: fix}}}]")

    kafka = spec.events[0].kafka
    assert kafka is not None and kafka.starting_position == "LATEST"
    assert kafka.on_failure is not None and kafka.on_failure.function == "fix" and kafka.on_failure.topic is None


def test_a_destination_may_name_a_qualified_function() -> None:
    spec = FunctionSpec.parse("async: {on_failure: {function: 'alert:prod'}}")

    assert spec.async_.on_failure is not None and spec.async_.on_failure.function == "alert:prod"


def test_a_bare_http_event_means_a_function_url_with_defaults() -> None:
    spec = FunctionSpec.parse("events:\n  - http:\n")

    assert spec.has_http and spec.triggers == ["http"]


def test_a_dotted_handler_names_a_module_in_a_package() -> None:
    assert FunctionSpec.parse("handler: app.main.handle").handler == "app.main.handle"


def test_environment_numbers_and_booleans_become_strings() -> None:
    spec = FunctionSpec.parse("environment: {COUNT: 3, RATIO: 0.5, ENABLED: true, DISABLED: false, NAME: x}")

    assert spec.environment == {"COUNT": "3", "RATIO": "0.5", "ENABLED": "true", "DISABLED": "false", "NAME": "x"}


def test_environment_values_and_names_keep_the_text_as_written() -> None:
    # YAML 1.1 alone would give "3.1", "False", "668", "2024-01-01" and the name True.
    spec = FunctionSpec.parse("""
environment:
  PYTHON_VERSION: 3.10
  COUNTRY: NO
  ZIP: 01234
  SINCE: 2024-01-01
  ON: "yes"
""")

    assert spec.environment == {"PYTHON_VERSION": "3.10", "COUNTRY": "NO", "ZIP": "01234", "SINCE": "2024-01-01",
                                "ON": "yes"}


def test_environment_from_json_still_turns_numbers_into_strings() -> None:
    assert FunctionSpec.from_json({"environment": {"N": 3, "B": True}}).environment == {"N": "3", "B": "true"}


def test_a_spec_is_frozen() -> None:
    spec = FunctionSpec.parse("")

    with pytest.raises(pydantic.ValidationError):
        spec.timeout_s = 10


# -- unknown keys -----------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "path"), [
    ("timout: 3", "timout"),
    ("async: {retries: 3}", "async.retries"),
    ("events: [{kafka: {topic: x, topik: x}}]", "events.0.kafka.topik"),
    ("events: [{http: {}}, {schedule: {expression: x, tz: UTC}}]", "events.1.schedule.tz"),
    ("events: [{kafka: {topic: x, on_failure: {queue: q}}}]", "events.0.kafka.on_failure.queue"),
    ("events: [{rabbitmq: {}}]", "events.0.rabbitmq"),
])
def test_an_unknown_key_is_refused_naming_the_file_and_the_key_path(text: str, path: str) -> None:
    assert f"function.yaml: {path}: unknown key" in refusal(text)


def test_the_refusal_names_the_given_source() -> None:
    with pytest.raises(SpecError, match="functions/hello/function.yaml: timout: unknown key"):
        FunctionSpec.parse("timout: 3", source="functions/hello/function.yaml")


def test_a_misspelt_kafka_key_also_reports_the_missing_topic() -> None:
    message = refusal("events: [{kafka: {topik: x}}]")

    assert "events.0.kafka.topik: unknown key" in message
    assert "events.0.kafka.topic: Field required" in message


# -- bad values ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "path", "says"), [
    ("timeout: 0", "timeout", "greater than 0"),
    ("timeout: 901", "timeout", "less than or equal to 900"),
    ("memory_mb: 10", "memory_mb", "greater than or equal to 32"),
    ("reserved_concurrency: -1", "reserved_concurrency", "greater than or equal to 0"),
    ("async: {max_retry_attempts: 3}", "async.max_retry_attempts", "less than or equal to 2"),
    ("async: {max_event_age: 30}", "async.max_event_age", "greater than or equal to 60"),
    ("async: {retry_delays: [-1]}", "async.retry_delays", "zero or more seconds"),
    ("handler: handler", "handler", "'handler' is not module.attribute"),
    ("handler: 'a.b-c'", "handler", "is not module.attribute"),
    ("environment: {AWS_REGION: eu-west-1}", "environment", "'AWS_REGION' is reserved"),
    ("environment: {LIST: [1, 2]}", "environment", "'LIST' must be a string, number or boolean"),
    ("environment: {MAP: {a: 1}}", "environment", "'MAP' must be a string, number or boolean"),
    ("environment: {1BAD: x}", "environment", "'1BAD' is not a valid variable name"),
    ("environment: {EMPTY: }", "environment", "'EMPTY' must be a string, number or boolean"),
    ("environment: [A, B]", "environment", "valid dictionary"),
    ("events: [{http: {}, schedule: {expression: 'rate(1 minute)'}}]", "events.0",
     "exactly one of 'http', 'schedule', 'kafka', 'sqs' or 'sns'"),
    ("events: [{}]", "events.0", "exactly one of"),
    ("events: [{schedule: {}}]", "events.0.schedule.expression", "Field required"),
    ("events: [{kafka: {topic: t, starting_position: BOGUS}}]", "events.0.kafka.starting_position",
     "'TRIM_HORIZON' or 'LATEST'"),
    ("events: [{kafka: {topic: 'bad topic'}}]", "events.0.kafka.topic", "should match pattern"),
    ("events: [{kafka: {topic: t, batch_size: 0}}]", "events.0.kafka.batch_size", "greater than or equal to 1"),
    ("events: [{kafka: {topic: t, on_failure: {function: f, topic: d}}}]", "events.0.kafka.on_failure",
     "give exactly one of 'function', 'topic' (Kafka) or 'sns'"),
    ("async: {on_success: {}}", "async.on_success", "give exactly one of 'function', 'topic' (Kafka) or 'sns'"),
    ("events: [{sqs: {queue: 'a b'}}]", "events.0.sqs.queue", "is not a queue name"),
    ("events: [{sqs: {queue: q, batch_size: 100}}]", "events.0.sqs", "needs a maximum_batching_window"),
    ("events: [{sqs: {queue: q, maximum_concurrency: 1}}]", "events.0.sqs.maximum_concurrency",
     "greater than or equal to 2"),
    ("events: [{sns: {topic: t, filter_policy: {x: [{bogus: 1}]}}}]", "events.0.sns", "filter_policy"),
    ("async: {on_failure: {function: '../etc'}}", "async.on_failure", "'../etc' is not a valid function name"),
    ("async: {on_failure: {function: 'alert:no/such'}}", "async.on_failure", "is not a valid function name"),
    ("events: [{kafka: {topic: t, on_failure: {topic: ''}}}]", "events.0.kafka.on_failure",
     "'' is not a valid topic name"),
])
def test_a_bad_value_is_refused_naming_the_key_and_what_is_wrong(text: str, path: str, says: str) -> None:
    message = refusal(text)

    assert message.startswith(f"function.yaml: {path}: "), message
    assert says in message
    assert "Value error," not in message   # pydantic's prefix is noise to a user


@pytest.mark.parametrize("text", ["- a\n- b\n", "hello\n", "3\n"])
def test_a_top_level_that_is_not_a_mapping_is_refused(text: str) -> None:
    assert refusal(text) == "function.yaml: expected a mapping of keys at the top level"


def test_invalid_yaml_is_refused() -> None:
    assert refusal("timeout: [3\n").startswith("function.yaml: not valid YAML")


def test_from_json_refuses_like_parse() -> None:
    with pytest.raises(SpecError, match="function.yaml: memory_mb: "):
        FunctionSpec.from_json({"memory_mb": 1})


# -- split_name ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "qualifier", "expected"), [
    ("hello", None, ("hello", "$LATEST")),
    ("hello:3", None, ("hello", "3")),
    ("hello:prod", None, ("hello", "prod")),
    ("hello:$LATEST", None, ("hello", "$LATEST")),
    ("hello", "prod", ("hello", "prod")),
    ("hello", "7", ("hello", "7")),
    ("hello:prod", "prod", ("hello", "prod")),
    ("My_Func-2", None, ("My_Func-2", "$LATEST")),
    ("a" * 64, None, ("a" * 64, "$LATEST")),
])
def test_split_name_separates_the_name_and_its_qualifier(name: str, qualifier: str | None,
                                                         expected: tuple[str, str]) -> None:
    assert split_name(name, qualifier) == expected


def test_split_name_refuses_conflicting_qualifiers() -> None:
    with pytest.raises(ValueError, match="the name says qualifier '3' but Qualifier is 'prod'"):
        split_name("hello:3", "prod")


@pytest.mark.parametrize("name", ["../etc", "a" * 65, "bad name", "", ":3", "hello/x", "héllo"])
def test_split_name_refuses_an_invalid_name(name: str) -> None:
    with pytest.raises(ValueError, match="is not a valid function name"):
        split_name(name)


@pytest.mark.parametrize(("name", "qualifier"), [("hello:a/b", None), ("hello:3:4", None), ("hello", "bad q"),
                                                 ("hello", "x" * 129)])
def test_split_name_refuses_an_invalid_qualifier(name: str, qualifier: str | None) -> None:
    with pytest.raises(ValueError, match="is not a valid qualifier"):
        split_name(name, qualifier)


def test_a_yaml_alias_bomb_is_refused_before_it_expands() -> None:
    # given 417 bytes of nested anchors that safe_load would expand to about a billion list items
    levels = ["a: &a [x, x, x, x, x, x, x, x, x]"] + [
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]" for i in range(8)]
    bomb = "events:\n  - schedule:\n      expression: rate(1 hour)\n      input:\n" + "".join(
        f"        {line}\n" for line in levels)
    # when it is parsed, then it is refused at once, naming the rule
    with pytest.raises(SpecError, match=r"function.yaml: YAML aliases \(\*name\) are not allowed"):
        FunctionSpec.parse(bomb)


def test_a_function_yaml_over_64_kb_is_refused_with_its_size() -> None:
    text = "handler: handler.handler\n" + "# comment\n" * 7000
    with pytest.raises(SpecError, match=r"function.yaml: larger than 65536 bytes \(70025\)"):
        FunctionSpec.parse(text)


def test_a_schedule_input_over_eventbridges_256_kb_is_refused() -> None:
    fits = {"events": [{"schedule": {"expression": "rate(1 hour)", "input": {"blob": "x" * 200_000}}}]}
    assert FunctionSpec.from_json(fits).events[0].schedule.input["blob"] == "x" * 200_000   # type: ignore[union-attr]
    too_big = {"events": [{"schedule": {"expression": "rate(1 hour)", "input": {"blob": "x" * 300_000}}}]}
    with pytest.raises(SpecError, match="input is larger than 262144 bytes once serialized"):
        FunctionSpec.from_json(too_big)


def test_logging_levels_need_the_json_format_as_lambdas_logging_config() -> None:
    spec = FunctionSpec.parse("logging_config: {log_format: JSON, application_log_level: WARN, system_log_level: WARN}")
    assert spec.logging.is_json and not spec.logging.system_lines
    assert FunctionSpec.parse("").logging.format == "Text" and FunctionSpec.parse("").logging.system_lines
    with pytest.raises(SpecError, match="logging_config: log levels need log_format: JSON"):
        FunctionSpec.parse("logging_config: {application_log_level: DEBUG}")
    with pytest.raises(SpecError, match="logging_config.log_format"):
        FunctionSpec.parse("logging_config: {log_format: json}")
