"""Who is at the other end of a loopback connection: the user that owns the peer's socket, from /proc/net/tcp.

A jailed function shares the host's network, so it reaches the gateway from 127.0.0.1 like any local
process. Where loopback callers are trusted (no admin key configured), a connection whose socket belongs to
the sandboxes' user is not: it is a function, not the server's operator.
"""

from __future__ import annotations

import ipaddress
import socket


def socket_owner(client: tuple[str, int], server: tuple[str, int]) -> int | None:
    """The uid owning the socket at `client` connected to `server`, both on this host; None when not found."""
    try:
        family = ipaddress.ip_address(client[0]).version
    except ValueError:
        return None
    wanted = (_hex(client, family), _hex(server, family))
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as handle:
                next(handle, None)
                for line in handle:
                    fields = line.split()
                    if len(fields) > 7 and (fields[1], fields[2]) == wanted:
                        return int(fields[7])
        except OSError:
            continue
    return None


def _hex(address: tuple[str, int], family: int) -> str:
    """An address as /proc/net/tcp writes it: the packed address as 32-bit words in host order, then the port."""
    host, port = address
    if family == 4:
        packed = socket.inet_pton(socket.AF_INET, host)
        return f"{int.from_bytes(packed, 'little'):08X}:{port:04X}"
    packed = socket.inet_pton(socket.AF_INET6, host)
    words = "".join(f"{int.from_bytes(packed[i:i + 4], 'little'):08X}" for i in range(0, 16, 4))
    return f"{words}:{port:04X}"
