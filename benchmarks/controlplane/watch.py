"""Client-side watches: EditJobs, Jobs and completion events, each stamped on arrival.

Watches start from the collection's resourceVersion taken before anything is
published, so no creation can slip past; a watch that ends is resumed from
the last version seen, and one that expired (410 Gone) re-lists, stamping
what it finds at the re-list (late, so only ever pessimistic).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from controlplane.timeline import Timeline
from editflow.operator.crd import editjob_path
from editflow.operator.names import ANNOTATION_EVENT_ID, LABEL_EDITJOB, MANAGED_BY

log = logging.getLogger("bench.watch")

Handler = Callable[[str, dict[str, Any], float], None]
"""handler(event type, object, monotonic time of arrival)."""

WATCH_SECONDS = 300


def job_finished(job: dict[str, Any]) -> bool:
    """Finished as Kubernetes defines it: a ``Complete`` or ``Failed`` condition that is True."""
    return _has_condition(job, ("Complete", "Failed"))


def job_ending(job: dict[str, Any]) -> bool:
    """The first sign on the Job that its Pod is done: a count, or a condition announcing the end
    (``SuccessCriteriaMet``/``FailureTarget`` come before ``Complete``/``Failed``)."""
    status = job.get("status") or {}
    if status.get("succeeded") or status.get("failed"):
        return True
    return _has_condition(job, ("Complete", "Failed", "SuccessCriteriaMet", "FailureTarget"))


def _has_condition(job: dict[str, Any], kinds: tuple[str, ...]) -> bool:
    conditions = (job.get("status") or {}).get("conditions") or []
    return any(c.get("type") in kinds and c.get("status") == "True" for c in conditions)


class CollectionWatch:
    """List-then-watch of one collection, calling ``handler`` for every change."""

    def __init__(
        self, http: httpx.AsyncClient, path: str, handler: Handler, *, selector: str = ""
    ) -> None:
        self.http = http
        self.path = path
        self.handler = handler
        self.selector = selector
        self.version = ""
        self.events = 0
        self.relists = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Take the collection's version now (before publishing), then watch from it."""
        await self._list(stamp=False)
        self._task = asyncio.create_task(self._run(), name=f"watch {self.path}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _params(self, **extra: str) -> dict[str, str]:
        params = dict(extra)
        if self.selector:
            params["labelSelector"] = self.selector
        return params

    async def _list(self, *, stamp: bool) -> None:
        cont = ""
        while True:
            params = self._params(limit="500" if stamp else "1")
            if cont:
                params["continue"] = cont
            resp = await self.http.get(self.path, params=params)
            resp.raise_for_status()
            body = resp.json()
            now = time.monotonic()
            if stamp:
                for item in body.get("items") or []:
                    self.handler("ADDED", item, now)
            if not cont:
                self.version = body["metadata"]["resourceVersion"]
            cont = body["metadata"].get("continue") or ""
            if not stamp or not cont:
                return

    async def _run(self) -> None:
        while True:
            try:
                await self._watch_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a dropped connection: resume from the last version
                log.info("watch %s interrupted: %r", self.path, exc)
                await asyncio.sleep(0.2)

    async def _watch_once(self) -> None:
        params = self._params(
            watch="true",
            resourceVersion=self.version,
            allowWatchBookmarks="true",
            timeoutSeconds=str(WATCH_SECONDS),
        )
        timeout = httpx.Timeout(10, read=WATCH_SECONDS + 30)
        async with self.http.stream("GET", self.path, params=params, timeout=timeout) as resp:
            resp.raise_for_status()
            async for line in resp.aiter_lines():
                if not line.strip():
                    continue
                now = time.monotonic()
                event = json.loads(line)
                kind, obj = event["type"], event["object"]
                if kind == "ERROR":
                    if obj.get("code") == 410:  # expired: re-list, stamping late
                        self.relists += 1
                        await self._list(stamp=True)
                    return
                self.version = obj["metadata"]["resourceVersion"]
                if kind != "BOOKMARK":
                    self.events += 1
                    self.handler(kind, obj, now)


def _event_id(obj: dict[str, Any], timeline: Timeline) -> str | None:
    meta = obj["metadata"]
    found = (meta.get("annotations") or {}).get(ANNOTATION_EVENT_ID)
    if found:
        return found
    owner = (meta.get("labels") or {}).get(LABEL_EDITJOB) or meta["name"]
    return timeline.by_editjob.get(owner)


class ClusterWatches:
    """The watches one benchmark run needs, all feeding one :class:`Timeline`."""

    def __init__(self, http: httpx.AsyncClient, timeline: Timeline, namespace: str) -> None:
        self.timeline = timeline
        self.watches = [
            CollectionWatch(http, editjob_path(namespace), self._on_editjob),
            CollectionWatch(
                http,
                f"/apis/batch/v1/namespaces/{namespace}/jobs",
                self._on_job,
                selector=",".join(f"{k}={v}" for k, v in MANAGED_BY.items()),
            ),
        ]

    def add_peer(self, http: httpx.AsyncClient, namespace: str) -> CollectionWatch:
        """Jobs of the peer's ScaledJobs in ``namespace``, keyed by ScaledJob name."""
        watch = CollectionWatch(
            http,
            f"/apis/batch/v1/namespaces/{namespace}/jobs",
            self._on_peer_job,
            selector="scaledjob.keda.sh/name",
        )
        self.watches.append(watch)
        return watch

    async def start(self) -> None:
        for watch in self.watches:
            if watch._task is None:
                await watch.start()

    async def stop(self) -> None:
        for watch in self.watches:
            await watch.stop()

    def _on_editjob(self, kind: str, obj: dict[str, Any], now: float) -> None:
        if kind == "ADDED":
            self.timeline.first(self.timeline.editjob, _event_id(obj, self.timeline), now)

    def _on_job(self, kind: str, obj: dict[str, Any], now: float) -> None:
        if kind == "DELETED":
            return
        event_id = _event_id(obj, self.timeline)
        self.timeline.first(self.timeline.job, event_id, now)
        if job_ending(obj):
            self.timeline.first(self.timeline.job_ending, event_id, now)
        if job_finished(obj):
            self.timeline.first(self.timeline.job_finished, event_id, now)

    def _on_peer_job(self, kind: str, obj: dict[str, Any], now: float) -> None:
        if kind == "ADDED":
            meta = obj["metadata"]
            owner = meta["labels"]["scaledjob.keda.sh/name"]
            self.timeline.peer_jobs.setdefault(owner, {}).setdefault(meta["name"], now)


async def subscribe_completions(nc: NATS, subject_prefix: str, timeline: Timeline) -> Any:
    """Stamp each completion event as it arrives (core subscription: no JetStream delay)."""

    async def on_message(msg: Msg) -> None:
        now = time.monotonic()
        token = msg.subject.rsplit(".", 1)[-1]
        if msg.subject != f"{subject_prefix}.{token}":
            return  # progress (…progress.<token>) and selections (…selected.<token>)
        event_id = timeline.by_token.get(token)
        if event_id is None or event_id in timeline.completion:
            return
        timeline.first(timeline.completion, event_id, now)
        with contextlib.suppress(ValueError, KeyError, TypeError):
            timeline.completion_status[event_id] = json.loads(msg.data)["data"]["status"]

    return await nc.subscribe(f"{subject_prefix}.>", cb=on_message)
