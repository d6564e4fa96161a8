"""Lambda's `aws:sns` event: what a function subscribed to a topic receives for one published message.

Field for field as Lambda delivers it (`Records[0].Sns`: Type Notification, MessageId, TopicArn, Subject or null,
Message, Timestamp, SignatureVersion, Signature, SigningCertUrl, UnsubscribeUrl, MessageAttributes as
`{Type, Value}`). One difference, said in the README: AWS signs with an RSA key whose certificate is at
SigningCertUrl; Lambent has no such certificate, so `Signature` is the base64 HMAC-SHA256, under a secret of the
server's (topics/store.py), of the string SNS signs, and SigningCertUrl is a page of the gateway that says so.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

from .destination import iso_ms

SIGNATURE_VERSION = "1"
SIGNING_CERT_PATH = "/sns/signing-cert"       # the gateway page that SigningCertUrl names


def string_to_sign(*, message: str, message_id: str, subject: str | None, timestamp: str, topic_arn: str) -> str:
    """The canonical form SNS signs for a Notification: name and value lines in this order, Subject only when
    the message has one (AWS's "Verifying the signatures of Amazon SNS messages")."""
    fields = [("Message", message), ("MessageId", message_id)]
    if subject is not None:
        fields.append(("Subject", subject))
    fields += [("Timestamp", timestamp), ("TopicArn", topic_arn), ("Type", "Notification")]
    return "".join(f"{name}\n{value}\n" for name, value in fields)


def signature(key: bytes, canonical: str) -> str:
    return base64.b64encode(hmac.new(key, canonical.encode(), hashlib.sha256).digest()).decode()


def sns_event(*, subscription_arn: str, message_id: str, topic_arn: str, subject: str | None, message: str,
              timestamp_ms: int, attributes: dict[str, dict[str, str]], signing_key: bytes,
              base_url: str) -> dict[str, Any]:
    """The whole event (one record, as Lambda sends one per message). `base_url`: the gateway's URL, which the
    SigningCertUrl and UnsubscribeUrl point at."""
    timestamp = iso_ms(timestamp_ms)
    canonical = string_to_sign(message=message, message_id=message_id, subject=subject, timestamp=timestamp,
                               topic_arn=topic_arn)
    return {"Records": [{
        "EventVersion": "1.0",
        "EventSubscriptionArn": subscription_arn,
        "EventSource": "aws:sns",
        "Sns": {
            "Type": "Notification",
            "MessageId": message_id,
            "TopicArn": topic_arn,
            "Subject": subject,
            "Message": message,
            "Timestamp": timestamp,
            "SignatureVersion": SIGNATURE_VERSION,
            "Signature": signature(signing_key, canonical),
            "SigningCertUrl": f"{base_url}{SIGNING_CERT_PATH}",
            "UnsubscribeUrl": f"{base_url}/?Action=Unsubscribe&SubscriptionArn={subscription_arn}",
            "MessageAttributes": attributes,
        },
    }]}
