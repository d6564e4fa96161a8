"""The checks of the SNS API's input, each refusing as SNS does (SnsError with SNS's code and status): message
size and structure, subjects, message attributes, topic and subscription attributes, filter policies, tags."""

from __future__ import annotations

import base64
import json
import math
import re
from typing import Any, Literal, Mapping

from ..functions.filters import FilterError, compile_policy

MAX_MESSAGE_BYTES = 256 * 1024      # SNS: the message and its attributes together
MAX_ATTRIBUTES = 10                 # SNS: message attributes per message
MAX_SUBJECT_CHARS = 100
MAX_BATCH = 10                      # PublishBatch entries
MAX_TAGS = 50
_ATTRIBUTE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,256}$")
_TOPIC_ATTRIBUTES = ("DisplayName", "Policy", "DeliveryPolicy")        # kept and shown; Lambent enforces none
Scope = Literal["MessageAttributes", "MessageBody"]


class SnsError(Exception):
    """An SNS error answer: `code` and `status` as botocore's SNS model names them; `message` says what to do."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def invalid(message: str) -> SnsError:
    return SnsError(400, "InvalidParameter", f"Invalid parameter: {message}")


def not_found(message: str) -> SnsError:
    return SnsError(404, "NotFound", message)


def checked_policy(text: str, scope: Scope) -> str:
    """The FilterPolicy text of a subscription, refused as SNS refuses one (naming FilterPolicy)."""
    if len(text.encode()) > MAX_MESSAGE_BYTES:
        raise invalid(f"FilterPolicy: the policy is larger than {MAX_MESSAGE_BYTES} bytes")
    try:
        policy = json.loads(text)
    except ValueError as exc:
        raise invalid(f"FilterPolicy: failed to parse JSON: {exc}") from None
    if not isinstance(policy, dict):
        raise invalid("FilterPolicy: the policy must be a JSON object")
    try:
        compile_policy(policy, scope=scope)
    except FilterError as exc:
        message = str(exc)              # filters.py words it as SNS does, "Invalid parameter: FilterPolicy: ..."
        raise SnsError(400, "InvalidParameter", message if message.startswith("Invalid parameter")
                       else f"Invalid parameter: FilterPolicy: {message}") from None
    return text


DELIVERY_POLICY = ('{"http":{"defaultHealthyRetryPolicy":{"minDelayTarget":20,"maxDelayTarget":20,"numRetries":3,'
                    '"numMaxDelayRetries":0,"numNoDelayRetries":0,"numMinDelayRetries":0,"backoffFunction":"linear"},'
                    '"disableSubscriptionOverrides":false,"defaultRequestPolicy":{"headerContentType":'
                    '"text/plain; charset=UTF-8"}}}')


def default_policy(topic_arn: str, account: str) -> str:
    """The policy SNS gives a new topic (Lambent enforces no topic policy: its keys decide; see the README)."""
    return json.dumps({"Version": "2008-10-17", "Id": "_default_policy_ID", "Statement": [{
        "Sid": "__default_statement_ID", "Effect": "Allow", "Principal": {"AWS": "*"},
        "Action": ["SNS:GetTopicAttributes", "SNS:SetTopicAttributes", "SNS:AddPermission", "SNS:RemovePermission",
                   "SNS:DeleteTopic", "SNS:Subscribe", "SNS:ListSubscriptionsByTopic", "SNS:Publish"],
        "Resource": topic_arn, "Condition": {"StringEquals": {"AWS:SourceOwner": account}}}]},
        separators=(",", ":"))


def topic_attributes(attributes: Mapping[str, str]) -> dict[str, str]:
    checked = {}
    for name, value in attributes.items():
        if name == "FifoTopic" and value.lower() == "false":
            continue
        if name not in _TOPIC_ATTRIBUTES:
            raise invalid(f"Attributes Reason: Lambent's topics take {', '.join(_TOPIC_ATTRIBUTES)}; "
                          f"'{name[:80]}' is not supported")
        if name == "DisplayName" and len(value) > 100:
            raise invalid("DisplayName: at most 100 characters")
        if name in ("Policy", "DeliveryPolicy") and value:
            try:
                json.loads(value)
            except ValueError:
                raise invalid(f"Attributes Reason: {name}: not valid JSON") from None
        checked[name] = value
    return checked


def checked_tags(tags: Mapping[str, str]) -> dict[str, str]:
    if len(tags) > MAX_TAGS:
        raise SnsError(400, "TagLimitExceeded", f"Could not complete request: tag quota of per resource exceeded "
                                                f"(at most {MAX_TAGS})")
    for key, value in tags.items():
        if not 1 <= len(key) <= 128 or len(value) > 256 or key.lower().startswith("aws:"):
            raise invalid(f"Tags: key '{key[:128]}' must be 1-128 characters, not starting with aws:, and its "
                          "value at most 256")
    return dict(tags)


def subscription_attributes(attributes: Mapping[str, str]) -> tuple[str | None, Scope]:
    """(FilterPolicy, FilterPolicyScope) of Subscribe's Attributes, refusing what a lambda subscription refuses."""
    for name in attributes:
        if name not in ("FilterPolicy", "FilterPolicyScope", "RawMessageDelivery"):
            raise invalid(f"Attributes Reason: Lambent's subscriptions take FilterPolicy, FilterPolicyScope and "
                          f"RawMessageDelivery (false); '{name[:80]}' is not supported")
    raw = attributes.get("RawMessageDelivery", "false").lower()
    if raw not in ("true", "false"):
        raise invalid("Attributes Reason: RawMessageDelivery: Invalid value [%s]. Must be true or false." % raw[:20])
    if raw == "true":
        raise invalid("Attributes Reason: Delivery protocol [lambda] does not support raw message delivery.")
    scope = attributes.get("FilterPolicyScope", "MessageAttributes")
    if scope not in ("MessageAttributes", "MessageBody"):
        raise invalid(f"Attributes Reason: FilterPolicyScope: Invalid value [{scope[:40]}]. Please use either "
                      "MessageBody or MessageAttributes")
    policy = attributes.get("FilterPolicy")
    if policy:
        checked_policy(policy, scope)  # type: ignore[arg-type]
    return policy or None, scope  # type: ignore[return-value]


def delivered_message(message: str, structure: str | None) -> str:
    """What a lambda subscriber gets: the message, or with MessageStructure json its `lambda` (else `default`)."""
    if message == "":
        raise invalid("Empty message")
    if structure is None:
        return message
    if structure != "json":
        raise invalid("MessageStructure: only 'json' is supported")
    try:
        parsed = json.loads(message)
    except ValueError:
        raise invalid("Message Structure - JSON message body failed to parse") from None
    if not isinstance(parsed, dict) or "default" not in parsed:
        raise invalid("Message Structure - No default entry in JSON message body")
    chosen = parsed.get("lambda", parsed["default"])
    if not isinstance(chosen, str):
        raise invalid("Message Structure - the 'default' and 'lambda' entries must be strings")
    return chosen


def body_of(message: str) -> Any:
    """The message as a MessageBody filter policy sees it: its JSON, or None when it is no JSON object."""
    try:
        parsed = json.loads(message)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def check_subject(subject: str) -> None:
    if not subject or len(subject) > MAX_SUBJECT_CHARS or not subject.isascii() or not subject.isprintable():
        raise invalid(f"Subject: 1-{MAX_SUBJECT_CHARS} printable ASCII characters, without line breaks")


def checked_attributes(attributes: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, str]]:
    """boto3's MessageAttributes ({name: {DataType, StringValue | BinaryValue}}) -> the event's ({name: {Type,
    Value}}, a Binary's Value base64), refused as SNS refuses them."""
    if len(attributes) > MAX_ATTRIBUTES:
        raise invalid(f"MessageAttributes: at most {MAX_ATTRIBUTES} message attributes")
    checked = {}
    for name, value in attributes.items():
        if (not _ATTRIBUTE_NAME.match(name) or name.startswith(".") or name.endswith(".") or ".." in name
                or name.lower().startswith(("aws.", "amazon."))):
            raise invalid(f"MessageAttributes: the name '{name[:256]}' is not valid: 1-256 letters, digits, '_', "
                          "'-' or '.', no '..', no '.' first or last, not starting with AWS. or Amazon.")
        data_type = value.get("DataType") or ""
        base = data_type.split(".", 1)[0]
        if base not in ("String", "Number", "Binary"):
            raise invalid(f"The message attribute '{name}' has an invalid message attribute type, the set of "
                          "supported type prefixes is Binary, Number, and String.")
        if base == "Binary":
            binary = value.get("BinaryValue")
            if not binary:
                raise invalid(f"The message attribute '{name}' must contain non-empty message attribute value "
                              f"for message attribute type '{data_type}'.")
            data = binary if isinstance(binary, bytes) else str(binary).encode()
            checked[name] = {"Type": data_type, "Value": base64.b64encode(data).decode()}
            continue
        text = value.get("StringValue")
        if text is None or text == "":
            raise invalid(f"The message attribute '{name}' must contain non-empty message attribute value for "
                          f"message attribute type '{data_type}'.")
        if base == "Number":
            _check_number(name, text)
        elif data_type == "String.Array":
            _check_array(name, text)
        checked[name] = {"Type": data_type, "Value": str(text)}
    return checked


def _check_number(name: str, text: str) -> None:
    """SNS's Number: -10^9..10^9 with at most 5 digits after the point."""
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    digits = text.partition(".")[2].rstrip("0") if "." in text and "e" not in text.lower() else ""
    if math.isnan(number) or math.isinf(number) or abs(number) > 1e9 or len(digits) > 5:
        raise invalid(f"Value {text[:60]} for parameter MessageAttributes is invalid. Reason: The message attribute "
                      f"'{name}' has an invalid numeric value: -1000000000 to 1000000000, at most 5 decimals.")


def _check_array(name: str, text: str) -> None:
    try:
        items = json.loads(text)
    except ValueError:
        items = None
    if not isinstance(items, list) or any(isinstance(item, (dict, list)) for item in items):
        raise invalid(f"The message attribute '{name}' has an invalid message attribute value: a String.Array is "
                      "a JSON array of strings, numbers, true, false and null")
