"""Fails on its first `fail_times` attempts (counted in a folder, since retries may use other sandboxes)."""

import os
import time


def handler(event, context):
    folder = event["folder"]
    with open(os.path.join(folder, f"{time.time_ns()}-{context.attempt}"), "w"):
        pass
    tries = len(os.listdir(folder))
    if tries <= event["fail_times"]:
        raise RuntimeError(f"failing on purpose, try {tries}")
    return {"tries": tries, "attempt": context.attempt}
