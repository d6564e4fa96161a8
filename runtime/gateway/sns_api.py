"""Amazon SNS's Query API at `POST /`: form-encoded `Action=...`, XML answers and SNS's error codes, so that
`boto3.client("sns", endpoint_url=<gateway>)` and `aws sns ...` work unchanged on the Lambda API's URL.

Shapes and names are botocore's SNS model (2010-03-31). The guard (guard.py) reads the form first, to know what
the action needs (Publish and PublishBatch an invoke key when `require_invoke_key`, every other action admin),
and leaves the parsed form in the request's state; topics/store.py does the work, in a thread.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
from typing import Any, Callable, Mapping
from urllib.parse import parse_qsl
from xml.sax.saxutils import escape

from fastapi import APIRouter, Request, Response
from fastapi.responses import PlainTextResponse

from ..events.sns import SIGNING_CERT_PATH
from ..observability.outage import UNREACHABLE
from ..topics.checks import SnsError, invalid
from ..topics.store import BatchEntry, Topics
from .common import header, read_body, request_id, services
from .errors import BodyTooLarge
from .unavailable import RETRY_AFTER_S

log = logging.getLogger(__name__)
router = APIRouter()

NAMESPACE = "http://sns.amazonaws.com/doc/2010-03-31/"
# A 256 KiB message percent-encodes to at most three times its bytes; the rest of a form (attributes, ARNs, a
# batch's other fields) fits in 64 KiB. Bodies past this are refused before they are read further.
MAX_BODY_BYTES = 3 * 256 * 1024 + 64 * 1024
MAX_FIELDS = 1000                          # a batch of 10 entries with 10 attributes each is under 400 fields
PUBLISH_ACTIONS = frozenset({"Publish", "PublishBatch"})
# The characters SNS accepts in a message (XML's): anything else could not travel in an XML answer either.
_NOT_XML = re.compile("[^\x09\x0a\x0d\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")

Params = Mapping[str, str]


class FormError(ValueError):
    """A request body that is no form of UTF-8 text."""


def parse_form(body: bytes, query: str = "") -> dict[str, str]:
    """The parameters of a Query API request: the query string's, then the form body's (which win)."""
    try:
        pairs = parse_qsl(query, keep_blank_values=True, max_num_fields=MAX_FIELDS, errors="strict")
        pairs += parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=MAX_FIELDS, errors="strict")
    except (UnicodeDecodeError, ValueError) as exc:
        raise FormError(f"the body is not a form of UTF-8 text (application/x-www-form-urlencoded, at most "
                        f"{MAX_FIELDS} fields): {exc}") from None
    for name, value in pairs:
        if _NOT_XML.search(name) or _NOT_XML.search(value):
            raise FormError(f"{name[:100]!r} holds a character SNS does not accept (control characters other "
                            "than tab, line feed and carriage return)")
    return dict(pairs)


def xml_error(code: str, message: str, rid: str, *, sender: bool = True) -> bytes:
    """SNS's error document, which botocore reads (`Error.Code`, `Error.Message`)."""
    return (f'<ErrorResponse xmlns="{NAMESPACE}"><Error><Type>{"Sender" if sender else "Receiver"}</Type>'
            f"<Code>{escape(code)}</Code><Message>{escape(message)}</Message></Error>"
            f"<RequestId>{escape(rid)}</RequestId></ErrorResponse>").encode()


def _error(status: int, code: str, message: str, rid: str, *, sender: bool = True) -> Response:
    return Response(xml_error(code, message, rid, sender=sender), status_code=status, media_type="text/xml",
                    headers={"x-amzn-RequestId": rid})


def _answer(action: str, result: str | None, rid: str) -> Response:
    inner = "" if result is None else f"<{action}Result>{result}</{action}Result>"
    body = (f'<{action}Response xmlns="{NAMESPACE}">{inner}<ResponseMetadata><RequestId>{rid}</RequestId>'
            f"</ResponseMetadata></{action}Response>")
    return Response(body.encode(), media_type="text/xml", headers={"x-amzn-RequestId": rid})


# -- reading the form --------------------------------------------------------------------------


def _required(params: Params, name: str) -> str:
    value = params.get(name)
    if not value:
        raise invalid(f"{name} Reason: no value for required parameter")
    return value


def _group(params: Params, prefix: str, kind: str) -> list[dict[str, str]]:
    """`Prefix.kind.N.rest=value` -> one dict of `rest` -> value per N, in N's order (`rest` "" for a list of
    plain values: TagKeys.member.N)."""
    head = f"{prefix}.{kind}."
    found: dict[int, dict[str, str]] = {}
    for key, value in params.items():
        if key.startswith(head):
            index, _, rest = key[len(head):].partition(".")
            if index.isdigit():
                found.setdefault(int(index), {})[rest] = value
    return [found[index] for index in sorted(found)]


def _map(params: Params, prefix: str) -> dict[str, str]:
    """A map parameter (`Attributes.entry.N.key` / `.value`)."""
    return {entry["key"]: entry.get("value", "") for entry in _group(params, prefix, "entry") if "key" in entry}


def _message_attributes(params: Params, prefix: str = "MessageAttributes") -> dict[str, dict[str, Any]]:
    """`MessageAttributes.entry.N.Name` / `.Value.DataType` / `.Value.StringValue` / `.Value.BinaryValue` (base64)
    -> boto3's shape."""
    attributes: dict[str, dict[str, Any]] = {}
    for entry in _group(params, prefix, "entry"):
        name = entry.get("Name", "")
        value: dict[str, Any] = {"DataType": entry.get("Value.DataType", "")}
        if "Value.StringValue" in entry:
            value["StringValue"] = entry["Value.StringValue"]
        if "Value.BinaryValue" in entry:
            try:
                value["BinaryValue"] = base64.b64decode(entry["Value.BinaryValue"], validate=True)
            except (binascii.Error, ValueError):
                raise invalid(f"MessageAttributes: the BinaryValue of '{name[:256]}' is not base64") from None
        attributes[name] = value
    return attributes


def _tags(params: Params) -> dict[str, str]:
    return {entry.get("Key", ""): entry.get("Value", "") for entry in _group(params, "Tags", "member")}


# -- XML pieces ----------------------------------------------------------------------------------


def _e(tag: str, text: str | None) -> str:
    return "" if text is None else f"<{tag}>{escape(text)}</{tag}>"


def _entries(tag: str, mapping: Mapping[str, str]) -> str:
    items = "".join(f"<entry><key>{escape(key)}</key><value>{escape(value)}</value></entry>"
                    for key, value in mapping.items())
    return f"<{tag}>{items}</{tag}>"


def _members(tag: str, items: list[dict[str, Any]]) -> str:
    members = "".join("<member>" + "".join(_e(key, str(value).lower() if isinstance(value, bool) else str(value))
                                           for key, value in item.items()) + "</member>" for item in items)
    return f"<{tag}>{members}</{tag}>"


def _next(token: str | None) -> str:
    return _e("NextToken", token)


# -- the actions -----------------------------------------------------------------------------------
# Each takes the store, the form and the caller's trace header; returns its Result's XML (None: it has none).


def _create_topic(topics: Topics, params: Params, trace: str | None) -> str | None:
    return _e("TopicArn", topics.create(_required(params, "Name"), _map(params, "Attributes"), _tags(params)))


def _delete_topic(topics: Topics, params: Params, trace: str | None) -> str | None:
    topics.delete(_required(params, "TopicArn"))
    return None


def _list_topics(topics: Topics, params: Params, trace: str | None) -> str | None:
    arns, token = topics.list_topics(params.get("NextToken"))
    return _members("Topics", [{"TopicArn": arn} for arn in arns]) + _next(token)


def _get_topic_attributes(topics: Topics, params: Params, trace: str | None) -> str | None:
    return _entries("Attributes", topics.attributes(_required(params, "TopicArn")))


def _set_topic_attributes(topics: Topics, params: Params, trace: str | None) -> str | None:
    topics.set_attribute(_required(params, "TopicArn"), _required(params, "AttributeName"),
                         params.get("AttributeValue", ""))
    return None


def _subscribe(topics: Topics, params: Params, trace: str | None) -> str | None:
    # A lambda subscription needs no confirmation: its ARN is answered whatever ReturnSubscriptionArn says.
    arn = topics.subscribe(_required(params, "TopicArn"), _required(params, "Protocol"), params.get("Endpoint"),
                           _map(params, "Attributes"))
    return _e("SubscriptionArn", arn)


def _unsubscribe(topics: Topics, params: Params, trace: str | None) -> str | None:
    topics.unsubscribe(_required(params, "SubscriptionArn"))
    return None


def _list_subscriptions(topics: Topics, params: Params, trace: str | None) -> str | None:
    items, token = topics.list_subscriptions(None, params.get("NextToken"))
    return _members("Subscriptions", items) + _next(token)


def _list_subscriptions_by_topic(topics: Topics, params: Params, trace: str | None) -> str | None:
    items, token = topics.list_subscriptions(_required(params, "TopicArn"), params.get("NextToken"))
    return _members("Subscriptions", items) + _next(token)


def _get_subscription_attributes(topics: Topics, params: Params, trace: str | None) -> str | None:
    return _entries("Attributes", topics.subscription_attributes(_required(params, "SubscriptionArn")))


def _set_subscription_attributes(topics: Topics, params: Params, trace: str | None) -> str | None:
    topics.set_subscription_attribute(_required(params, "SubscriptionArn"), _required(params, "AttributeName"),
                                      params.get("AttributeValue"))
    return None


def _publish(topics: Topics, params: Params, trace: str | None) -> str | None:
    topic_arn, target_arn = params.get("TopicArn"), params.get("TargetArn")
    if params.get("PhoneNumber"):
        raise invalid("PhoneNumber: Lambent's topics deliver to functions; give a TopicArn")
    if topic_arn and target_arn:
        raise invalid("TopicArn or TargetArn Reason: Both TopicArn and TargetArn specified. Use only one or the other")
    arn = topic_arn or target_arn
    if not arn:
        raise invalid("TopicArn or TargetArn Reason: no value for required parameter")
    if "Message" not in params:
        raise invalid("Message Reason: no value for required parameter")
    message_id = topics.publish(topics.topic_of(arn, "TopicArn" if topic_arn else "TargetArn"), params["Message"],
                                subject=params.get("Subject"), attributes=_message_attributes(params),
                                structure=params.get("MessageStructure") or None, trace_id=trace)
    return _e("MessageId", message_id)


def _publish_batch(topics: Topics, params: Params, trace: str | None) -> str | None:
    entries = []
    for item in _group(params, "PublishBatchRequestEntries", "member"):
        entries.append(BatchEntry(id=item.get("Id", ""), message=item.get("Message", ""), subject=item.get("Subject"),
                                  attributes=_message_attributes(item), structure=item.get("MessageStructure") or None))
    successful, failed = topics.publish_batch(_required(params, "TopicArn"), entries, trace_id=trace)
    return _members("Successful", successful) + _members("Failed", failed)


def _tag_resource(topics: Topics, params: Params, trace: str | None) -> str | None:
    topics.tag(_required(params, "ResourceArn"), _tags(params))
    return ""


def _untag_resource(topics: Topics, params: Params, trace: str | None) -> str | None:
    keys = [entry.get("", "") for entry in _group(params, "TagKeys", "member")]
    topics.untag(_required(params, "ResourceArn"), keys)
    return ""


def _list_tags_for_resource(topics: Topics, params: Params, trace: str | None) -> str | None:
    tags = topics.tags(_required(params, "ResourceArn"))
    return _members("Tags", [{"Key": key, "Value": value} for key, value in tags.items()])


Action = Callable[[Topics, Params, str | None], str | None]
ACTIONS: dict[str, Action] = {
    "CreateTopic": _create_topic, "DeleteTopic": _delete_topic, "ListTopics": _list_topics,
    "GetTopicAttributes": _get_topic_attributes, "SetTopicAttributes": _set_topic_attributes,
    "Subscribe": _subscribe, "Unsubscribe": _unsubscribe, "ListSubscriptions": _list_subscriptions,
    "ListSubscriptionsByTopic": _list_subscriptions_by_topic,
    "GetSubscriptionAttributes": _get_subscription_attributes,
    "SetSubscriptionAttributes": _set_subscription_attributes,
    "Publish": _publish, "PublishBatch": _publish_batch,
    "TagResource": _tag_resource, "UntagResource": _untag_resource, "ListTagsForResource": _list_tags_for_resource,
}


def _topics(request: Request) -> Topics:
    """The gateway's Topics, made on first use over the services' blocking Redis client."""
    state = request.app.state
    if getattr(state, "topics", None) is None:
        svc = services(request)
        state.topics = Topics(svc.blocking_redis, svc.config, catalog=svc.catalog, asyncq=svc.asyncq)
    return state.topics


@router.api_route("/", methods=["GET", "POST"], tags=["sns"],
                  summary="Amazon SNS's Query API (Action=CreateTopic, Subscribe, Publish, ...; XML answers)")
async def sns_query(request: Request) -> Response:
    rid = request_id(request)
    params = request.scope.get("state", {}).get("sns_params")
    if params is None:        # the guard could not parse it, or did not need to: read it here
        try:
            body = await read_body(request, MAX_BODY_BYTES)
            params = parse_form(body, request.scope.get("query_string", b"").decode("latin-1"))
        except BodyTooLarge:
            return _error(400, "InvalidParameter", f"Invalid parameter: the request is larger than {MAX_BODY_BYTES} "
                          "bytes (a message is at most 262144)", rid)
        except FormError as exc:
            return _error(400, "InvalidParameter", f"Invalid parameter: {exc}", rid)
    action_name = params.get("Action")
    if not action_name:
        return _error(400, "MissingAction", "the request names no Action (Action=Publish&Version=2010-03-31, ...)",
                      rid)
    action = ACTIONS.get(action_name)
    if action is None:
        return _error(400, "InvalidAction", f"The action {action_name[:100]} is not valid for this web service: "
                      f"Lambent's SNS API serves {', '.join(sorted(ACTIONS))}", rid)
    svc = services(request)
    if svc.health.down:
        return _unavailable(request, svc.health.unavailable(), rid)
    topics = _topics(request)
    try:
        result = await asyncio.to_thread(action, topics, params, header(request, b"x-amzn-trace-id"))
    except SnsError as exc:
        return _error(exc.status, exc.code, exc.message, rid)
    except UNREACHABLE as exc:
        return _unavailable(request, exc, rid)
    except Exception:      # the one broad catch of this API: SNS's own answer, the traceback in the log
        log.exception("SNS action failed", extra={"action": action_name, "request_id": rid})
        return _error(500, "InternalError", "the server failed to do this action; its log says why", rid,
                      sender=False)
    return _answer(action_name, result, rid)


def _unavailable(request: Request, exc: BaseException, rid: str) -> Response:
    """Redis is not reachable: 503 (botocore retries it), in SNS's shape."""
    health = services(request).health
    health.failed(exc)
    response = _error(503, "ServiceUnavailable", health.message(), rid, sender=False)
    response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response


@router.get(SIGNING_CERT_PATH, tags=["sns"], summary="What the Signature of Lambent's aws:sns events is")
async def signing_cert() -> Response:
    return PlainTextResponse(
        "Lambent signs the aws:sns events it delivers with HMAC-SHA256 under a secret of the server's (kept in "
        "Redis), over the string SNS signs (Message, MessageId, Subject, Timestamp, TopicArn, Type), base64 in "
        "Signature. There is no certificate: AWS's SignatureVersion 1 (RSA, SHA1) cannot be checked here, and "
        "the events come from the server itself, never over the network from a third party.\n")
