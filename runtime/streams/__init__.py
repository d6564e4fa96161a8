"""Kafka event source mappings: per-partition ordered batches, retries, bisect, partial failures, commits."""
