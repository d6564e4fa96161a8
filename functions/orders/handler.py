"""Takes orders off the SQS queue `orders`, as a handler written for AWS Lambda's SQS event source does.

A message whose body is not an order (JSON with a positive `quantity`) is reported in `batchItemFailures`: only
it goes back to the queue (and, after the queue's maxReceiveCount, to its dead-letter queue); the others are
deleted.
"""

import json
import logging

logger = logging.getLogger()
logger.setLevel(logging.INFO)


def handler(event, context):
    failures = []
    for record in event["Records"]:
        try:
            order = json.loads(record["body"])
            if not isinstance(order, dict) or int(order.get("quantity", 0)) <= 0:
                raise ValueError("an order needs a positive quantity")
        except ValueError as exc:
            logger.warning("bad order %s: %s", record["messageId"], exc)
            failures.append({"itemIdentifier": record["messageId"]})
            continue
        logger.info("order %s: %s x %s (received %s times)", record["messageId"], order["quantity"],
                    order.get("item", "?"), record["attributes"]["ApproximateReceiveCount"])
    return {"batchItemFailures": failures}
