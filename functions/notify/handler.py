"""Subscribed to the SNS-style topic `order-events` (function.yaml), as a handler for Lambda's SNS events is.

Publish with the AWS CLI or boto3 against the gateway (README, "SNS-style topics"); only messages with the
attribute kind=shipped reach this function, each as an asynchronous invocation.
"""

import logging

logger = logging.getLogger()
logger.setLevel(logging.INFO)


def handler(event, context):
    for record in event["Records"]:
        sns = record["Sns"]
        logger.info("%s on %s: %s", sns["Subject"] or "(no subject)", sns["TopicArn"], sns["Message"])
    return {"notified": len(event["Records"])}
