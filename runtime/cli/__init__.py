"""`lambent`: run the roles (serve, up, worker, streams, scheduler) and talk to a running server."""

from __future__ import annotations

import sys

from . import client, dlq, invocation, roles  # noqa: F401  (each module adds its commands to the group)
from .base import cli

__all__ = ["cli", "main"]


def main() -> None:
    try:
        cli(standalone_mode=True)
    except KeyboardInterrupt:
        sys.exit(130)
