"""Signed HTTPS callbacks: the optional webhook a completion is also POSTed to.

The body is the structured CloudEvent; ``X-Editflow-Signature: v1=<hex>`` is an
HMAC-SHA256 of the body with ``EDITFLOW_OPERATOR__CALLBACK_SIGNING_KEY`` (when
set), and ``Idempotency-Key`` is the completion event id, so a receiver can
drop the repeats that retries produce.

:func:`deliver_callback` makes **one** attempt. The retry policy is the outbox's alone
(:class:`editflow.operator.outbox.Deliverer`): exponential backoff from
``callback_backoff_seconds`` up to ``callback_max_attempts``, with the attempt count and the
next attempt kept in the outbox object's status, so retries survive an operator restart. A
second, in-memory loop here used to be switched off by it (issue 21).

Callbacks are not a way in: the URL goes through the SSRF guard
(:mod:`editflow.core.urlguard`) before the first byte is sent. Loopback,
private, link-local and metadata addresses are refused unless allow-listed
(``operator.callback_allow_hosts`` / ``callback_allow_cidrs``); the host is
resolved for each attempt and the attempt connects to that checked address (``Host`` and
TLS SNI keep the name), so DNS rebinding cannot move it; redirects are never followed (a
3xx is a failed attempt). A refused URL is logged as a warning and counted (``refused``);
:func:`webhook_refusal` lets the outbox tell a refusal (never retried) from a failure.
The alert webhook (``operator.alert_webhook_url``) takes the same path.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import ssl

import httpx

from editflow.core.errors import PermanentError
from editflow.core.settings import OperatorSettings
from editflow.core.urlguard import (
    AllowList,
    CachedResolver,
    LookupFailed,
    Resolve,
    UrlGuard,
    redacted,
)
from editflow.operator import metrics

log = logging.getLogger("editflow.operator.callbacks")

CALLBACK_FIELD = "spec.callback.webhookUrl"
ALERT_FIELD = "operator.alert_webhook_url"

_GUARDS: dict[tuple[object, ...], UrlGuard] = {}


def signature(key: str, body: bytes) -> str:
    return "v1=" + hmac.new(key.encode(), body, hashlib.sha256).hexdigest()


def webhook_guard(settings: OperatorSettings, *, resolve: Resolve | None = None) -> UrlGuard:
    """The guard for webhooks under ``settings`` (shared, so its DNS cache is too)."""
    key = (
        tuple(settings.callback_allow_hosts),
        tuple(settings.callback_allow_cidrs),
        settings.dns_timeout_seconds,
        settings.dns_cache_seconds,
        resolve,
    )
    if (guard := _GUARDS.get(key)) is None:
        resolver = CachedResolver(
            timeout_seconds=settings.dns_timeout_seconds,
            ttl_seconds=settings.dns_cache_seconds,
            negative_ttl_seconds=min(settings.dns_cache_seconds, 30.0),
        )
        if resolve is not None:
            resolver.resolve = resolve
        guard = UrlGuard(
            AllowList.parse(settings.callback_allow_hosts, settings.callback_allow_cidrs),
            resolver,
        )
        _GUARDS[key] = guard
    return guard


async def webhook_refusal(
    url: str, settings: OperatorSettings, *, field: str | None = None
) -> PermanentError | None:
    """Why the guard refuses ``url`` for good (``None``: it may be tried, also when DNS is
    only temporarily unwell). For a caller that retries deliveries itself (the outbox): a
    refused webhook is given up with this reason instead of being retried until it expires."""
    field = field or (ALERT_FIELD if url == settings.alert_webhook_url else CALLBACK_FIELD)
    try:
        await webhook_guard(settings).check(url, field=field)
    except PermanentError as exc:
        return exc
    except LookupFailed:
        return None
    return None


async def deliver_callback(
    url: str,
    body: bytes,
    event_id: str,
    settings: OperatorSettings,
    *,
    content_type: str = "application/cloudevents+json; charset=utf-8",
    field: str | None = None,
    guard: UrlGuard | None = None,
) -> bool:
    """POST ``body`` to ``url`` once; ``True`` on a 2xx answer.

    ``False`` on any other answer, a network error or a timeout (the caller's retry policy
    decides what next), and when the guard refuses the URL (then nothing is sent).
    ``field`` names the URL's origin in messages (default: the EditJob's callback, or the
    alert setting when ``url`` is the alert webhook).
    """
    field = field or (ALERT_FIELD if url == settings.alert_webhook_url else CALLBACK_FIELD)
    guard = guard or webhook_guard(settings)
    headers = {"Content-Type": content_type, "Idempotency-Key": event_id}
    if settings.callback_signing_key is not None:
        headers["X-Editflow-Signature"] = signature(
            settings.callback_signing_key.get_secret_value(), body
        )
    verify: ssl.SSLContext | bool = True
    if settings.callback_ca_file:
        verify = ssl.create_default_context(cafile=settings.callback_ca_file)
    async with httpx.AsyncClient(verify=verify, timeout=10.0, follow_redirects=False) as client:
        try:
            pinned_url, host, extensions = (await guard.check(url, field=field)).pinned()
            # httpx's timeout is per read: a receiver answering a byte at a time would hold
            # the delivery forever, so the whole request gets one deadline.
            async with asyncio.timeout(settings.callback_timeout_seconds):
                resp = await client.post(
                    pinned_url,
                    content=body,
                    headers={**headers, **host},
                    extensions=extensions,
                )
            if 200 <= resp.status_code < 300:
                metrics.CALLBACKS.labels("delivered").inc()
                return True
            problem = f"HTTP {resp.status_code}"
            if resp.is_redirect:
                problem += " (redirects are not followed: configure the final URL)"
        except PermanentError as exc:
            metrics.CALLBACKS.labels("refused").inc()
            log.warning(
                "webhook %s refused, not delivered: %s",
                redacted(url),
                exc,
                extra={"event_id": event_id, "field": field, "code": exc.code},
            )
            return False
        except LookupFailed as exc:
            problem = exc.message
        except TimeoutError:
            problem = f"no whole answer within {settings.callback_timeout_seconds:g}s"
        except httpx.HTTPError as exc:
            problem = type(exc).__name__  # its text repeats the URL, token and all
    metrics.CALLBACKS.labels("failed").inc()
    log.warning("callback to %s failed: %s", redacted(url), problem, extra={"event_id": event_id})
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
