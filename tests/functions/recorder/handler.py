"""Records each run as a file in the event's folder (named by request id, attempt and sandbox pid), then
sleeps `first_sleep_s` on the first attempt only: long enough, when asked, to be caught mid-run."""

import os
import time


def handler(event, context):
    name = f"{context.aws_request_id}.{context.attempt}.{os.getpid()}.{time.time_ns()}"
    open(os.path.join(event["folder"], name), "w").close()
    if context.attempt == 1:
        time.sleep(event.get("first_sleep_s", 0))
    return {"attempt": context.attempt}
