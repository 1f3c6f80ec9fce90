"""The upload client cache tells keys apart and stays bounded (issue 20 §1: a warm worker's
attempts each bring their own STS key; a masked-secret cache key once gave every attempt
the first attempt's client, and AccessDenied)."""

from __future__ import annotations

from pydantic import SecretStr

from editflow.core.settings import S3Settings
from editflow.inference import output


def settings(access: str, token: str | None = None) -> S3Settings:
    return S3Settings(
        access_key=SecretStr(access),
        secret_key=SecretStr(f"{access}-secret"),
        session_token=SecretStr(token) if token else None,
    )


def test_each_key_gets_its_own_client_and_the_cache_is_bounded(monkeypatch) -> None:
    monkeypatch.setattr(output, "_CLIENTS", type(output._CLIENTS)())
    first, second = output._client(settings("AK1", "t1")), output._client(settings("AK2", "t2"))
    assert first is not second
    assert output._client(settings("AK1", "t1")) is first
    for i in range(20):
        output._client(settings(f"AK-{i}"))
    assert len(output._CLIENTS) == output._MAX_CLIENTS
