"""Watch-fed caches: one list, then a watch, so a reconcile never lists the cluster.

The model is client-go's reflector + shared informer: an :class:`Informer`
lists its collection once, in pages, then watches from the list's
resourceVersion with bookmarks, and replays every change into a
:class:`Store`. Listeners see ``(key, old, new)`` for each change (``new`` is
``None`` for a deletion) and keep their own indexes from it (queue order, the
namespace cap, Pods by Job). A watch that ends is resumed from the last
resourceVersion; only a ``410 Gone`` (the resume point was compacted away)
costs a re-list, which is diffed against the store so listeners still see
exactly what changed. ``synced`` is set after the first list: the operator
starts no attempt before every cache it counts with is synced.

Objects are *projected* before they are stored (``managedFields`` and
last-applied annotations dropped, finished EditJobs slimmed) so 70,000
EditJobs fit the operator's memory budget.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from editflow.core.backoff import Backoff
from editflow.operator import metrics
from editflow.operator.kube import JSON, AsyncKube, KubeAPIError

log = logging.getLogger("editflow.operator.informer")

Key = tuple[str, str]
Listener = Callable[[Key, JSON | None, JSON | None], None]


def key_of(obj: JSON) -> Key:
    meta = obj["metadata"]
    return (meta.get("namespace", ""), meta["name"])


def resource_version(obj: JSON | None) -> int:
    """etcd revisions are integers; a missing or odd one sorts first."""
    if not obj:
        return -1
    try:
        return int(obj["metadata"].get("resourceVersion") or 0)
    except (TypeError, ValueError):
        return 0


def strip_noise(obj: JSON) -> JSON:
    """Drop what the operator never reads and what costs the most memory."""
    meta = dict(obj.get("metadata") or {})
    meta.pop("managedFields", None)
    annotations = meta.get("annotations")
    if annotations and "kubectl.kubernetes.io/last-applied-configuration" in annotations:
        meta["annotations"] = {
            k: v
            for k, v in annotations.items()
            if k != "kubectl.kubernetes.io/last-applied-configuration"
        }
    return {**obj, "metadata": meta}


#: Removed objects whose deletion version a Store remembers (a few minutes' worth of
#: deletions at 50 edits/s; an older write-through arriving later than that is not expected).
TOMBSTONES = 20_000


@dataclass
class Store:
    """Objects by (namespace, name), each change told to every listener."""

    project: Callable[[JSON], JSON] = strip_noise
    items: dict[Key, JSON] = field(default_factory=dict)
    listeners: list[Listener] = field(default_factory=list)
    #: The resourceVersion each recently removed object was deleted at: a write-through of
    #: an older version (our own PATCH answered after the watch said DELETED) must not bring
    #: it back as a ghost that holds, say, a slot of the namespace's cap forever.
    tombstones: OrderedDict[Key, int] = field(default_factory=OrderedDict)

    def get(self, key: Key) -> JSON | None:
        return self.items.get(key)

    def __len__(self) -> int:
        return len(self.items)

    def upsert(self, obj: JSON) -> bool:
        """Store ``obj`` unless the store already holds a newer version of it.

        Write-through from our own writes (a PATCH response) and watch events
        race; comparing resourceVersions keeps the newest either way.
        """
        key = key_of(obj)
        old = self.items.get(key)
        if old is not None and resource_version(old) >= resource_version(obj):
            return False
        if old is None and key in self.tombstones:
            if resource_version(obj) <= self.tombstones[key]:
                return False  # a version from before its deletion
            del self.tombstones[key]
        new = self.project(obj)
        self.items[key] = new
        self._tell(key, old, new)
        return True

    def remove(self, key: Key, *, version: int | None = None) -> None:
        """Forget ``key``; ``version``: the resourceVersion it was deleted at (no older
        version of it is taken back)."""
        old = self.items.pop(key, None)
        gone = max(version if version is not None else -1, resource_version(old))
        if gone > 0:  # a real etcd revision (objects built by hand carry none)
            self.tombstones[key] = gone
            self.tombstones.move_to_end(key)
            while len(self.tombstones) > TOMBSTONES:
                self.tombstones.popitem(last=False)
        if old is not None:
            self._tell(key, old, None)

    def _tell(self, key: Key, old: JSON | None, new: JSON | None) -> None:
        for listener in self.listeners:
            try:
                listener(key, old, new)
            except Exception:
                log.exception("cache listener failed", extra={"key": "/".join(key)})


class Informer:
    """Keeps ``store`` equal to one namespace's collection at ``path``."""

    def __init__(
        self,
        kube: AsyncKube,
        path: str,
        store: Store,
        *,
        kind: str,
        label_selector: str | None = None,
        watch_timeout: int = 60,
        page_size: int = 500,
    ) -> None:
        self.kube = kube
        self.path = path
        self.store = store
        self.kind = kind
        self.label_selector = label_selector
        self.watch_timeout = watch_timeout
        self.page_size = page_size
        self.synced = asyncio.Event()
        self.last_contact = time.monotonic()
        self.relists = 0
        #: List pages fetched (all relists together): the initial list comes page by page.
        self.pages = 0
        self._version = ""
        self._mine: set[Key] = set()

    def _params(self) -> dict[str, Any]:
        return {"labelSelector": self.label_selector} if self.label_selector else {}

    async def relist(self) -> None:
        """One paginated list, diffed into the store (deletions we missed included).

        Each page is projected into the store *before* the next one is fetched,
        so at most one page of whole objects (``page_size`` of them, ~15 KB each
        decoded for an EditJob) is alive at a time. Collecting every page first
        and projecting afterwards held all of them at once: 150 MB for 10,000
        finished EditJobs, which Python's allocator then kept as RSS (its arenas
        are returned only when entirely empty, and the slim projections made
        from those objects were scattered through them).
        """
        seen: set[Key] = set()
        token = ""
        version = ""
        while True:
            page = await self._get_page(token)
            meta = page.get("metadata") or {}
            token = meta.get("continue") or ""
            version = str(meta.get("resourceVersion") or "")
            self._apply_page(page.get("items") or [], seen)
            del page, meta  # no whole object outlives its page
            self.pages += 1
            if not token:
                break
        for key in self._mine - seen:
            self.store.remove(key, version=int(version) if version.isdigit() else None)
        self._mine = seen
        self._version = version
        self.relists += 1
        self.last_contact = time.monotonic()
        metrics.CACHE_RELISTS.labels(self.kind).inc()
        self.synced.set()

    async def _get_page(self, token: str) -> JSON:
        """One page of the collection (``limit``/``continue``), served from one snapshot."""
        params: dict[str, Any] = {**self._params(), "limit": self.page_size}
        if token:
            params["continue"] = token
        page = await self.kube.get(self.path, **params)
        if page is None:
            raise KubeAPIError(404, "NotFound", f"{self.path}: the collection is not served")
        return page

    def _apply_page(self, items: list[JSON], seen: set[Key]) -> None:
        """Upsert one page in list order, dropping each whole object once it is projected."""
        items.reverse()
        while items:
            obj = items.pop()
            seen.add(key_of(obj))
            self.store.upsert(obj)

    async def run(self) -> None:
        """List once, then watch forever; back off on apiserver trouble."""
        backoff = Backoff(0.5, 10.0)
        while True:
            try:
                if not self._version:
                    await self.relist()
                await self._watch_once()
                backoff.reset()
            except asyncio.CancelledError:
                raise
            except KubeAPIError as exc:
                if exc.status == 410:
                    self._version = ""  # compacted: the next turn re-lists
                    continue
                log.warning("%s watch failed: %s; retrying in %.1fs", self.kind, exc, backoff.delay)
                await asyncio.sleep(backoff.grow())
            except Exception as exc:
                log.warning("%s watch failed: %r; retrying in %.1fs", self.kind, exc, backoff.delay)
                await asyncio.sleep(backoff.grow())

    async def _watch_once(self) -> None:
        async for event in self.kube.watch(
            self.path,
            resource_version=self._version,
            timeout_seconds=self.watch_timeout,
            **self._params(),
        ):
            self.last_contact = time.monotonic()
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                code = int(obj.get("code") or 500)
                raise KubeAPIError(code, obj.get("reason", ""), obj.get("message", ""))
            version = (obj.get("metadata") or {}).get("resourceVersion")
            if kind == "BOOKMARK":
                self._version = version or self._version
                continue
            key = key_of(obj)
            if kind == "DELETED":
                self.store.remove(key, version=resource_version(obj))
                self._mine.discard(key)
            else:
                self.store.upsert(obj)
                self._mine.add(key)
            metrics.CACHE_EVENTS.labels(self.kind).inc()
            self._version = version or self._version
        self.last_contact = time.monotonic()
