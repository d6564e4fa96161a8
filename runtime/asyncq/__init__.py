"""Asynchronous invocation: accept into Redis, run on RQ workers, retry, dead-letter, destinations.

The state: record.py (the typed records, the only code that knows their Redis encoding), store.py (every
state change of a record, each one atomic step), dlq.py (a function's dead letters), policy.py (when to retry).
The worker role: worker.py, maintenance.py, rqworker.py, shutdown.py.
"""
