"""A small JSON API behind a function URL: http://todo.lambda-url.localhost:8080/items (or /fn/todo/items).

State lives in the sandbox's memory, so it is per warm sandbox, as it would be on Lambda;
a real service keeps it in a database.
"""

import base64
import json

ITEMS = {}


def _response(status, body):
    return {"statusCode": status, "headers": {"content-type": "application/json"}, "body": json.dumps(body)}


def _body(event):
    """The request's body as text. A body whose content type is not textual (curl -d sends
    application/x-www-form-urlencoded) arrives base64-encoded, with isBase64Encoded true, as on AWS."""
    body = event.get("body") or ""
    if event.get("isBase64Encoded"):
        body = base64.b64decode(body).decode("utf-8")
    return body


def handler(event, context):
    method = event["requestContext"]["http"]["method"]
    parts = [part for part in event["rawPath"].split("/") if part]
    if parts[:1] != ["items"]:
        return _response(404, {"message": "try /items"})
    if len(parts) == 1 and method == "GET":
        return _response(200, {"items": list(ITEMS.values())})
    if len(parts) == 1 and method == "POST":
        try:
            item = json.loads(_body(event) or "{}")
        except ValueError:          # not JSON, not UTF-8 or not base64: each a ValueError
            return _response(400, {"message": "the body must be JSON"})
        if not isinstance(item, dict) or not isinstance(item.get("title"), str):
            return _response(400, {"message": "an item needs a 'title' string"})
        item_id = str(len(ITEMS) + 1)
        ITEMS[item_id] = {"id": item_id, "title": item["title"], "done": False}
        return _response(201, ITEMS[item_id])
    if len(parts) == 2 and method == "GET":
        item = ITEMS.get(parts[1])
        return _response(200, item) if item else _response(404, {"message": f"no item {parts[1]}"})
    return _response(405, {"message": f"{method} is not supported here"})
