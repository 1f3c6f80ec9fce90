"""Per-attempt S3 credentials sealed for one namespace's warm workers (issue 20 §1).

A warm worker serves many attempts, so unlike a Job-mode worker it cannot get an attempt's
STS credentials through a Secret mounted at its start. They travel inside the work message
instead. The work stream stores messages, and any NATS client allowed to read the stream
could read them, so they are sealed with the namespace's *pool key*: Fernet (AES-128-CBC
with an HMAC-SHA256, from ``cryptography``, already a dependency), a key only that
namespace's warm workers mount.

Where the key lives and how it rotates (:mod:`editflow.operator.poolkeys`):

* a Secret ``editflow-warm-key`` per watched namespace, created by the operator, mounted
  read-only by that namespace's warm workers and by nothing else;
* its ``keys`` field lists ``<created unix time>:<key>`` lines, newest first. A worker
  accepts every listed key; the operator seals with the newest key that is older than
  ``PROPAGATION_SECONDS`` (time for the kubelet to update mounted Secrets), so a rotation
  never seals with a key a running worker cannot know yet;
* the operator prepends a new key every ``operator.warm_key_rotation_seconds`` and keeps
  one previous key, so messages sealed just before a rotation stay readable.

A sealed token also expires (Fernet's timestamp, checked with ``ttl``): a message replayed
after its attempt's life is refused even with a valid key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from editflow.core.errors import RetriableError

#: The Secret in each namespace, and its field.
POOL_KEY_SECRET = "editflow-warm-key"  # noqa: S105 - a Secret's name, not a password
POOL_KEY_FIELD = "keys"
#: A new key is used for sealing only once the kubelet had time to update the mounts.
PROPAGATION_SECONDS = 120.0
#: A sealed token older than this is refused: the longest STS session an attempt gets
#: (12 h, what MinIO and AWS allow) plus the propagation delay.
MAX_SEALED_SECONDS = 12 * 3600 + PROPAGATION_SECONDS


class SealError(RetriableError):
    """The worker cannot open an attempt's credentials (its key is older than the pool's,
    or the token expired); another worker, started with the current key, can."""

    code = "credentials_unreadable"


@dataclass(frozen=True)
class PoolKey:
    created: float
    key: str


def new_pool_key(now: float | None = None) -> PoolKey:
    return PoolKey(
        created=now if now is not None else time.time(), key=Fernet.generate_key().decode()
    )


def format_keys(keys: list[PoolKey]) -> str:
    return "".join(f"{int(k.created)}:{k.key}\n" for k in keys)


def parse_keys(text: str) -> list[PoolKey]:
    """The keys of a Secret's ``keys`` field, newest first (malformed lines are skipped)."""
    out = []
    for line in text.splitlines():
        created, sep, key = line.strip().partition(":")
        if sep and created.isdigit() and key:
            out.append(PoolKey(float(created), key))
    return sorted(out, key=lambda k: k.created, reverse=True)


def sealing_key(keys: list[PoolKey], now: float | None = None) -> PoolKey:
    """The key to seal with: the newest one every worker can have by now."""
    now = now if now is not None else time.time()
    for key in keys:
        if now - key.created >= PROPAGATION_SECONDS:
            return key
    return keys[-1]  # all new (a fresh namespace): the oldest is as good as any


def seal(payload: dict[str, Any], key: PoolKey) -> str:
    return Fernet(key.key.encode()).encrypt(json.dumps(payload).encode()).decode()


def unseal(token: str, keys: list[PoolKey], *, ttl: float) -> dict[str, Any]:
    if not keys:
        raise SealError("this worker has no pool key (EDITFLOW_WORKER__POOL_KEY_FILE)")
    try:
        data = MultiFernet([Fernet(k.key.encode()) for k in keys]).decrypt(
            token.encode(), ttl=int(ttl)
        )
    except (InvalidToken, ValueError) as exc:
        raise SealError(
            "the attempt's credentials cannot be opened with this worker's pool key (rotated "
            "since the worker started, or expired); the attempt is retried by another worker"
        ) from exc
    payload = json.loads(data)
    if not isinstance(payload, dict):
        raise SealError("the attempt's sealed credentials are not an object")
    return payload


def token_key(secret: str) -> bytes:
    """The HMAC key of :func:`attempt_token`, derived once from the operator's S3 secret."""
    return hashlib.sha256(b"editflow-result-token\0" + secret.encode()).digest()


def attempt_token(key: bytes, namespace: str, edit_id: str, attempt: int) -> str:
    """The result token of one warm attempt: an HMAC only the operator can compute.

    Derived, not stored: any operator process (a new leader, a restart) can check a result
    of an attempt an earlier one handed out. The key (:func:`token_key`) comes from the
    operator's S3 secret, which no worker holds; the token reaches the attempt's worker inside
    its sealed credentials, so only the pool the attempt was handed to can answer for it
    (issue 20 §2).
    """
    message = f"{namespace}\0{edit_id}\0{attempt}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:40]


def token_matches(expected: str, given: str | None) -> bool:
    return given is not None and hmac.compare_digest(expected.encode(), given.encode())
