"""Loopback checks shared by every local server pyflight runs (debug endpoints, viewer).

Two questions, kept apart: is a *client address* loopback (who connected), and is a
``Host`` header a loopback *name* (which name the browser thinks it is talking to; a
page whose DNS name was rebound to 127.0.0.1 still sends its own name). Standard
library only, so the recording side may import it.
"""

from __future__ import annotations

import ipaddress

LOOPBACK_NAMES = frozenset({"localhost"})


def is_loopback_address(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 (with or without a zone) and IPv4-mapped loopback."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def host_header_name(header: str) -> str:
    """The host of a ``Host`` header without its port, lower case:
    ``[::1]:80`` -> ``::1``, ``LocalHost:8000`` -> ``localhost``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    if header.count(":") == 1:
        return header.partition(":")[0]
    return header.rstrip(".")


def is_loopback_name(host: str) -> bool:
    """``localhost`` or a loopback address, as a host name (no port)."""
    host = host.lower().rstrip(".")
    return host in LOOPBACK_NAMES or is_loopback_address(host)


def host_allowed(header: str | None, allowed: frozenset[str] | None = None) -> bool:
    """Whether a request's ``Host`` header names this server: a loopback name, or one of
    ``allowed`` (host names without ports, lower case). A request without a Host header
    (HTTP/1.0, a test client) is not one a browser sent, so it passes."""
    if header is None or not header.strip():
        return True
    name = host_header_name(header)
    return is_loopback_name(name) or (allowed is not None and name in allowed)
