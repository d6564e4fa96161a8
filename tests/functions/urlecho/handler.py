import base64
import json
import os


def handler(event, context):
    if event["rawPath"] == "/bare":
        return {"hello": "world"}
    if event["rawPath"] == "/binary":
        return {"statusCode": 200, "headers": {"content-type": "image/png"},
                "body": base64.b64encode(b"\x89PNG\x00\x01").decode(), "isBase64Encoded": True}
    if event["rawPath"] == "/cookies":
        return {"statusCode": 201, "cookies": ["a=1; Path=/", "b=2"], "body": "set"}
    if event["rawPath"] == "/teapot":          # a status as a string and a body that is not one: AWS takes both
        return {"statusCode": "418", "body": {"short": True, "stout": [1, 2]}}
    if event["rawPath"] == "/fail":
        raise RuntimeError("url handler failed")
    # The event itself, and the trace this invocation runs in, as Lambda sets it.
    return {"statusCode": 200, "headers": {"x-echo": "yes", "x-trace-env": os.environ.get("_X_AMZN_TRACE_ID", "")},
            "body": json.dumps(event)}
