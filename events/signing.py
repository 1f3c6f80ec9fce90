"""HMAC-SHA256 signatures on OA events: every accepted approval spends GPU time.

The signature is the CloudEvents extension attribute ``signature`` (in binary
mode the NATS header ``ce-signature``)::

    signature = "v1=" + hex(HMAC-SHA256(key, canonical))

``canonical`` is the UTF-8 encoding of this JSON object, with keys sorted,
no whitespace (``separators=(",", ":")``) and non-ASCII characters written as
themselves (``ensure_ascii=False``)::

    {"data": <data>, "id": ..., "source": ..., "specversion": ..., "type": ...,
     "time": ... (if present), "subject": ... (if present)}

The attribute values are taken exactly as they were sent (strings), so the
signature is the same in structured and binary content mode. The ``v1=``
prefix leaves room to rotate to another scheme. Verification uses
:func:`hmac.compare_digest` (constant time).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

SIGNATURE_ATTRIBUTE = "signature"
SCHEME = "v1"
SIGNED_ATTRIBUTES = ("id", "source", "specversion", "type", "time", "subject")


def canonical_bytes(attributes: Mapping[str, Any], data: Any) -> bytes:
    """The bytes that are signed (see the module docstring)."""
    body: dict[str, Any] = {
        name: attributes[name]
        for name in SIGNED_ATTRIBUTES
        if name in attributes and attributes[name] is not None
    }
    body["data"] = data
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign(key: bytes | str, attributes: Mapping[str, Any], data: Any) -> str:
    """The ``signature`` attribute value for an event."""
    raw_key = key.encode() if isinstance(key, str) else key
    digest = hmac.new(raw_key, canonical_bytes(attributes, data), hashlib.sha256).hexdigest()
    return f"{SCHEME}={digest}"


def verify(key: bytes | str, attributes: Mapping[str, Any], data: Any, signature: str) -> bool:
    """Whether ``signature`` is valid for the event (constant-time comparison)."""
    expected = sign(key, attributes, data)
    return hmac.compare_digest(expected.encode(), signature.strip().encode())
