"""Connections use the configured credentials and TLS; wrong ones are refused.

Each test starts its own small nats-server with the auth under test
(user/password over mutual TLS, a token, an NKey), on a free port in a tmp dir.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import nkeys
import pytest
from pydantic import SecretStr

from editflow.core.errors import EditflowError
from editflow.core.settings import NatsSettings
from editflow.devstack.pki import LocalCA
from editflow.events.connection import NatsAuthError, connect, connect_options
from tests.chart.natskit import start_nats


def _server(tmp_path: Path, config: str) -> Iterator[str]:
    # start_nats puts the server on a free loopback port in place of the 4222 written here.
    yield from start_nats(tmp_path, f"port: 4222\n{config}\n", {}, {})


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[str, LocalCA, Path]]:
    ca = LocalCA(tmp_path / "pki")
    server = ca.issue("server", common_name="nats", ip_addresses=("127.0.0.1",), server=True)
    config = f"""
tls {{
  cert_file: "{server.cert}"
  key_file: "{server.key}"
  ca_file: "{ca.cert_path}"
  verify: true
}}
authorization {{ user: editflow, password: "s3cret-pass" }}
"""
    for url in _server(tmp_path, config):
        yield url, ca, tmp_path


@pytest.fixture
def token_server(tmp_path: Path) -> Iterator[str]:
    yield from _server(tmp_path, 'authorization { token: "t0ken-abc" }')


@pytest.fixture
def nkey_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    seed = _user_seed()
    public = nkeys.from_seed(seed).public_key.decode()
    seed_file = tmp_path / "user.nk"
    seed_file.write_bytes(seed + b"\n")
    seed_file.chmod(0o600)
    for url in _server(tmp_path, f'authorization {{ users = [ {{ nkey: "{public}" }} ] }}'):
        yield url, seed_file


def _user_seed() -> bytes:
    # An NKey user seed is the prefix-encoded raw ed25519 seed ("SU...").
    import os

    return nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)


async def _round_trip(settings: NatsSettings) -> None:
    nc = await connect(settings, name="security-test", connect_for=2)
    try:
        sub = await nc.subscribe("ping")
        await nc.publish("ping", b"pong")
        msg = await sub.next_msg(timeout=5)
        assert msg.data == b"pong"
    finally:
        await nc.close()


async def test_user_password_over_mutual_tls(tls_server):
    url, ca, _ = tls_server
    client = ca.issue("client", common_name="editflow-operator")
    settings = NatsSettings(
        url=url, user="editflow", password=SecretStr("s3cret-pass"),
        tls_ca_file=str(ca.cert_path), tls_cert_file=str(client.cert),
        tls_key_file=str(client.key),
    )  # fmt: skip
    await _round_trip(settings)


async def test_a_wrong_password_is_refused(tls_server):
    url, ca, _ = tls_server
    client = ca.issue("client2", common_name="intruder")
    settings = NatsSettings(
        url=url, user="editflow", password=SecretStr("wrong"),
        tls_ca_file=str(ca.cert_path), tls_cert_file=str(client.cert),
        tls_key_file=str(client.key),
    )  # fmt: skip
    with pytest.raises(NatsAuthError, match="refused the credentials"):
        await _round_trip(settings)


async def test_tls_without_a_client_certificate_is_refused(tls_server):
    url, ca, _ = tls_server
    settings = NatsSettings(
        url=url, user="editflow", password=SecretStr("s3cret-pass"), tls_ca_file=str(ca.cert_path)
    )
    with pytest.raises(EditflowError):  # the server ends the handshake: refused or unreachable
        await _round_trip(settings)


async def test_token(token_server):
    await _round_trip(NatsSettings(url=token_server, token=SecretStr("t0ken-abc")))
    with pytest.raises(NatsAuthError):
        await _round_trip(NatsSettings(url=token_server, token=SecretStr("nope")))


async def test_nkey_seed_file(nkey_server):
    url, seed_file = nkey_server
    await _round_trip(NatsSettings(url=url, nkey_seed_file=str(seed_file)))


def test_options_carry_every_configured_credential(tmp_path):
    ca = LocalCA(tmp_path)
    options = connect_options(
        NatsSettings(
            url="tls://a:4222,tls://b:4222", user="u", password=SecretStr("p"),
            creds_file="/etc/nats/user.creds", tls_ca_file=str(ca.cert_path),
        ),
        name="x",
    )  # fmt: skip
    assert options["servers"] == ["tls://a:4222", "tls://b:4222"]
    assert options["user"] == "u" and options["password"] == "p"
    assert options["user_credentials"] == "/etc/nats/user.creds"
    assert isinstance(options["tls"], ssl.SSLContext)
    assert options["max_reconnect_attempts"] == -1
    assert "tls" not in connect_options(NatsSettings(url="nats://a:4222"), name="x")
