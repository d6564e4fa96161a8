"""Structured server logs and per-invocation log capture."""
