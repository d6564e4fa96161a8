"""SNS filter policies and Lambda filter patterns (runtime/functions/filters.py): pure unit tests, no services.

Most examples are those of AWS's documentation (SNS: string-value-matching, numeric-value-matching,
attribute-key-matching, and-or-logic, subscription-filter-policy-constraints; Lambda: invocation-eventfiltering,
with-sqs-filtering), so that a policy behaves here as it does there.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from runtime.functions.spec import FunctionSpec, SpecError
from runtime.functions.filters import FilterError, compile_pattern, compile_policy


def s(value: str) -> dict[str, str]:
    return {"Type": "String", "Value": value}


def n(value: Any) -> dict[str, str]:
    return {"Type": "Number", "Value": str(value)}


def arr(*values: Any) -> dict[str, str]:
    return {"Type": "String.Array", "Value": json.dumps(list(values))}


def attributes(policy: Any, data: dict[str, Any]) -> bool:
    return compile_policy(policy, scope="MessageAttributes").matches(data)


def body(policy: Any, data: Any) -> bool:
    return compile_policy(policy, scope="MessageBody").matches(data)


# -- strings ------------------------------------------------------------------------------------------------------

def test_exact_string_matches_any_listed_value_and_each_element_of_a_string_array() -> None:
    policy = {"customer_interests": ["rugby", "tennis"]}
    assert attributes(policy, {"customer_interests": s("rugby")})
    assert attributes(policy, {"customer_interests": s("tennis")})
    assert attributes(policy, {"customer_interests": arr("rugby", "tennis")})
    assert body(policy, {"customer_interests": "rugby"})
    assert not attributes(policy, {"customer_interests": s("baseball")})
    assert not attributes(policy, {"customer_interests": arr("baseball")})
    assert not body(policy, {"customer_interests": "baseball"})
    assert not attributes(policy, {"customer_interests": s("Rugby")})       # case-sensitive


def test_prefix_and_suffix() -> None:
    assert attributes({"customer_interests": [{"prefix": "bas"}]}, {"customer_interests": s("baseball")})
    assert attributes({"customer_interests": [{"prefix": "bas"}]}, {"customer_interests": s("basketball")})
    assert not attributes({"customer_interests": [{"prefix": "bas"}]}, {"customer_interests": s("rugby")})
    assert attributes({"customer_interests": [{"suffix": "ball"}]}, {"customer_interests": s("baseball")})
    assert not attributes({"customer_interests": [{"suffix": "ball"}]}, {"customer_interests": s("rugby")})


def test_equals_ignore_case() -> None:
    policy = {"customer_interests": [{"equals-ignore-case": "tennis"}]}
    assert attributes(policy, {"customer_interests": s("TENNIS")})
    assert attributes(policy, {"customer_interests": s("Tennis")})
    assert not attributes(policy, {"customer_interests": s("baseball")})


def test_anything_but_a_list_a_value_a_prefix_and_a_suffix() -> None:
    policy = {"customer_interests": [{"anything-but": ["rugby", "tennis"]}]}
    assert attributes(policy, {"customer_interests": s("baseball")})
    assert attributes(policy, {"customer_interests": s("football")})
    assert attributes(policy, {"customer_interests": arr("rugby", "baseball")})   # one element is none of them
    assert not attributes(policy, {"customer_interests": s("rugby")})
    assert attributes({"x": [{"anything-but": "rugby"}]}, {"x": s("golf")})
    assert not attributes({"x": [{"anything-but": "rugby"}]}, {"x": s("rugby")})
    assert attributes({"event": [{"anything-but": {"prefix": "order-"}}]}, {"event": s("data-entry")})
    assert attributes({"event": [{"anything-but": {"prefix": "order-"}}]}, {"event": s("order_number")})
    assert not attributes({"event": [{"anything-but": {"prefix": "order-"}}]}, {"event": s("order-cancelled")})
    assert attributes({"f": [{"anything-but": {"suffix": ".png"}}]}, {"f": s("a.jpg")})
    assert not attributes({"f": [{"anything-but": {"suffix": ".png"}}]}, {"f": s("a.png")})


def test_anything_but_does_not_match_an_absent_key_unless_with_exists_false() -> None:
    assert not attributes({"customer_interests": [{"anything-but": ["rugby"]}]}, {})
    assert not body({"customer_interests": [{"anything-but": ["rugby"]}]}, {"other": 1})
    either = {"customer_interests": [{"anything-but": ["rugby"]}, {"exists": False}]}
    assert attributes(either, {})
    assert attributes(either, {"customer_interests": s("golf")})
    assert not attributes(either, {"customer_interests": s("rugby")})


def test_cidr() -> None:
    policy = {"source_ip": [{"cidr": "10.0.0.0/24"}]}
    assert attributes(policy, {"source_ip": s("10.0.0.0")})
    assert attributes(policy, {"source_ip": s("10.0.0.255")})
    assert not attributes(policy, {"source_ip": s("10.1.1.0")})
    assert not attributes(policy, {"source_ip": s("not an address")})


# -- numbers and types --------------------------------------------------------------------------------------------

def test_numeric_equals_and_exact_numbers_compare_as_numbers() -> None:
    policy = {"price_usd": [{"numeric": ["=", 301.5]}]}
    assert attributes(policy, {"price_usd": n(301.5)})
    assert attributes(policy, {"price_usd": n("3.015e2")})
    assert body(policy, {"price_usd": 301.5})
    assert body(policy, {"price_usd": 3.015e2})
    assert not attributes(policy, {"price_usd": n(301.6)})
    assert attributes({"price": [100]}, {"price": n("100.0")})
    assert body({"price": [100]}, {"price": 100.0})


def test_numeric_ranges() -> None:
    negative = {"price_usd": [{"numeric": ["<", 0]}]}
    assert attributes(negative, {"price_usd": n(-1)})
    assert not attributes(negative, {"price_usd": n(0)})
    up_to_150 = {"price_usd": [{"numeric": [">", 0, "<=", 150]}]}
    assert attributes(up_to_150, {"price_usd": n(150)})
    assert attributes(up_to_150, {"price_usd": n(0.5)})
    assert not attributes(up_to_150, {"price_usd": n(0)})
    assert not attributes(up_to_150, {"price_usd": n(150.01)})
    assert body({"p": [{"numeric": [">=", 10, "<", 20]}]}, {"p": 10})
    assert not body({"p": [{"numeric": [">=", 10, "<", 20]}]}, {"p": 20})


def test_numbers_compare_at_five_decimal_places() -> None:
    assert attributes({"p": [{"numeric": ["=", 1.5]}]}, {"p": n("1.500001")})
    assert not attributes({"p": [{"numeric": ["=", 1.5]}]}, {"p": n("1.50001")})


def test_anything_but_numbers() -> None:
    policy = {"price": [{"anything-but": [100, 500]}]}
    assert attributes(policy, {"price": n(101)})
    assert attributes(policy, {"price": n(100.1)})
    assert body(policy, {"price": 101})
    assert body(policy, {"price": [100, 50]})
    assert not attributes(policy, {"price": n(100)})
    assert not body(policy, {"price": 100})


def test_a_string_attribute_never_matches_a_number_condition_nor_a_number_a_string_one() -> None:
    assert not attributes({"price": [100]}, {"price": s("100")})
    assert not attributes({"price": [{"numeric": [">", 1]}]}, {"price": s("100")})
    assert not attributes({"price": ["100"]}, {"price": n(100)})
    assert not attributes({"price": [{"prefix": "10"}]}, {"price": n(100)})
    assert not body({"price": [100]}, {"price": "100"})
    assert not body({"flag": [1]}, {"flag": True})                 # true is not 1
    assert body({"flag": [True]}, {"flag": True})
    assert body({"gone": [None]}, {"gone": None})
    assert not body({"gone": [None]}, {})


def test_a_number_attribute_that_is_not_a_number_exists_but_matches_no_value() -> None:
    assert not attributes({"p": [{"numeric": [">", 0]}]}, {"p": n("12abc")})
    assert not attributes({"p": [{"anything-but": [1]}]}, {"p": n("1_000")})
    assert attributes({"p": [{"exists": True}]}, {"p": n("12abc")})


def test_binary_attributes_are_ignored_as_sns_does() -> None:
    binary = {"Type": "Binary", "Value": "aGVsbG8="}
    assert not attributes({"blob": ["aGVsbG8="]}, {"blob": binary})
    assert not attributes({"blob": [{"exists": True}]}, {"blob": binary})
    assert attributes({"blob": [{"exists": False}]}, {"blob": binary})


def test_string_array_with_numbers_and_the_publish_api_shape() -> None:
    assert attributes({"ids": [{"numeric": [">", 10]}]}, {"ids": arr(1, 20)})
    assert not attributes({"ids": [{"numeric": [">", 10]}]}, {"ids": arr(1, 2)})
    assert not attributes({"ids": ["x"]}, {"ids": {"Type": "String.Array", "Value": "not json"}})
    assert attributes({"color": ["red"]}, {"color": {"DataType": "String", "StringValue": "red"}})


# -- keys, AND and OR ---------------------------------------------------------------------------------------------

def test_exists_true_and_false() -> None:
    message = {"store": s("fans"), "customer_interests": arr("baseball", "basketball")}
    without = {"customer_interests": arr("baseball", "basketball")}
    assert attributes({"store": [{"exists": True}]}, message)
    assert not attributes({"store": [{"exists": True}]}, without)
    assert not attributes({"store": [{"exists": False}]}, message)
    assert attributes({"store": [{"exists": False}]}, without)
    assert body({"store": [{"exists": True}]}, {"store": "fans", "customer_interests": ["baseball"]})
    assert body({"store": [{"exists": False}]}, {"customer_interests": ["baseball"]})


def test_an_absent_key_matches_only_exists_false() -> None:
    for condition in (["x"], [{"prefix": ""}], [{"numeric": [">", 0]}], [{"anything-but": "x"}], [{"exists": True}]):
        assert not attributes({"k": condition}, {}), condition
    assert attributes({"k": [{"exists": False}]}, {})


def test_every_key_must_match_and_values_of_one_key_are_alternatives() -> None:
    policy = {"customer_interests": ["rugby"], "price_usd": [{"numeric": [">", 100]}]}
    assert attributes(policy, {"customer_interests": s("rugby"), "price_usd": n(150)})
    assert not attributes(policy, {"customer_interests": s("rugby"), "price_usd": n(50)})
    assert not attributes(policy, {"customer_interests": s("rugby")})
    either = {"customer_interests": ["rugby", "football", "baseball"]}
    assert all(attributes(either, {"customer_interests": s(sport)}) for sport in ("rugby", "football", "baseball"))


def test_or_at_the_top_level() -> None:
    policy = {"source": ["aws.cloudwatch"], "$or": [{"metricName": ["CPUUtilization"]}, {"namespace": ["AWS/EC2"]}]}
    assert attributes(policy, {"source": s("aws.cloudwatch"), "metricName": s("CPUUtilization")})
    assert attributes(policy, {"source": s("aws.cloudwatch"), "namespace": s("AWS/EC2")})
    assert not attributes(policy, {"source": s("aws.cloudwatch"), "namespace": s("AWS/RDS")})
    assert not attributes(policy, {"source": s("aws.other"), "metricName": s("CPUUtilization")})


def test_nested_or_in_the_body() -> None:
    policy = {"source": ["aws.cloudwatch"],
              "$or": [{"metricName": ["CPUUtilization", "ReadLatency"]},
                      {"metricType": ["MetricType"],
                       "$or": [{"metricId": [1234, 4321]}, {"spaceId": [1000, 2000, 3000]}]}]}
    assert body(policy, {"source": "aws.cloudwatch", "metricName": "ReadLatency"})
    assert body(policy, {"source": "aws.cloudwatch", "metricType": "MetricType", "spaceId": 2000})
    assert body(policy, {"source": "aws.cloudwatch", "metricType": "MetricType", "metricId": 4321})
    assert not body(policy, {"source": "aws.cloudwatch", "metricType": "MetricType", "spaceId": 1})
    assert not body(policy, {"source": "aws.cloudwatch", "metricType": "Other", "spaceId": 2000})
    assert body({"a": {"$or": [{"b": ["x"]}, {"c": ["y"]}]}}, {"a": {"c": "y"}})


def test_or_with_reserved_keywords_is_an_ordinary_key() -> None:
    with pytest.raises(FilterError, match=r"Value of numeric must be an array. \(at key '\$or'\)"):
        compile_policy({"$or": [{"numeric": 123}, {"prefix": "abc"}]}, scope="MessageAttributes")
    assert attributes({"$or": ["literal"]}, {"$or": s("literal")})          # one value, no objects: a key


# -- the message body ---------------------------------------------------------------------------------------------

def test_body_policy_keys_nest_as_the_body_does() -> None:
    policy = {"finding": {"account": ["111111111111", "222222222222"], "standard_control": ["S3.9", "S3.6"]}}
    assert body(policy, {"finding": {"account": "111111111111", "standard_control": "S3.6", "more": 1}})
    assert not body(policy, {"finding": {"account": "333333333333", "standard_control": "S3.6"}})
    assert not body(policy, {"account": "111111111111", "standard_control": "S3.6"})
    assert not body(policy, {"finding": "111111111111"})


def test_arrays_in_the_body_match_when_any_element_matches() -> None:
    assert body({"customer_interests": ["rugby"]}, {"customer_interests": ["golf", "rugby"]})
    assert not body({"customer_interests": ["rugby"]}, {"customer_interests": ["golf"]})
    assert not body({"customer_interests": [{"exists": True}]}, {"customer_interests": []})
    orders = {"orders": [{"state": "new", "total": 5}, {"state": "paid", "total": 500}]}
    assert body({"orders": {"state": ["paid"]}}, orders)
    assert body({"orders": {"total": [{"numeric": [">", 100]}]}}, orders)
    assert not body({"orders": {"state": ["cancelled"]}}, orders)


def test_a_body_that_is_not_a_json_object_matches_nothing() -> None:
    for data in (None, "rugby", ["rugby"], 5):
        assert not body({"x": [{"exists": False}]}, data)


def test_an_empty_policy_matches_everything() -> None:
    assert attributes({}, {})
    assert attributes("", {"a": s("b")})
    assert body("{}", None)


def test_a_policy_given_as_json_text_is_the_same_policy() -> None:
    policy = compile_policy('{"store": ["example_corp"], "price_usd": [{"numeric": [">=", 100]}]}',
                            scope="MessageAttributes")
    assert policy.matches({"store": s("example_corp"), "price_usd": n(100)})
    assert not policy.matches({"store": s("example_corp"), "price_usd": n(99.9)})


# -- refusals -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("policy, message", [
    ({"x": [{"bogus": 1}]}, "Unrecognized match type bogus (at key 'x')"),
    ({"x": [{"wildcard": "a*"}]}, "Unrecognized match type wildcard"),
    ({"x": []}, "Empty arrays are not allowed (at key 'x')"),
    ({"x": "rugby"}, '"x" must be an object or an array'),
    ({"x": [["nested"]]}, "Match value must be String, number, true, false, or null"),
    ({"x": [{"prefix": "a", "suffix": "b"}]}, "Only one key allowed in match expression"),
    ({"x": [{"prefix": 5}]}, "prefix match pattern must be a string"),
    ({"x": [{"equals-ignore-case": ["a"]}]}, "equals-ignore-case match pattern must be a string"),
    ({"x": [{"exists": "yes"}]}, "exists match pattern must be either true or false."),
    ({"x": [{"anything-but": {"numeric": [">", 1]}}]}, "Unsupported anything-but pattern: numeric"),
    ({"x": [{"anything-but": []}]}, "Empty arrays are not allowed"),
    ({"x": [{"anything-but": [True]}]}, "anything-but takes strings or numbers"),
    ({"x": [{"cidr": "10.0.0.0/99"}]}, "Malformed CIDR"),
    ({"x": [{"numeric": []}]}, "Value of numeric must be an array."),
    ({"x": [{"numeric": ["!=", 1]}]}, "Unrecognized numeric range operator: !="),
    ({"x": [{"numeric": [5, 1]}]}, "Invalid member in numeric match: 5"),
    ({"x": [{"numeric": [">", "1"]}]}, "Value of > must be numeric"),
    ({"x": [{"numeric": ["=", True]}]}, "Value of equals must be numeric"),
    ({"x": [{"numeric": ["=", 1, "<", 5]}]}, "Too many elements in numeric expression"),
    ({"x": [{"numeric": [">", 1, ">", 5]}]}, "Bad numeric range operator: >"),
    ({"x": [{"numeric": [">", 1, 5, 5]}]}, "Bad value in numeric range: 5"),
    ({"x": [{"numeric": [">", 10, "<", 5]}]}, "Bottom must be less than top"),
    ({"x": [{"numeric": [">", 0, "<", 5, "<", 6]}]}, "Too many terms in numeric range expression"),
    ({"x": [{"numeric": [">", 2e9]}]}, "out of range: use -1000000000 to 1000000000 with at most 5 decimal places"),
    ({"x": [{"numeric": ["=", 0.000001]}]}, "at most 5 decimal places"),
])
def test_refusals_say_what_and_where_in_sns_words(policy: Any, message: str) -> None:
    with pytest.raises(FilterError) as caught:
        compile_policy(policy, scope="MessageBody")
    assert str(caught.value).startswith("Invalid parameter: FilterPolicy: ")
    assert message in str(caught.value)


def test_at_most_five_keys() -> None:
    five = {f"k{i}": ["v"] for i in range(5)}
    compile_policy(five, scope="MessageAttributes")
    with pytest.raises(FilterError, match="Filter policy can not have more than 5 keys"):
        compile_policy({**five, "k5": ["v"]}, scope="MessageAttributes")
    # In the body, only top-level keys count (the constraints page's own example: 4 top-level keys).
    compile_policy({"state": ["SUCCESS"], "severity": [{"exists": True}], "message": [{"exists": True}],
                    "finding": {"standard_control": [{"exists": True}], "region": [{"exists": True}],
                                "account": [{"exists": True}]}}, scope="MessageBody")
    with pytest.raises(FilterError, match="more than 5 keys"):
        compile_policy({**five, "$or": [{"a": ["1"]}, {"b": ["2"]}]}, scope="MessageAttributes")


def test_at_most_150_combinations_counted_as_sns_does() -> None:
    compile_policy({"a": list("abcde"), "b": list("abcde"), "c": list("abcdef")}, scope="MessageAttributes")  # 150
    with pytest.raises(FilterError, match="Filter policy is too complex: 180 combinations"):
        compile_policy({"a": list("abcdef"), "b": list("abcde"), "c": list("abcdef")}, scope="MessageAttributes")
    # The documented nested example: 4 values at depth 3, 3 values at depth 2: 3 x 4 x 2 x 3 = 72, allowed;
    # doubled it is 288, refused.
    nested = {"key_a": {"key_b": {"key_c": ["1", "2", "3", "4"]}}, "key_d": {"key_e": ["1", "2", "3"]}}
    compile_policy(nested, scope="MessageBody")
    with pytest.raises(FilterError, match="288 combinations"):
        compile_policy({**nested, "key_f": ["1", "2", "3", "4"]}, scope="MessageBody")
    # $or options add up: the documented example is (1 x 2) + (1 x 1 x 2) + (1 x 1 x 3) = 7.
    wide_or = {"$or": [{"a": list("abcdefghij"), "b": list("abcdefghij")}, {"c": list("abcdefghij"), "d": ["x"]}]}
    compile_policy(wide_or, scope="MessageAttributes")                                   # 100 + 10 = 110
    with pytest.raises(FilterError, match="220 combinations"):
        compile_policy({**wide_or, "e": ["1", "2"]}, scope="MessageAttributes")          # (100 + 10) x 2


def test_nesting_needs_the_message_body_scope() -> None:
    with pytest.raises(FilterError, match="Filter policy scope MessageAttributes does not support nested filter "
                                          r"policy \(at key 'finding'\)"):
        compile_policy({"finding": {"account": ["1"]}}, scope="MessageAttributes")
    with pytest.raises(FilterError, match="does not support nested"):
        compile_policy({"$or": [{"a": {"b": ["1"]}}, {"c": ["2"]}]}, scope="MessageAttributes")


def test_what_is_not_a_json_object_or_too_large_is_refused() -> None:
    for policy in ([], ["x"], 5, "[1]", "null"):
        with pytest.raises(FilterError, match="Filter policy must be a JSON object"):
            compile_policy(policy, scope="MessageAttributes")
    with pytest.raises(FilterError, match="failed to parse JSON"):
        compile_policy('{"x": [', scope="MessageAttributes")
    with pytest.raises(FilterError, match="larger than 256 KB"):
        compile_policy({"x": ["a" * (256 * 1024)]}, scope="MessageBody")
    with pytest.raises(FilterError, match="FilterPolicyScope"):
        compile_policy({}, scope="Message")          # type: ignore[arg-type]


# -- Lambda's filter patterns on SQS records ----------------------------------------------------------------------

def record(message: Any, **extra: Any) -> dict[str, Any]:
    return {"messageId": "059f36b4-87a3-44ab-83d2-661975830a7d", "body": message,
            "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "1545082649183"},
            "messageAttributes": {}, "eventSource": "aws:sqs", **extra}


def test_pattern_on_the_json_body() -> None:
    pattern = compile_pattern({"body": {"RequestCode": ["BBBB"]}})
    assert pattern.matches(record({"RecordNumber": 1234, "RequestCode": "BBBB"}))
    assert not pattern.matches(record({"RecordNumber": 1234, "RequestCode": "AAAA"}))
    assert not pattern.matches(record('{"RequestCode": "BBBB"'))          # not JSON: stays a string
    numbers = compile_pattern('{"body": {"RecordNumber": [{"numeric": [">", 9999]}]}}')
    assert numbers.matches(record({"RecordNumber": 12345}))
    assert not numbers.matches(record({"RecordNumber": 999}))


def test_pattern_on_a_plain_text_body_and_on_record_attributes() -> None:
    assert compile_pattern({"body": ["hello"]}).matches(record("hello"))
    assert not compile_pattern({"body": ["hello"]}).matches(record({"hello": 1}))
    assert compile_pattern({"attributes": {"ApproximateReceiveCount": ["1"]}}).matches(record({}))
    assert not compile_pattern({"attributes": {"ApproximateReceiveCount": [1]}}).matches(record({}))   # text


def test_pattern_operators_as_lambdas_rule_syntax() -> None:
    def match(condition: list[Any], value: Any) -> bool:
        return compile_pattern({"body": {"v": condition}}).matches(record({"v": value} if value != ... else {}))

    assert match([None], None) and not match([None], ...)                              # null
    assert match([""], "") and not match([""], "x")                                    # empty
    assert match(["Alice"], "Alice") and not match(["Alice"], "alice")                 # equals
    assert match([{"equals-ignore-case": "alice"}], "ALICE")
    assert match([{"anything-but": ["Alice"]}], "Bob") and not match([{"anything-but": ["Alice"]}], "Alice")
    assert match([{"numeric": ["=", 100]}], 100) and not match([{"numeric": ["=", 100]}], 101)
    assert match([{"numeric": [">", 10, "<=", 20]}], 20) and not match([{"numeric": [">", 10, "<=", 20]}], 10)
    assert match([{"exists": True}], "x") and not match([{"exists": True}], ...)
    assert match([{"exists": False}], ...) and not match([{"exists": False}], "x")
    assert match([{"prefix": "us-"}], "us-east-1") and not match([{"prefix": "us-"}], "eu-west-1")
    assert match([{"suffix": ".jpg"}], "a.jpg") and not match([{"suffix": ".jpg"}], "a.png")
    assert match([{"prefix": {"equals-ignore-case": "EventB"}}], "eventbridge")
    assert match([{"suffix": {"equals-ignore-case": "TBRIDGE"}}], "EventBridge")
    assert match([{"numeric": ["=", 1.000001]}], 1.000001) and not match([{"numeric": ["=", 1.000001]}], 1)


def test_pattern_or_across_fields() -> None:
    pattern = compile_pattern({"body": {"$or": [{"Location": ["New York"]}, {"Day": ["Monday"]}]}})
    assert pattern.matches(record({"Location": "New York", "Day": "Sunday"}))
    assert pattern.matches(record({"Location": "Paris", "Day": "Monday"}))
    assert not pattern.matches(record({"Location": "Paris", "Day": "Sunday"}))


@pytest.mark.parametrize("pattern, message", [
    ({"body": {"x": [{"bogus": 1}]}}, "Unrecognized match type bogus (at key 'body.x')"),
    ({"body": {"x": [{"anything-but": {"prefix": "a"}}]}}, "Unsupported anything-but pattern: prefix"),
    ({"body": {"x": []}}, "Empty arrays are not allowed"),
    ({"body": "x"}, '"body" must be an object or an array'),
    ([{"body": ["x"]}], "Filter pattern must be a JSON object"),
    ("not json", "failed to parse JSON"),
    ({"body": {"x": ["a" * 4100]}}, "Filter pattern is larger than 4096 characters"),
])
def test_pattern_refusals_in_lambdas_words(pattern: Any, message: str) -> None:
    with pytest.raises(FilterError) as caught:
        compile_pattern(pattern)
    assert str(caught.value).startswith("Invalid filter pattern definition: ")
    assert message in str(caught.value)


# -- function.yaml ------------------------------------------------------------------------------------------------

def test_function_yaml_refuses_a_bad_filter_policy_naming_it() -> None:
    with pytest.raises(SpecError, match=r"filter_policy: Invalid parameter: FilterPolicy: Unrecognized match type"):
        FunctionSpec.parse("events:\n  - sns: {topic: t, filter_policy: {x: [{bogus: 1}]}}")
    with pytest.raises(SpecError, match="filter_policy: .*nested"):
        FunctionSpec.parse("events:\n  - sns: {topic: t, filter_policy: {x: {y: [a]}}}")
    spec = FunctionSpec.parse("events:\n  - sns: {topic: t, filter_policy_scope: MessageBody, "
                              "filter_policy: {x: {y: [a]}}}")
    assert spec.events[0].sns is not None


def test_function_yaml_refuses_a_bad_filter_pattern_naming_it() -> None:
    with pytest.raises(SpecError, match=r"filter_criteria\[0\]: Invalid filter pattern definition: "
                                        "Unrecognized match type bogus"):
        FunctionSpec.parse("events:\n  - sqs: {queue: q, filter_criteria: [{body: {x: [{bogus: 1}]}}]}")
    spec = FunctionSpec.parse("events:\n  - sqs: {queue: q, filter_criteria: [{body: {x: [new]}}]}")
    assert spec.events[0].sqs is not None


def test_odd_bodies_match_without_failing() -> None:
    deep: Any = "x"
    for _ in range(5000):
        deep = [deep]
    assert body({"k": ["x"]}, {"k": deep})
    assert not body({"k": [{"numeric": [">", 0]}]}, {"k": 10 ** 400})
    assert body({"k": [{"exists": True}]}, {"k": 10 ** 400})


def test_a_policy_nested_too_deeply_is_refused_not_crashed() -> None:
    deep: dict[str, Any] = {"k": ["x"]}
    for _ in range(100):
        deep = {"k": deep}
    with pytest.raises(FilterError, match="nested too deeply"):
        compile_policy(deep, scope="MessageBody")
    with pytest.raises(FilterError, match="nested too deeply"):
        compile_policy('{"k":' * 40_000 + '["x"]' + "}" * 40_000, scope="MessageBody")   # 240 KB
    ors: dict[str, Any] = {"k": ["x"]}
    for _ in range(100):
        ors = {"$or": [ors, {"j": ["y"]}]}
    with pytest.raises(FilterError, match="nested too deeply"):
        compile_pattern({"body": ors})
