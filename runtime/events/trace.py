"""X-Ray trace headers, as Lambda hands them to a function in `_X_AMZN_TRACE_ID`.

Lambda gives every invocation a trace header: the caller's (`X-Amzn-Trace-Id`), passed through, or a new
one, unsampled. Tracing libraries (the X-Ray SDK, powertools' Tracer and Logger) read it: with `Sampled=0`
they record nothing and say nothing, and without a header at all they warn on every call.
"""

from __future__ import annotations

import os
import re
import time

_ROOT = re.compile(r"1-[0-9a-f]{8}-[0-9a-f]{24}")
_PARENT = re.compile(r"[0-9a-f]{16}")


# A hex digit of random bits -> the same digit with the two top bits set to RFC 4122's variant (10).
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def new_request_id() -> str:
    """A random (version 4) UUID, as `str(uuid.uuid4())` gives it, without building a UUID: every request
    gets one (the gateway's hot path)."""
    bits = os.urandom(16).hex()
    return f"{bits[:8]}-{bits[8:12]}-4{bits[13:16]}-{_VARIANT[bits[16]]}{bits[17:20]}-{bits[20:]}"


def new_root() -> str:
    """`1-<epoch seconds, 8 hex>-<96 random bits, 24 hex>`, X-Ray's trace id."""
    return f"1-{int(time.time()):08x}-{os.urandom(12).hex()}"


def trace_header(incoming: str | None = None) -> str:
    """The `_X_AMZN_TRACE_ID` of one invocation: the caller's Root, Parent and Sampled where it sent a valid
    one (passed through, as Lambda does for a function without active tracing), else a new unsampled trace."""
    if not incoming:            # most calls: a new trace, its root and parent from one draw of random bits
        bits = os.urandom(20).hex()
        return f"Root=1-{int(time.time()):08x}-{bits[:24]};Parent={bits[24:]};Sampled=0"
    fields: dict[str, str] = {}
    for part in (incoming or "").split(";"):
        key, _, value = part.strip().partition("=")
        fields[key.strip().lower()] = value.strip()
    root = fields.get("root", "")
    if not _ROOT.fullmatch(root):
        root = new_root()
    parent = fields.get("parent", "")
    if not _PARENT.fullmatch(parent):
        parent = os.urandom(8).hex()
    sampled = fields.get("sampled") if fields.get("sampled") in ("0", "1") else "0"
    return f"Root={root};Parent={parent};Sampled={sampled}"
