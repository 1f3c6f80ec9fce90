"""Who is calling: the client IP (trusted-proxy aware) and the client identity.

``X-Forwarded-For`` is believed only when the TCP peer is a trusted proxy
(``EDITFLOW_GATEWAY__TRUSTED_PROXIES``): the header is read right to left,
skipping trusted hops, and the first address that is not a trusted proxy is
the client. Anyone else could write any address into the header and dodge the
rate limit, so for them the peer address is the client.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(cidrs: Iterable[str]) -> tuple[Network, ...]:
    """CIDRs (or bare addresses) as networks; a wrong entry fails at start-up, loudly."""
    return tuple(ipaddress.ip_network(c.strip(), strict=False) for c in cidrs if c.strip())


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip().strip('"')
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _trusted(
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address | None, nets: tuple[Network, ...]
) -> bool:
    return addr is not None and any(addr in net for net in nets)


def client_ip(peer: str | None, forwarded_for: str | None, trusted: tuple[Network, ...]) -> str:
    """The client address of a request whose TCP peer is ``peer``."""
    peer_addr = _address(peer or "")
    if not forwarded_for or not _trusted(peer_addr, trusted):
        return str(peer_addr) if peer_addr else (peer or "unknown")
    hops = [h for h in forwarded_for.split(",") if h.strip()]
    for hop in reversed(hops):
        addr = _address(hop)
        if addr is None:  # garbage in the header: stop believing it here
            break
        if not _trusted(addr, trusted):
            return str(addr)
    # Every hop is a trusted proxy (or the chain is broken): the leftmost sane hop.
    for hop in hops:
        if (addr := _address(hop)) is not None:
            return str(addr)
    return str(peer_addr)


def header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    """One header of an ASGI scope (joined with commas when repeated, as HTTP allows)."""
    values = [v.decode("latin-1") for k, v in headers if k.lower() == name]
    return ", ".join(values) if values else None


@dataclass(frozen=True)
class Client:
    """The caller as the API sees it: its address and a stable identity for idempotency keys.

    With a token configured every authenticated caller holds the token, so
    the identity is a digest of it (a rotated token starts a new key space);
    without one the identity is the client IP.
    """

    ip: str
    identity: str


def identity_for(ip: str, token: str | None) -> str:
    if token:
        return "token:" + hashlib.sha256(token.encode()).hexdigest()[:16]
    return f"ip:{ip}"
