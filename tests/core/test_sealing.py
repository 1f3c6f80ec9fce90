"""Sealed per-attempt credentials (issue 20 §1): only the pool's key opens them, a rotation
never seals with a key a running worker cannot have yet, and old tokens expire."""

from __future__ import annotations

import time

import pytest
from cryptography.fernet import Fernet

from editflow.core.sealing import (
    PROPAGATION_SECONDS,
    PoolKey,
    SealError,
    format_keys,
    new_pool_key,
    parse_keys,
    seal,
    sealing_key,
    unseal,
)

# Each value holds a "." and a space, which a Fernet token (urlsafe base64) never holds, so
# "not in token" cannot pass or fail by chance.
CREDS = {"access_key": "AK.id 1", "secret_key": "SK.secret 2", "session_token": "ST.token 3"}


def test_the_pool_key_opens_its_tokens_and_another_namespace_key_does_not() -> None:
    team_a, team_b = new_pool_key(), new_pool_key()
    token = seal(CREDS, team_a)
    assert all(value not in token for value in CREDS.values())
    assert unseal(token, [team_a], ttl=60) == CREDS
    with pytest.raises(SealError) as caught:
        unseal(token, [team_b], ttl=60)
    assert caught.value.retriable and caught.value.code == "credentials_unreadable"
    with pytest.raises(SealError):
        unseal(token, [], ttl=60)


def test_a_rotation_seals_with_the_new_key_only_once_workers_can_have_it() -> None:
    now = time.time()
    old = PoolKey(now - 86400, Fernet.generate_key().decode())
    new = PoolKey(now - 5, Fernet.generate_key().decode())
    keys = parse_keys(format_keys([old, new]))
    assert keys == [PoolKey(int(new.created), new.key), PoolKey(int(old.created), old.key)]
    assert sealing_key(keys, now).key == old.key  # the new key is still propagating
    assert sealing_key(keys, now + PROPAGATION_SECONDS + 10).key == new.key
    # A worker that knows both opens either.
    assert unseal(seal(CREDS, old), keys, ttl=60) == CREDS
    assert unseal(seal(CREDS, new), keys, ttl=60) == CREDS


def test_an_expired_token_is_refused_even_with_the_right_key() -> None:
    key = new_pool_key()
    fernet = Fernet(key.key.encode())
    old = fernet.encrypt_at_time(b'{"access_key": "AK"}', int(time.time()) - 3600).decode()
    with pytest.raises(SealError):
        unseal(old, [key], ttl=60)
    assert parse_keys("garbage\n123:\n:abc\n") == []
