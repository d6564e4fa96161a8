"""Computes for `spin_ms` milliseconds (CPU-bound), then answers with its process id. With `call`, it first
waits until `parties` invocations have announced themselves in `folder` (so that they all hold a sandbox),
then invokes that URL (another invocation of itself, through the gateway) and waits for the answer."""

import json
import os
import time
import urllib.request


def handler(event, context):
    nested = None
    if event.get("call"):
        open(os.path.join(event["folder"], context.aws_request_id), "w").close()
        deadline = time.monotonic() + 10
        while len(os.listdir(event["folder"])) < event["parties"] and time.monotonic() < deadline:
            time.sleep(0.01)
        request = urllib.request.Request(event["call"], data=json.dumps({"spin_ms": 1}).encode(), method="POST")
        with urllib.request.urlopen(request, timeout=20) as answer:
            nested = json.loads(answer.read())
    deadline = time.perf_counter() + event.get("spin_ms", 1) / 1000
    while time.perf_counter() < deadline:
        pass
    return {"pid": os.getpid(), "nested": nested}
