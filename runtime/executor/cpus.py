"""Which CPUs run what with `sandbox.separate_cpu`: the gateway alone on the highest CPU of its affinity,
the sandboxes of every role on the others.

Only the gateway pins itself (its wiring calls pin_server_cpu once, at start): it answers every request and
its latency suffers when a sandbox computes on its CPU. The other roles (worker, streams, scheduler) mostly wait
on their sandboxes and are left where the kernel puts them; were each to pin itself as the gateway does, they
would all take the same CPU. Every role computes the same sandbox CPUs, so the gateway's is left to it alone.
"""

from __future__ import annotations

import os

from ..config import Config

_unpinned: set[int] | None = None        # this process's CPUs before pin_server_cpu narrowed them to one


def pin_server_cpu(config: Config) -> None:
    """The gateway's: with separate_cpu and two CPUs or more, pin this process to the one its sandboxes leave."""
    global _unpinned
    available = _unpinned or os.sched_getaffinity(0)
    if config.sandbox.separate_cpu and len(available) >= 2:
        _unpinned = set(available)
        os.sched_setaffinity(0, {max(available)})


def sandbox_cpus(config: Config) -> set[int] | None:
    """The CPUs this process's sandboxes are pinned to: all of its affinity but the highest, which is the
    gateway's; None without separate_cpu (or with one CPU): sandboxes inherit this process's affinity."""
    available = _unpinned or os.sched_getaffinity(0)
    if not config.sandbox.separate_cpu or len(available) < 2:
        return None
    return available - {max(available)}


def all_cpus() -> set[int]:
    """The CPUs this process may use, before pin_server_cpu narrowed them."""
    return set(_unpinned or os.sched_getaffinity(0))
