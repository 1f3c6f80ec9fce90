"""Step 1: fetch the source image's bytes, from an http(s) URL or the platform bucket.

The SSRF guard (every URL an OA user typed is untrusted):

1. only ``http``/``https``; the host is resolved once by :func:`resolve`;
2. *every* resolved address must be public (not private, loopback,
   link-local — which includes the 169.254.169.254 metadata service —,
   CGNAT, multicast, reserved or unspecified; IPv4-mapped and NAT64 IPv6
   forms are unwrapped first) unless its host or network is allow-listed;
3. the connection goes to exactly the address that was checked (the socket
   is opened to the IP; the ``Host`` header and TLS SNI/certificate check
   still use the name), so a DNS answer that changes between check and
   connect (DNS rebinding) cannot redirect it;
4. redirects are followed by hand, each new URL going through 1–3 again;
5. one deadline for the whole fetch, a byte cap checked against
   ``Content-Length`` and again while reading.

Whether the bytes are an image is decided by their content in
:mod:`editflow.inference.preprocess`, never by the URL's extension.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
from dataclasses import dataclass
from urllib.parse import quote, urljoin, urlsplit

from editflow.core.errors import (
    ImageRejectedError,
    InvalidInputError,
    UnsafeSourceError,
    UpstreamError,
)
from editflow.core.settings import S3Settings, WorkerSettings
from editflow.core.urlguard import IPAddress, address_problem, redacted, unwrap

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CHUNK = 64 * 1024
_SAFE_PATH = "/%:@!$&'()*+,;=-._~"


@dataclass(frozen=True)
class FetchLimits:
    max_bytes: int
    timeout_seconds: float
    max_redirects: int
    allow_hosts: frozenset[str] = frozenset()
    allow_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    #: Extra CA bundle trusted for https sources, on top of the system's.
    ca_file: str | None = None

    @classmethod
    def from_settings(cls, worker: WorkerSettings) -> FetchLimits:
        return cls(
            max_bytes=worker.fetch_max_bytes,
            timeout_seconds=worker.fetch_timeout_seconds,
            max_redirects=worker.fetch_max_redirects,
            allow_hosts=frozenset(h.lower().rstrip(".") for h in worker.allow_hosts),
            allow_networks=tuple(ipaddress.ip_network(c, strict=False) for c in worker.allow_cidrs),
            ca_file=worker.fetch_ca_file,
        )


@dataclass(frozen=True)
class Fetched:
    data: bytes
    source: str  # the final URL or s3://bucket/key (for logs and the audit trail)
    content_type: str | None = None


# -- the guard (pure) ---------------------------------------------------------
# The address rules are the platform's one URL policy (editflow.core.urlguard), shared with
# the operator's and the gateway's screening of image and callback URLs.


def check_address(host: str, ip: IPAddress, limits: FetchLimits) -> None:
    """Raise :class:`UnsafeSourceError` unless ``ip`` (resolved from ``host``) may be used."""
    if host.lower().rstrip(".") in limits.allow_hosts:
        return
    if any(unwrap(ip) in net or ip in net for net in limits.allow_networks):
        return
    if why := address_problem(ip):
        raise UnsafeSourceError(
            f"refusing to fetch from {host} ({ip}): the address is {why}. Use a public image "
            "URL, upload the image to the platform bucket, or ask the operator to allow-list it",
            field="source.url",
        )


def resolve(host: str, port: int) -> list[IPAddress]:
    """All addresses ``host`` resolves to (tests replace this to simulate DNS answers)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        if exc.errno in (socket.EAI_AGAIN,):
            raise UpstreamError(f"DNS lookup of {host} failed temporarily: {exc}") from exc
        raise InvalidInputError(
            f"the host {host} does not resolve: {exc}", field="source.url"
        ) from exc
    seen: list[IPAddress] = []
    for *_, sockaddr in infos:
        ip = ipaddress.ip_address(sockaddr[0].split("%", 1)[0])
        if ip not in seen:
            seen.append(ip)
    return seen


@dataclass(frozen=True)
class Target:
    """A URL whose host has been checked, and the one address to connect to."""

    scheme: str
    host: str
    port: int
    path: str
    ip: IPAddress


def check_url(url: str, limits: FetchLimits) -> Target:
    """Parse, resolve and check ``url``; the returned address is the only one to dial."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise InvalidInputError(
            f"unsupported URL scheme {parts.scheme!r}: use http or https", field="source.url"
        )
    host = parts.hostname
    if not host:
        raise InvalidInputError("the URL has no host", field="source.url")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise InvalidInputError(f"bad port in URL: {exc}", field="source.url") from exc
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    addresses = [literal] if literal is not None else resolve(host, port)
    if not addresses:
        raise InvalidInputError(f"the host {host} has no address", field="source.url")
    # Every answer is checked, not just the first: a mixed answer is refused.
    for ip in addresses:
        check_address(host, ip, limits)
    # Percent-encode what is not ASCII (Chinese file names are common on OA servers),
    # keeping existing escapes and reserved characters as they are.
    path = quote(parts.path or "/", safe=_SAFE_PATH)
    if parts.query:
        path = path + "?" + quote(parts.query, safe=_SAFE_PATH + "?")
    return Target(scheme=parts.scheme, host=host, port=port, path=path, ip=addresses[0])


# -- connecting to exactly the checked address --------------------------------
class _PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, target: Target, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self._ip = str(target.ip)

    def connect(self) -> None:
        self.sock = socket.create_connection((self._ip, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, target: Target, timeout: float, context: ssl.SSLContext) -> None:
        super().__init__(target.host, target.port, timeout=timeout, context=context)
        self._ip = str(target.ip)
        self._tls = context

    def connect(self) -> None:
        raw = socket.create_connection((self._ip, self.port), self.timeout)
        # SNI and certificate verification use the name, the socket the checked IP.
        self.sock = self._tls.wrap_socket(raw, server_hostname=self.host)


def _tls_context(limits: FetchLimits) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if limits.ca_file:
        context.load_verify_locations(cafile=limits.ca_file)
    return context


def _connection(target: Target, timeout: float, limits: FetchLimits) -> http.client.HTTPConnection:
    if target.scheme == "https":
        return _PinnedHTTPSConnection(target, timeout, _tls_context(limits))
    return _PinnedHTTPConnection(target, timeout)


def fetch_url(url: str, limits: FetchLimits) -> Fetched:
    """GET ``url`` through the SSRF guard, following checked redirects, within the limits."""
    deadline = time.monotonic() + limits.timeout_seconds
    current = url
    for _hop in range(limits.max_redirects + 1):
        target = check_url(current, limits)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise UpstreamError(
                f"fetching {redacted(url)} took longer than {limits.timeout_seconds:g}s"
            )
        conn = _connection(target, remaining, limits)
        try:
            conn.request(
                "GET",
                target.path,
                headers={"User-Agent": "editflow-worker", "Accept": "image/*"},
            )
            response = conn.getresponse()
            if response.status in _REDIRECTS:
                location = response.getheader("Location")
                if not location:
                    raise UpstreamError(
                        f"{redacted(current)} answered {response.status} without Location"
                    )
                current = urljoin(current, location)
                continue
            _raise_for_status(current, response.status)
            data = _read_capped(response, limits, deadline, conn.sock)
            return Fetched(
                data=data, source=current, content_type=response.getheader("Content-Type")
            )
        except TimeoutError as exc:
            raise UpstreamError(
                f"fetching {redacted(url)} took longer than {limits.timeout_seconds:g}s"
            ) from exc
        except ssl.SSLCertVerificationError as exc:
            raise UnsafeSourceError(
                f"TLS certificate of {target.host} is not valid: {exc.verify_message}",
                field="source.url",
            ) from exc
        except (OSError, http.client.HTTPException) as exc:
            raise UpstreamError(f"could not fetch {redacted(current)}: {exc}") from exc
        except ValueError as exc:  # http.client.InvalidURL, control characters, bad IDNA
            raise InvalidInputError(
                f"malformed URL {redacted(current)!r}: {exc}", field="source.url"
            ) from exc
        finally:
            conn.close()
    raise InvalidInputError(
        f"{redacted(url)} redirected more than {limits.max_redirects} times", field="source.url"
    )


def _raise_for_status(url: str, status: int) -> None:
    if 200 <= status < 300:
        return
    if status in (408, 425, 429) or status >= 500:
        raise UpstreamError(f"{redacted(url)} answered HTTP {status}; the source may recover")
    raise InvalidInputError(
        f"{redacted(url)} answered HTTP {status}: check that the image URL is correct and public",
        field="source.url",
    )


def _too_large(limits: FetchLimits) -> ImageRejectedError:
    return ImageRejectedError(
        f"the image is larger than {limits.max_bytes} bytes; upload a smaller file",
        field="source",
    )


def _read_capped(
    response: http.client.HTTPResponse,
    limits: FetchLimits,
    deadline: float,
    sock: socket.socket | None,
) -> bytes:
    """Read the body within the byte cap and the whole-fetch deadline.

    The deadline holds however slowly bytes arrive: ``read1`` returns what one receive
    brings (``read(n)`` would wait for all ``n`` bytes, 64 KiB at one byte every few seconds
    is days), and before each receive the socket's timeout is cut to the time left.
    """
    length = response.getheader("Content-Length")
    if length is not None and length.isdigit() and int(length) > limits.max_bytes:
        raise _too_large(limits)
    chunks: list[bytes] = []
    total = 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("fetch deadline")
        if sock is not None:
            sock.settimeout(remaining)
        chunk = response.read1(_CHUNK)
        if not chunk:
            break
        total += len(chunk)
        if total > limits.max_bytes:
            raise _too_large(limits)
        chunks.append(chunk)
    return b"".join(chunks)


# -- the platform bucket -------------------------------------------------------
def fetch_s3(key: str, s3: S3Settings, limits: FetchLimits) -> Fetched:
    """Read ``key`` from the platform bucket (no SSRF question: the bucket is ours)."""
    from minio.error import S3Error
    from urllib3.exceptions import HTTPError as Urllib3Error

    from editflow.core.s3 import s3_client

    client = s3_client(s3)
    try:
        stat = client.stat_object(s3.bucket, key)
        if stat.size is not None and stat.size > limits.max_bytes:
            raise _too_large(limits)
        response = client.get_object(s3.bucket, key)
        try:
            data = response.read(limits.max_bytes + 1)
        finally:
            response.close()
            response.release_conn()
    except S3Error as exc:
        if exc.code in ("NoSuchKey", "NoSuchBucket", "AccessDenied"):
            raise InvalidInputError(
                f"s3://{s3.bucket}/{key} cannot be read ({exc.code}): check the source key",
                field="source.s3_key",
            ) from exc
        raise UpstreamError(f"S3 failed reading s3://{s3.bucket}/{key}: {exc.code}") from exc
    except (OSError, Urllib3Error) as exc:
        raise UpstreamError(f"S3 unreachable reading s3://{s3.bucket}/{key}: {exc}") from exc
    if len(data) > limits.max_bytes:
        raise _too_large(limits)
    return Fetched(data=data, source=f"s3://{s3.bucket}/{key}", content_type=stat.content_type)
