"""host:port, parsed and printed once for every listener and target (IPv6 in brackets)."""

from __future__ import annotations

import ipaddress


class AddressError(ValueError):
    """Not a host:port."""


def parse_host_port(addr: str) -> tuple[str, int]:
    """ "127.0.0.1:8080" → ("127.0.0.1", 8080); "[::1]:8080" → ("::1", 8080); port 0 picks a free one."""
    host, sep, port = addr.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise AddressError(f"{addr!r} is not HOST:PORT (IPv6 as [::1]:PORT, port 0-65535)")
    if host.startswith("["):
        if not host.endswith("]") or len(host) < 3:
            raise AddressError(f"{addr!r} is not HOST:PORT (unbalanced brackets)")
        host = host[1:-1]
    elif ":" in host:
        raise AddressError(f"{addr!r}: an IPv6 host goes in brackets, as [{host}]:{port}")
    return host, int(port)


def join_host_port(host: str, port: int) -> str:
    """The inverse of parse_host_port."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_loopback(host: str) -> bool:
    """Whether a listen host is reachable only from this machine: 127.0.0.0/8, ::1, "localhost".
    An empty host, 0.0.0.0, :: and any other name listen beyond it."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
