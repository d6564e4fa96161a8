"""Computes for `spin_ms` milliseconds (CPU-bound), then answers with its process id."""

import os
import time


def handler(event, context):
    deadline = time.perf_counter() + event.get("spin_ms", 1) / 1000
    while time.perf_counter() < deadline:
        pass
    return {"pid": os.getpid()}
