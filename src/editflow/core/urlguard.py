"""The SSRF guard of the control plane: which URLs editflow may connect to, and how.

One policy for every URL a user hands editflow (image URLs at the gateway and
the bridge, callback webhooks, the alert webhook), dependency-light so the
gateway and the operator use it without importing the worker (no torch):

1. only the schemes the caller allows (``http``/``https``), a host, a valid port;
2. the host is resolved once (:class:`CachedResolver`: time-limited, cached
   with a TTL in a bounded table, concurrent lookups of one name shared);
   *every* address must be public — not loopback, private, link-local (the
   169.254.169.254 metadata service), CGNAT, multicast, reserved or
   unspecified, IPv4-mapped and NAT64 forms unwrapped first — unless the host
   or its network is allow-listed (:class:`AllowList`);
3. the returned :class:`Target` carries the one checked address: a caller
   connects to that IP and keeps the name for ``Host`` and TLS SNI/certificate
   checks (:meth:`Target.pinned`), so a DNS answer that changes after the check
   (DNS rebinding) cannot move the connection.

DNS outcomes follow the error taxonomy: a definite "no such host" (NXDOMAIN,
no address) is :class:`HostNotFound` (permanent: the applicant must fix the
URL); anything else — a timeout, SERVFAIL, no resolver — is
:class:`LookupFailed` (retriable: the same URL may resolve in a minute).

The worker's fetch (``editflow.inference.fetch``) applies the same address
rules again as the last line, right before it downloads.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from editflow.core.errors import InvalidInputError, UnsafeSourceError, UpstreamError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
#: getaddrinfo answers that mean "this name has no address", not "DNS is unwell".
_NO_SUCH_HOST = frozenset(
    code for code in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", None)) if code is not None
)


class HostNotFound(InvalidInputError):
    """DNS said definitely: the name does not exist or has no address (permanent)."""

    code = "host_not_found"


class LookupFailed(UpstreamError):
    """DNS did not answer in time or failed temporarily: try again later (retriable)."""

    code = "dns_unavailable"


# -- the address rules (pure) ---------------------------------------------------------------
def unwrap(ip: IPAddress) -> IPAddress:
    """The IPv4 address hidden in an IPv4-mapped or NAT64 IPv6 address, else ``ip``."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def address_problem(ip: IPAddress) -> str | None:
    """Why ``ip`` must not be connected to (``None`` if it is a public address)."""
    ip = unwrap(ip)
    for attr, why in (
        ("is_loopback", "loopback"),
        ("is_link_local", "link-local (cloud metadata lives here)"),
        ("is_multicast", "multicast"),
        ("is_unspecified", "unspecified"),
        ("is_reserved", "reserved"),
        ("is_private", "private"),
    ):
        if getattr(ip, attr):
            return why
    if not ip.is_global:
        return "not globally routable"
    return None


def _normal_host(host: str) -> str:
    return host.lower().rstrip(".")


@dataclass(frozen=True)
class AllowList:
    """Hosts and networks an operator exempted from the address rules on purpose."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[Network, ...] = ()

    @classmethod
    def parse(cls, hosts: Iterable[str] = (), cidrs: Iterable[str] = ()) -> AllowList:
        """From settings lists; a malformed CIDR is a configuration error, raised at once."""
        return cls(
            hosts=frozenset(_normal_host(h) for h in hosts if h.strip()),
            networks=tuple(ipaddress.ip_network(c.strip(), strict=False) for c in cidrs),
        )

    def allows(self, host: str, ip: IPAddress) -> bool:
        if _normal_host(host) in self.hosts:
            return True
        return any(unwrap(ip) in net or ip in net for net in self.networks)


def check_address(host: str, ip: IPAddress, allow: AllowList, *, field: str) -> None:
    """Raise :class:`UnsafeSourceError` naming ``field`` unless ``ip`` may be used."""
    if allow.allows(host, ip):
        return
    if why := address_problem(ip):
        shown = host if host == str(ip) else f"{host} ({ip})"
        raise UnsafeSourceError(
            f"refusing to connect to {shown}: the address is {why}. Use a public URL, or ask "
            "the operator to allow-list the host or network",
            field=field,
        )


# -- parsing ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Parsed:
    """A URL's parts that the guard decides on."""

    url: str
    scheme: str
    host: str
    port: int
    literal: IPAddress | None


def parse_url(url: str, *, field: str, schemes: Iterable[str] = ("http", "https")) -> Parsed:
    """Scheme, host and port of ``url``; :class:`InvalidInputError` naming ``field`` if bad."""
    allowed = tuple(schemes)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidInputError(f"malformed URL: {exc}", field=field) from exc
    scheme = parts.scheme.lower()
    if scheme not in allowed:
        raise InvalidInputError(
            f"unsupported URL scheme {parts.scheme or '(none)'!r}: use " + " or ".join(allowed),
            field=field,
        )
    host = parts.hostname
    if not host:
        raise InvalidInputError("the URL has no host", field=field)
    try:
        literal: IPAddress | None = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        literal = None
        try:  # a name DNS could never carry is the caller's mistake, not a DNS outage
            host.encode("idna")
        except UnicodeError as exc:
            raise InvalidInputError(
                f"the host {host!r} is not a valid host name ({exc})", field=field
            ) from exc
    return Parsed(url, scheme, host, port or (443 if scheme == "https" else 80), literal)


def check_literal(url: str, allow: AllowList, *, field: str, schemes: Iterable[str]) -> Parsed:
    """The checks that need no DNS: syntax, and the address when the host is an IP literal.

    For places that must decide without a network round trip (an EditJob
    spec); the full check is :meth:`UrlGuard.check`.
    """
    parsed = parse_url(url, field=field, schemes=schemes)
    if parsed.literal is not None:
        check_address(parsed.host, parsed.literal, allow, field=field)
    return parsed


# -- resolving --------------------------------------------------------------------------------
Resolve = Callable[[str, int], Awaitable[list[IPAddress]]]


async def system_resolve(host: str, port: int) -> list[IPAddress]:
    """Every address the system resolver gives ``host``; DNS errors mapped to the taxonomy."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        if exc.errno in _NO_SUCH_HOST:
            raise HostNotFound(f"the host {host} does not exist (DNS: {exc.strerror})") from exc
        raise LookupFailed(f"DNS lookup of {host} failed temporarily: {exc.strerror}") from exc
    except UnicodeError as exc:
        raise HostNotFound(f"the host {host!r} is not a valid host name ({exc})") from exc
    except OSError as exc:
        raise LookupFailed(f"DNS lookup of {host} failed: {exc}") from exc
    seen: list[IPAddress] = []
    for *_, sockaddr in infos:
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if ip not in seen:
            seen.append(ip)
    if not seen:
        raise HostNotFound(f"the host {host} has no address")
    return seen


@dataclass
class CachedResolver:
    """Time-limited, cached lookups: a hot host costs one lookup per ``ttl_seconds``.

    Answers (and definite "no such host" answers, for ``negative_ttl_seconds``)
    are kept in an LRU table of at most ``max_entries`` names; temporary
    failures are never cached. Concurrent lookups of one name share one query.
    ``resolve`` is the seam tests use to simulate DNS answers and failures.
    """

    resolve: Resolve = system_resolve
    timeout_seconds: float = 1.0
    ttl_seconds: float = 60.0
    negative_ttl_seconds: float = 30.0
    max_entries: int = 4096
    clock: Callable[[], float] = time.monotonic
    _cache: OrderedDict[str, tuple[float, list[IPAddress] | HostNotFound]] = field(
        default_factory=OrderedDict, repr=False
    )
    _inflight: dict[str, asyncio.Future[list[IPAddress]]] = field(default_factory=dict, repr=False)
    lookups: int = 0

    async def __call__(self, host: str, port: int) -> list[IPAddress]:
        key = _normal_host(host)
        hit = self._cache.get(key)
        if hit is not None and hit[0] > self.clock():
            self._cache.move_to_end(key)
            if isinstance(hit[1], HostNotFound):
                raise HostNotFound(hit[1].message)
            return list(hit[1])
        if (pending := self._inflight.get(key)) is not None:
            return list(await asyncio.shield(pending))
        future: asyncio.Future[list[IPAddress]] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            answer = await self._lookup(host, port)
        except BaseException as exc:
            if isinstance(exc, HostNotFound):
                self._remember(key, exc, self.negative_ttl_seconds)
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning without waiters
            raise
        else:
            self._remember(key, answer, self.ttl_seconds)
            future.set_result(answer)
            return list(answer)
        finally:
            del self._inflight[key]

    async def _lookup(self, host: str, port: int) -> list[IPAddress]:
        self.lookups += 1
        try:
            async with asyncio.timeout(self.timeout_seconds):
                return await self.resolve(host, port)
        except TimeoutError as exc:
            raise LookupFailed(
                f"DNS lookup of {host} did not answer within {self.timeout_seconds:g}s"
            ) from exc

    def _remember(self, key: str, value: list[IPAddress] | HostNotFound, ttl: float) -> None:
        if ttl <= 0 or self.max_entries <= 0:
            return
        self._cache[key] = (self.clock() + ttl, value)
        self._cache.move_to_end(key)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)


# -- the guard --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """A checked URL and the one address to connect to."""

    url: str
    scheme: str
    host: str
    port: int
    ip: IPAddress

    def pinned(self) -> tuple[str, dict[str, str], dict[str, str]]:
        """``(url, headers, extensions)`` for an httpx request that dials exactly :attr:`ip`.

        The URL names the IP, ``Host`` keeps the name (with a non-default
        port), and the ``sni_hostname`` extension makes TLS send and verify
        the name, so the certificate check is the same as without pinning.
        """
        parts = urlsplit(self.url)
        ip = f"[{self.ip}]" if self.ip.version == 6 else str(self.ip)
        default = (self.scheme == "https" and self.port == 443) or (
            self.scheme == "http" and self.port == 80
        )
        netloc = ip if parts.port is None else f"{ip}:{parts.port}"
        host_header = self.host if default else f"{self.host}:{self.port}"
        if ":" in self.host:  # an IPv6 literal keeps its brackets in Host
            host_header = f"[{self.host}]" if default else f"[{self.host}]:{self.port}"
        url = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
        extensions = {}
        if self.scheme == "https":
            extensions["sni_hostname"] = self.host
        return url, {"Host": host_header}, extensions


class UrlGuard:
    """:meth:`check` a URL against one allow-list with one (cached) resolver."""

    def __init__(
        self,
        allow: AllowList = AllowList(),
        resolver: Resolve | None = None,
        *,
        schemes: Iterable[str] = ("http", "https"),
    ) -> None:
        self.allow = allow
        self.resolver = resolver or CachedResolver()
        self.schemes = tuple(schemes)

    async def check(self, url: str, *, field: str) -> Target:
        """Parse, resolve once and check ``url``; the target's IP is the only one to dial.

        Raises :class:`InvalidInputError`/:class:`UnsafeSourceError`/
        :class:`HostNotFound` (permanent) or :class:`LookupFailed` (retriable),
        each naming ``field``.
        """
        parsed = parse_url(url, field=field, schemes=self.schemes)
        if parsed.literal is not None:
            addresses = [parsed.literal]
        else:
            try:
                addresses = await self.resolver(parsed.host, parsed.port)
            except (HostNotFound, LookupFailed) as exc:
                # A fresh error per caller: a shared lookup's error is seen by many.
                raise type(exc)(exc.message, field=field) from exc
        # Every answer is checked, not just the first: a mixed answer is refused.
        for ip in addresses:
            check_address(parsed.host, ip, self.allow, field=field)
        return Target(url, parsed.scheme, parsed.host, parsed.port, addresses[0])


def redacted(url: str) -> str:
    """``url`` without user info, query or fragment: what may go into a log, a status or an
    Event. Webhook URLs carry tokens there (a chat robot's ``?key=``), and a presigned URL
    its signature; scheme, host, port and path are enough to tell which endpoint it was."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:  # an IPv6 literal goes back into brackets
            host = f"[{host}]"
        netloc = f"{host}:{parts.port}" if parts.port else host
    except ValueError:
        return "(malformed URL)"
    hidden = "?…" if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, "", "")) + hidden
