import os


def fields(obj):
    """An object of Lambda's context (ClientContext, Client, CognitoIdentity) as a dict of its attributes
    (ClientContext's `client`, an object itself, is reported on its own)."""
    if obj is None:
        return None
    return {name: getattr(obj, name) for name in type(obj).__slots__ if name != "client"}


def handler(event, context):
    print("echo got", event)
    return {
        "event": event,
        "context": {
            "aws_request_id": context.aws_request_id,
            "function_name": context.function_name,
            "function_version": context.function_version,
            "invoked_function_arn": context.invoked_function_arn,
            "memory_limit_in_mb": context.memory_limit_in_mb,
            "log_group_name": context.log_group_name,
            "log_stream_name": context.log_stream_name,
            "remaining_ms": context.get_remaining_time_in_millis(),
            "client_context": fields(context.client_context),
            "client": fields(getattr(context.client_context, "client", None)),
            "identity": fields(context.identity),
            "identity_type": type(context.identity).__name__,
        },
        "env": dict(os.environ),
        "cwd": os.getcwd(),
    }
