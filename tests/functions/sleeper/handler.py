"""Announces its start in a folder, then sleeps: long enough to kill the worker running it."""

import os
import time


def handler(event, context):
    open(os.path.join(event["folder"], f"start-{context.attempt}-{os.getpid()}"), "w").close()
    time.sleep(event["sleep_s"])
    return {"attempt": context.attempt}
