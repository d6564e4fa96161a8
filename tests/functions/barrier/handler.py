"""Each invocation announces itself in a folder and waits until `parties` have: only parallel runs pass."""

import os
import time


def handler(event, context):
    folder = event["folder"]
    open(os.path.join(folder, context.aws_request_id), "w").close()
    deadline = time.monotonic() + event.get("wait_s", 5)
    while len(os.listdir(folder)) < event["parties"]:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(os.listdir(folder))} of {event['parties']} ran at once")
        time.sleep(0.01)
    return {"pid": os.getpid()}
