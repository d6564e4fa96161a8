"""Greets the caller: reads an environment variable and the Lambda context."""

import logging
import os

logger = logging.getLogger()
logger.setLevel(logging.INFO)


def handler(event, context):
    name = event.get("name", "world") if isinstance(event, dict) else "world"
    greeting = os.environ.get("GREETING", "Hello")
    logger.info("greeting %s", name)
    return {
        "message": f"{greeting}, {name}!",
        "function": context.function_name,
        "version": context.function_version,
        "request_id": context.aws_request_id,
        "remaining_ms": context.get_remaining_time_in_millis(),
    }
