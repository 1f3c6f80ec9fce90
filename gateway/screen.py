"""Refuse before spending a GPU, at the door: the URLs and callback of an edit request.

Every ``POST /v1/edits`` and ``POST /edit`` passes :meth:`RequestScreen.check`
after its fields validated and before its approval event is published, so an
unsafe request is answered 422 at once (problem+json naming the field)
instead of becoming an EditJob, a worker Pod and a ``failed`` 5 s later:

* ``image_url`` (http/https): the shared SSRF guard (:mod:`editflow.core.urlguard`)
  with the worker's allow-list (``worker.allow_hosts`` / ``allow_cidrs``);
  a host that definitely does not exist is 422 too;
* ``callback_url``: the same guard with the webhook allow-list
  (``operator.callback_allow_hosts`` / ``callback_allow_cidrs``);
* ``callback_subject``: the callback subject rule
  (:mod:`editflow.events.callback_subjects`).

A temporary DNS failure is 503 with ``Retry-After`` (retriable: the client
tries again) rather than a verdict on the URL. The bridge applies the same
rules to every approval event, and the worker's guard stays the last line.
"""

from __future__ import annotations

from editflow.core.errors import PermanentError
from editflow.core.settings import Settings
from editflow.core.urlguard import AllowList, CachedResolver, LookupFailed, Resolve, UrlGuard
from editflow.events.callback_subjects import CallbackSubjects
from editflow.gateway.problems import FieldError, ProblemError
from editflow.gateway.schemas import EditRequest


class RequestScreen:
    """The gateway's URL and subject checks (one cached resolver for the process)."""

    def __init__(self, settings: Settings, *, resolve: Resolve | None = None) -> None:
        op, worker = settings.operator, settings.worker
        self.resolver = CachedResolver(
            timeout_seconds=op.dns_timeout_seconds,
            ttl_seconds=op.dns_cache_seconds,
            negative_ttl_seconds=min(op.dns_cache_seconds, 30.0),
        )
        if resolve is not None:  # the seam tests use to stand in for DNS
            self.resolver.resolve = resolve
        self.images = UrlGuard(
            AllowList.parse(worker.allow_hosts, worker.allow_cidrs), self.resolver
        )
        self.webhooks = UrlGuard(
            AllowList.parse(op.callback_allow_hosts, op.callback_allow_cidrs),
            self.resolver,
            schemes=("https",),
        )
        self.subjects = CallbackSubjects.from_settings(settings.events)

    async def check(self, request: EditRequest) -> None:
        """Return if the request may be published; raise a :class:`ProblemError` otherwise."""
        try:
            url = request.image_url
            if url is not None and not url.startswith("s3://"):
                await self.images.check(url, field="image_url")
            if request.callback_url is not None:
                await self.webhooks.check(request.callback_url, field="callback_url")
        except PermanentError as exc:
            raise _invalid(exc.code, exc.field or "image_url", exc.message) from exc
        except LookupFailed as exc:
            raise ProblemError(
                503,
                exc.code,
                f"{exc.field}: {exc.message}; retry shortly",
                retriable=True,
                headers={"Retry-After": "5"},
            ) from exc
        subject = request.callback_subject
        if subject is not None and (why := self.subjects.problem(subject)):
            raise _invalid("invalid_input", "callback_subject", why)


def _invalid(code: str, field: str, message: str) -> ProblemError:
    return ProblemError(
        422, code, f"{field}: {message}", errors=[FieldError(field=field, message=message)]
    )
