"""Asynchronous invocation: accept into Redis, run on RQ workers, retry, dead-letter, destinations."""
