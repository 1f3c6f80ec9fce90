"""Refuse before spending a GPU: an approval's URLs and callback are checked before its EditJob.

The bridge calls :meth:`ApprovalScreen.screen` for every new approval, after
the ledger said it is new and before the EditJob is created::

    image_url (http/https)       SSRF guard with the worker's allow-list
                                 (worker.allow_hosts / allow_cidrs)
    callback.webhook_url         SSRF guard with the webhook allow-list
                                 (operator.callback_allow_hosts / allow_cidrs)
    callback.nats_subject        under events.callback_subject_prefix, never
                                 $JS./$SYS./_INBOX. or editflow's own subjects

What it raises decides the event's fate in the consumer
(:mod:`editflow.events.consumer`):

* an unsafe address, a malformed URL, a refused subject, or a definite
  "no such host" (NXDOMAIN): a :class:`~editflow.core.errors.PermanentError`
  naming the field -> dead letter, no EditJob, no Job;
* a temporary DNS failure (timeout, SERVFAIL): :class:`LookupFailed`
  (retriable) -> redelivered with backoff. On the event's last allowed
  delivery the screen lets it through instead (logged): a valid event must
  never be dead-lettered because DNS was down, and the worker's own guard
  checks the URL again before it downloads anything.

Lookups go through one :class:`~editflow.core.urlguard.CachedResolver`
(``operator.dns_timeout_seconds``, default 1 s; answers kept
``operator.dns_cache_seconds``), so a burst of approvals for one OA host costs
one lookup and the 250 ms event -> EditJob path stays free of DNS.

:func:`spec_refusal` is the same rule without DNS, for EditJobs applied with
kubectl (which never pass the bridge): the reconciler can refuse such a spec
with a status condition before it creates a Job.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Mapping
from typing import Any

from editflow.core.errors import InvalidInputError, PermanentError
from editflow.core.settings import Settings
from editflow.core.urlguard import (
    AllowList,
    CachedResolver,
    LookupFailed,
    Resolve,
    UrlGuard,
    check_literal,
)
from editflow.events.callback_subjects import CallbackSubjects
from editflow.events.models import ApprovalEvent

log = logging.getLogger("editflow.operator.bridge")

_HTTP = ("http", "https")


def image_allow_list(settings: Settings) -> AllowList:
    """The image hosts/networks exempt from the guard: the worker's list, one meaning everywhere."""
    return AllowList.parse(settings.worker.allow_hosts, settings.worker.allow_cidrs)


def webhook_allow_list(settings: Settings) -> AllowList:
    op = settings.operator
    return AllowList.parse(op.callback_allow_hosts, op.callback_allow_cidrs)


class ApprovalScreen:
    """The bridge's checks of one approval (see the module docstring)."""

    def __init__(self, settings: Settings, *, resolve: Resolve | None = None) -> None:
        op = settings.operator
        self.resolver = CachedResolver(
            timeout_seconds=op.dns_timeout_seconds,
            ttl_seconds=op.dns_cache_seconds,
            negative_ttl_seconds=min(op.dns_cache_seconds, 30.0),
        )
        if resolve is not None:  # the seam tests use to simulate DNS answers and failures
            self.resolver.resolve = resolve
        self.images = UrlGuard(image_allow_list(settings), self.resolver)
        self.webhooks = UrlGuard(webhook_allow_list(settings), self.resolver, schemes=("https",))
        self.subjects = CallbackSubjects.from_settings(settings.events)

    async def screen(self, event: ApprovalEvent, *, last_attempt: bool = False) -> None:
        """Return if the approval may become an EditJob; raise as the module docstring says."""
        data = event.data
        checks: list[Coroutine[Any, Any, object]] = []
        if data.image_url is not None and data.image_url.split(":", 1)[0].lower() in _HTTP:
            checks.append(self.images.check(data.image_url, field="data.image_url"))
        if data.callback is not None and data.callback.webhook_url is not None:
            checks.append(
                self.webhooks.check(data.callback.webhook_url, field="data.callback.webhook_url")
            )
        subject = data.callback.nats_subject if data.callback is not None else None
        if subject is not None and (why := self.subjects.problem(subject)):
            raise InvalidInputError(
                f"data.callback.nats_subject: {why}", field="data.callback.nats_subject"
            )
        outcomes = await asyncio.gather(*checks, return_exceptions=True)
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        for failure in failures:
            if isinstance(failure, PermanentError):
                # The dead letter keeps only the message: it names the field itself.
                raise type(failure)(
                    f"{failure.field}: {failure.message}", field=failure.field
                ) from failure
        for failure in failures:
            if not isinstance(failure, LookupFailed):
                raise failure
            if not last_attempt:
                raise failure
            log.warning(
                "DNS still failing on the last delivery; letting the approval through "
                "(the worker checks the URL again): %s",
                failure,
                extra={"event_id": event.id, "field": failure.field},
            )


def spec_refusal(spec: Mapping[str, Any], settings: Settings) -> PermanentError | None:
    """Why an EditJob spec must not run, judged without DNS (``None``: nothing found).

    Checks ``spec.source.url`` and ``spec.callback.webhookUrl`` when their host
    is an IP literal, and ``spec.callback.natsSubject`` against the subject
    rule. (A *name* that resolves to a refused address is caught by the
    worker's guard for images and by :func:`deliver_callback`'s guard for
    webhooks, both of which resolve right before they connect.)
    """
    source = spec.get("source") or {}
    callback = spec.get("callback") or {}
    checks = (
        (source.get("url"), image_allow_list(settings), "spec.source.url", _HTTP),
        (callback.get("webhookUrl"), webhook_allow_list(settings), "spec.callback.webhookUrl",
         ("https",)),
    )  # fmt: skip
    for url, allow, field, schemes in checks:
        if not isinstance(url, str) or url.startswith("s3://"):
            continue
        try:
            check_literal(url, allow, field=field, schemes=schemes)
        except PermanentError as exc:
            return exc
    subject = callback.get("natsSubject")
    if isinstance(subject, str) and (
        why := CallbackSubjects.from_settings(settings.events).problem(subject)
    ):
        return InvalidInputError(why, field="spec.callback.natsSubject")
    return None
