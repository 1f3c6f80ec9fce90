"""The SSRF guard and the fetch limits.

Refusals are proved without traffic: ``socket.create_connection`` is
replaced by a function that fails the test, so a refused address is refused
*before* any connection. Successful fetches go to the loopback image server,
allow-listed explicitly.
"""

from __future__ import annotations

import ipaddress
import socket

import pytest

from editflow.core.errors import (
    ImageRejectedError,
    InvalidInputError,
    UnsafeSourceError,
    UpstreamError,
)
from editflow.inference import fetch as fetch_mod
from editflow.inference.fetch import FetchLimits, address_problem, check_url, fetch_url

from .conftest import ImageServer, Route, png_bytes

LOOPBACK_ALLOWED = FetchLimits(
    max_bytes=1 << 20, timeout_seconds=5, max_redirects=3,
    allow_networks=(ipaddress.ip_network("127.0.0.1/32"),),
)  # fmt: skip
STRICT = FetchLimits(max_bytes=1 << 20, timeout_seconds=5, max_redirects=3)


@pytest.fixture
def no_connections(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    attempts: list[tuple] = []

    def refuse(address: tuple, *args: object, **kwargs: object) -> socket.socket:
        attempts.append(address)
        raise AssertionError(f"the guard let a connection to {address} through")

    monkeypatch.setattr(fetch_mod.socket, "create_connection", refuse)
    return attempts


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254",
        "100.100.100.200", "0.0.0.0",  # noqa: S104
        "224.0.0.1", "255.255.255.255", "::1", "fe80::1",
        "fd00:ec2::254", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "64:ff9b::a9fe:a9fe", "::",
    ],
)  # fmt: skip
def test_non_public_addresses_are_refused(address: str) -> None:
    assert address_problem(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert address_problem(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x.png", "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.5:8080/a.jpg", "http://[::1]/a.png", "http://[::ffff:169.254.169.254]/",
        "https://0x7f000001/a.png", "http://2130706433/a.png",
    ],
)  # fmt: skip
def test_literal_private_urls_are_refused_before_connecting(url: str, no_connections: list) -> None:
    with pytest.raises((UnsafeSourceError, InvalidInputError)):
        fetch_url(url, STRICT)
    assert no_connections == []


def test_a_name_resolving_to_a_private_address_is_refused(
    monkeypatch: pytest.MonkeyPatch, no_connections: list
) -> None:
    monkeypatch.setattr(fetch_mod, "resolve", lambda host, port: [ipaddress.ip_address("10.0.0.7")])
    with pytest.raises(UnsafeSourceError) as caught:
        fetch_url("https://images.example.com/cat.jpg", STRICT)
    assert "10.0.0.7" in caught.value.message and caught.value.field == "source.url"
    assert no_connections == []


def test_a_mixed_dns_answer_is_refused(
    monkeypatch: pytest.MonkeyPatch, no_connections: list
) -> None:
    answer = [ipaddress.ip_address("93.184.215.14"), ipaddress.ip_address("169.254.169.254")]
    monkeypatch.setattr(fetch_mod, "resolve", lambda host, port: answer)
    with pytest.raises(UnsafeSourceError):
        fetch_url("http://rebind.example.com/a.png", STRICT)
    assert no_connections == []


def test_only_http_and_https(no_connections: list) -> None:
    for url in ("file:///etc/passwd", "gopher://x/", "ftp://example.com/a.png"):
        with pytest.raises(InvalidInputError):
            fetch_url(url, STRICT)


def test_connects_to_the_checked_address_with_the_original_host_header(
    monkeypatch: pytest.MonkeyPatch, image_server: ImageServer
) -> None:
    """DNS rebinding: the name is resolved once, and the socket goes to that checked IP."""
    answers = iter([[ipaddress.ip_address("127.0.0.1")], [ipaddress.ip_address("10.9.9.9")]])
    calls: list[str] = []

    def resolver(host: str, port: int) -> list:
        calls.append(host)
        return next(answers)

    monkeypatch.setattr(fetch_mod, "resolve", resolver)
    image_server.routes["/pinned.png"] = Route(png_bytes())
    fetched = fetch_url(image_server.url("/pinned.png", host="images.example"), LOOPBACK_ALLOWED)
    assert fetched.data == png_bytes()
    assert calls == ["images.example"]
    assert ("/pinned.png", f"images.example:{image_server.port}") in image_server.seen


def test_allow_listed_loopback_fetch_works(image_server: ImageServer) -> None:
    image_server.routes["/ok.png"] = Route(png_bytes(), headers={"Content-Type": "image/png"})
    fetched = fetch_url(image_server.url("/ok.png"), LOOPBACK_ALLOWED)
    assert fetched.data == png_bytes() and fetched.content_type == "image/png"


def test_without_the_allow_list_loopback_is_refused(
    image_server: ImageServer, no_connections: list
) -> None:
    with pytest.raises(UnsafeSourceError):
        fetch_url(image_server.url("/ok.png"), STRICT)


def test_allow_listed_host_name(monkeypatch: pytest.MonkeyPatch, image_server: ImageServer) -> None:
    monkeypatch.setattr(fetch_mod, "resolve", lambda h, p: [ipaddress.ip_address("127.0.0.1")])
    limits = FetchLimits(max_bytes=1 << 20, timeout_seconds=5, max_redirects=1,
                         allow_hosts=frozenset({"minio.internal"}))  # fmt: skip
    image_server.routes["/host.png"] = Route(png_bytes())
    assert fetch_url(image_server.url("/host.png", host="minio.internal"), limits).data


def test_every_redirect_is_checked_again(image_server: ImageServer) -> None:
    image_server.routes["/to-metadata"] = Route(
        status=302, headers={"Location": "http://169.254.169.254/latest/meta-data/"}
    )
    with pytest.raises(UnsafeSourceError):
        fetch_url(image_server.url("/to-metadata"), LOOPBACK_ALLOWED)
    assert not any(path.startswith("/latest") for path, _ in image_server.seen)


def test_relative_redirects_are_followed(image_server: ImageServer) -> None:
    image_server.routes["/moved"] = Route(status=301, headers={"Location": "/final.png"})
    image_server.routes["/final.png"] = Route(png_bytes())
    assert fetch_url(image_server.url("/moved"), LOOPBACK_ALLOWED).source.endswith("/final.png")


def test_redirect_loops_stop(image_server: ImageServer) -> None:
    image_server.routes["/loop"] = Route(status=302, headers={"Location": "/loop"})
    with pytest.raises(InvalidInputError, match="redirected more than"):
        fetch_url(image_server.url("/loop"), LOOPBACK_ALLOWED)


def test_declared_size_over_the_cap_is_refused(image_server: ImageServer) -> None:
    image_server.routes["/big"] = Route(b"x" * 5000)
    small = FetchLimits(max_bytes=4096, timeout_seconds=5, max_redirects=0,
                        allow_networks=LOOPBACK_ALLOWED.allow_networks)  # fmt: skip
    with pytest.raises(ImageRejectedError, match="larger than 4096"):
        fetch_url(image_server.url("/big"), small)


def test_undeclared_size_is_capped_while_reading(image_server: ImageServer) -> None:
    image_server.routes["/stream"] = Route(b"x" * 50_000, chunked=True)
    small = FetchLimits(max_bytes=10_000, timeout_seconds=5, max_redirects=0,
                        allow_networks=LOOPBACK_ALLOWED.allow_networks)  # fmt: skip
    with pytest.raises(ImageRejectedError):
        fetch_url(image_server.url("/stream"), small)


def test_slow_source_hits_the_deadline_as_a_retriable_error(image_server: ImageServer) -> None:
    image_server.routes["/slow"] = Route(png_bytes(), delay=2.0)
    quick = FetchLimits(max_bytes=1 << 20, timeout_seconds=0.3, max_redirects=0,
                        allow_networks=LOOPBACK_ALLOWED.allow_networks)  # fmt: skip
    with pytest.raises(UpstreamError) as caught:
        fetch_url(image_server.url("/slow"), quick)
    assert caught.value.retriable


def test_http_status_maps_to_permanent_or_retriable(image_server: ImageServer) -> None:
    image_server.routes["/gone"] = Route(b"", 404)
    image_server.routes["/busy"] = Route(b"", 503)
    with pytest.raises(InvalidInputError):
        fetch_url(image_server.url("/gone"), LOOPBACK_ALLOWED)
    with pytest.raises(UpstreamError):
        fetch_url(image_server.url("/busy"), LOOPBACK_ALLOWED)


def test_check_url_returns_the_address_to_dial() -> None:
    target = check_url("http://8.8.8.8:8080/a.png?x=1", STRICT)
    assert (str(target.ip), target.port, target.path) == ("8.8.8.8", 8080, "/a.png?x=1")


def _self_signed(tmp_path, name: str) -> tuple[str, str]:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )  # fmt: skip
    return str(cert_path), str(key_path)


@pytest.fixture
def tls_server(tmp_path):
    import ssl
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    cert, key = _self_signed(tmp_path, "images.example")
    seen: list[str | None] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            body = png_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda sock, name, ctx: seen.append(name)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], cert, seen
    server.shutdown()
    server.server_close()


def test_https_to_the_pinned_address_keeps_sni_and_verifies_the_name(
    monkeypatch: pytest.MonkeyPatch, tls_server
) -> None:
    port, ca_file, sni = tls_server
    monkeypatch.setattr(fetch_mod, "resolve", lambda h, p: [ipaddress.ip_address("127.0.0.1")])
    limits = FetchLimits(
        max_bytes=1 << 20,
        timeout_seconds=5,
        max_redirects=0,
        allow_networks=LOOPBACK_ALLOWED.allow_networks,
        ca_file=ca_file,
    )
    fetched = fetch_url(f"https://images.example:{port}/a.png", limits)
    assert fetched.data == png_bytes() and sni == ["images.example"]
    # A name the certificate does not cover is refused, though the address is the same.
    with pytest.raises(UnsafeSourceError, match="certificate"):
        fetch_url(f"https://other.example:{port}/a.png", limits)


def test_non_ascii_paths_are_percent_encoded(image_server: ImageServer) -> None:
    image_server.routes["/files/%E6%B5%B7%E6%8A%A5.png?v=%E4%B8%80"] = Route(png_bytes())
    fetched = fetch_url(image_server.url("/files/海报.png?v=一"), LOOPBACK_ALLOWED)
    assert fetched.data == png_bytes()


def test_already_encoded_paths_are_not_encoded_twice(image_server: ImageServer) -> None:
    image_server.routes["/a%20b.png"] = Route(png_bytes())
    assert fetch_url(image_server.url("/a%20b.png"), LOOPBACK_ALLOWED).data == png_bytes()


def test_a_trickling_source_ends_within_the_whole_fetch_deadline() -> None:
    """200 at once, then one byte every 0.4 s: the deadline holds between bytes too (a
    hostile source must not pin a GPU worker by never quite going silent)."""
    import socket
    import threading
    import time

    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def trickle() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n"
            )
            while not stop.is_set():
                try:
                    conn.sendall(b"x")
                except OSError:
                    return
                time.sleep(0.4)

    threading.Thread(target=trickle, daemon=True).start()
    limits = FetchLimits(max_bytes=1 << 20, timeout_seconds=1.5, max_redirects=0,
                         allow_networks=LOOPBACK_ALLOWED.allow_networks)  # fmt: skip
    started = time.monotonic()
    try:
        with pytest.raises(UpstreamError, match=r"took longer than 1\.5s") as caught:
            port = listener.getsockname()[1]
            fetch_url(f"http://u:pw@127.0.0.1:{port}/img.png?X-Amz-Signature=s3cr3t", limits)
    finally:
        stop.set()
        listener.close()
    assert caught.value.retriable
    # The message goes into status and Events: no user info, no query (a signature).
    assert "s3cr3t" not in str(caught.value) and "pw@" not in str(caught.value)
    assert f"http://127.0.0.1:{port}/img.png?…" in str(caught.value)
    # Generous: the point is seconds, not the 100000 * 0.4 s the body would take.
    assert time.monotonic() - started < 10
