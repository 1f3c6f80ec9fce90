"""Signed HTTPS callbacks: the optional webhook a completion is also POSTed to.

The body is the structured CloudEvent; ``X-Editflow-Signature: v1=<hex>`` is an
HMAC-SHA256 of the body with ``EDITFLOW_OPERATOR__CALLBACK_SIGNING_KEY`` (when
set), and ``Idempotency-Key`` is the completion event id, so a receiver can
drop the repeats that retries produce. Non-2xx answers and network errors are
retried with exponential backoff up to ``callback_max_attempts``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import ssl

import httpx

from editflow.core.settings import OperatorSettings
from editflow.operator import metrics

log = logging.getLogger("editflow.operator.callbacks")


def signature(key: str, body: bytes) -> str:
    return "v1=" + hmac.new(key.encode(), body, hashlib.sha256).hexdigest()


async def deliver_callback(
    url: str,
    body: bytes,
    event_id: str,
    settings: OperatorSettings,
    *,
    content_type: str = "application/cloudevents+json; charset=utf-8",
) -> bool:
    """POST ``body`` to ``url`` until a 2xx answer or the attempts run out."""
    headers = {"Content-Type": content_type, "Idempotency-Key": event_id}
    if settings.callback_signing_key is not None:
        headers["X-Editflow-Signature"] = signature(
            settings.callback_signing_key.get_secret_value(), body
        )
    verify: ssl.SSLContext | bool = True
    if settings.callback_ca_file:
        verify = ssl.create_default_context(cafile=settings.callback_ca_file)
    delay = settings.callback_backoff_seconds
    async with httpx.AsyncClient(verify=verify, timeout=10.0, follow_redirects=False) as client:
        for attempt in range(1, settings.callback_max_attempts + 1):
            try:
                resp = await client.post(url, content=body, headers=headers)
                if 200 <= resp.status_code < 300:
                    metrics.CALLBACKS.labels("delivered").inc()
                    return True
                problem = f"HTTP {resp.status_code}"
            except httpx.HTTPError as exc:
                problem = repr(exc)
            metrics.CALLBACKS.labels("retry").inc()
            log.warning(
                "callback attempt %d to %s failed: %s",
                attempt,
                url,
                problem,
                extra={"event_id": event_id},
            )
            if attempt < settings.callback_max_attempts:
                await asyncio.sleep(delay)
                delay *= 2
    metrics.CALLBACKS.labels("gave_up").inc()
    log.error("callback to %s gave up", url, extra={"event_id": event_id})
    return False


def alert_body(editjob: str, reason: str, message: str) -> bytes:
    """An alert in the enterprise chat-robot format (``msgtype``/``text``) the first deployment
    posted to, with the structured fields alongside for other receivers."""
    text = f"[editflow] {reason}: {editjob}: {message}"
    payload = {
        "msgtype": "text",
        "text": {"content": text},
        "editjob": editjob,
        "reason": reason,
        "message": message,
    }
    return json.dumps(payload, ensure_ascii=False).encode()
