"""One way to open a NATS connection: credentials, TLS and reconnects from the settings.

Credentials are whichever :class:`~editflow.core.settings.NatsSettings`
configures: user + password, a token, an NKey seed file, or a ``.creds``
file (JWT + seed). TLS is used when any ``tls_*`` file is set or the URL is
``tls://``; a client certificate is presented when both cert and key are set.

Reconnects: once connected, nats-py reconnects for ever
(``max_reconnect_attempts=-1``), waiting ``reconnect_wait`` seconds between
rounds, and resubscribes every subscription, durable pull consumers
included. The *first* connection is retried here with exponential backoff
(0.2 s doubling to 5 s) for up to ``connect_for`` seconds, because an
operator Pod routinely starts before the NATS Pod is ready; refused
credentials are not retried (:class:`NatsAuthError`, a configuration error).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

import nats
from nats.aio.client import Client as NATS

from editflow.core.backoff import Backoff
from editflow.core.errors import PermanentError, UpstreamError
from editflow.core.settings import NatsSettings

log = logging.getLogger("editflow.events.nats")


def tls_context(settings: NatsSettings) -> ssl.SSLContext | None:
    """A client TLS context from the ``tls_*`` files, or ``None`` when TLS is not configured."""
    if not (
        settings.tls_ca_file
        or settings.tls_cert_file
        or settings.tls_key_file
        or settings.url.startswith("tls://")
    ):
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.tls_ca_file)
    if settings.tls_cert_file and settings.tls_key_file:
        context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    elif settings.tls_cert_file or settings.tls_key_file:
        raise ValueError("NATS TLS: set both tls_cert_file and tls_key_file, or neither")
    return context


def connect_options(
    settings: NatsSettings, *, name: str, reconnect_wait: float = 2.0
) -> dict[str, Any]:
    """Keyword arguments for :func:`nats.connect` (separate: testable without a server)."""
    options: dict[str, Any] = {
        "servers": [u.strip() for u in settings.url.split(",") if u.strip()],
        "name": name,
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": reconnect_wait,
        "connect_timeout": 5,
        "ping_interval": 20,
        "max_outstanding_pings": 3,
        # Each user's replies under its own prefix (the chart's permissions allow only that).
        "inbox_prefix": settings.effective_inbox_prefix,
    }
    if settings.user:
        options["user"] = settings.user
        options["password"] = settings.password.get_secret_value() if settings.password else ""
    if settings.token:
        options["token"] = settings.token.get_secret_value()
    if settings.creds_file:
        options["user_credentials"] = settings.creds_file
    if settings.nkey_seed_file:
        options["nkeys_seed"] = settings.nkey_seed_file
    context = tls_context(settings)
    if context is not None:
        options["tls"] = context
    return options


async def connect(
    settings: NatsSettings,
    *,
    name: str = "editflow",
    reconnect_wait: float = 2.0,
    connect_for: float = 30.0,
) -> NATS:
    """Connect (retrying the first connection with backoff) and log every disconnect."""

    connections: list[NATS] = []

    async def disconnected() -> None:
        nc = connections[0] if connections else None
        if nc is not None and (nc.is_closed or nc.is_draining):
            log.info("nats connection closed", extra={"nats_name": name})  # we closed it
            return
        log.warning("nats disconnected; reconnecting", extra={"nats_name": name})

    async def reconnected() -> None:
        log.info("nats reconnected", extra={"nats_name": name})

    async def error(exc: Exception) -> None:
        log.warning("nats error: %s", exc, extra={"nats_name": name})

    options = connect_options(settings, name=name, reconnect_wait=reconnect_wait)
    # nats-py retries a failing *first* connect for ever when reconnects are unlimited, even
    # on a wrong password; so the first attempt fails fast and this loop decides what to retry.
    options["allow_reconnect"] = False
    loop = asyncio.get_running_loop()
    deadline = loop.time() + connect_for
    backoff = Backoff(0.2, 5.0)
    while True:
        try:
            nc = await nats.connect(
                **options,
                disconnected_cb=disconnected,
                reconnected_cb=reconnected,
                error_cb=error,
            )
        except Exception as exc:
            if _is_auth_failure(exc):
                raise NatsAuthError(
                    f"NATS at {settings.url} refused the credentials or TLS certificate: {exc}; "
                    "check EDITFLOW_NATS__* (user/password, token, nkey/creds file, tls files)"
                ) from exc
            if loop.time() + backoff.delay > deadline:
                raise UpstreamError(
                    f"cannot reach NATS at {settings.url}: {exc!r}; check the URL and that "
                    "the server is up"
                ) from exc
            log.info("nats not reachable yet (%r); retrying in %.1fs", exc, backoff.delay)
            await asyncio.sleep(backoff.grow())
            continue
        nc.options["allow_reconnect"] = True
        nc.options["max_reconnect_attempts"] = -1
        connections.append(nc)
        return nc


class NatsAuthError(PermanentError):
    """The server refused our credentials or certificate: a configuration error, not retried."""

    code = "nats_auth_failed"


def _is_auth_failure(exc: BaseException) -> bool:
    if isinstance(exc, nats.errors.AuthorizationError | ssl.SSLCertVerificationError):
        return True
    text = str(exc).lower()
    return "authorization violation" in text or "authentication" in text
