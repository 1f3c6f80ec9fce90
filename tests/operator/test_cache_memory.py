"""How the operator keeps its memory flat with many finished EditJobs (issue 11).

What decides the operator's RSS is how many *whole* EditJobs are alive at once
during the first list (CPython keeps its high-water mark), not only what the
caches keep. These tests check the mechanisms, not a number (machines are
noisy; ``benchmarks/control_plane.py --rss-only`` measures it):

* our informer projects each list page into its store before it fetches the
  next, and no whole object of a page outlives it;
* what the store keeps of a settled EditJob is the slim projection only;
* kopf, which watches every EditJob for its finalizer, lists in pages and lets
  its idle per-object workers (each holding its last raw event) go quickly;
* the C heap's free pages are handed back once the caches have synced.
"""

from __future__ import annotations

import asyncio
import platform
import weakref
from typing import Any

from editflow.operator import app, caches
from editflow.operator.caches import SLIM_MARK, ClusterCache, is_slim, project_editjob
from editflow.operator.crd import editjob_path
from editflow.operator.informer import Informer, Store

NAMESPACE = "edits"


class Whole(dict):
    """A decoded apiserver object that can be watched for being freed (dicts cannot)."""


def finished_editjob(index: int) -> Whole:
    """A settled EditJob as the apiserver returns it: spec, managedFields, full status."""
    name = f"ej-{index:05d}"
    return Whole(
        apiVersion="editflow.io/v1alpha1",
        kind="EditJob",
        metadata={
            "name": name,
            "namespace": NAMESPACE,
            "uid": f"uid-{index}",
            "resourceVersion": str(1000 + index),
            "labels": {"app.kubernetes.io/managed-by": "editflow-operator"},
            "annotations": {"editflow.io/event-id": f"ev-{index}", "other.io/x": "y"},
            "finalizers": ["editflow.io/cleanup"],
            "managedFields": [{"manager": "python-httpx", "fieldsV1": {"f:spec": {}}}],
        },
        spec={"prompt": "an edit that finished earlier", "source": {"url": "https://x/a.png"}},
        status={
            "phase": "Succeeded",
            "finishedAt": "2026-12-01T12:00:00Z",
            "completionEventId": f"done-{index}",
            "completionPublishedAt": "2026-12-01T12:00:01Z",
            "callbackDelivery": "none",
            "jobName": f"{name}-a1",
            "conditions": [{"type": "Ready", "status": "True", "message": "edited"}],
            "resultKey": f"results/{NAMESPACE}/{name}/attempt-1/result.png",
        },
    )


class PagedKube:
    """Serves a collection in pages (``limit``/``continue``) and watches that stay silent.

    At every list request it records how large the store already is and how many
    whole objects of the pages served before are still alive. It keeps no
    reference to what it served (only weak ones).
    """

    def __init__(self, total: int, *, store: Store | None = None, path: str = "") -> None:
        self.total = total
        self.store = store
        self.path = path
        self.requests: list[dict[str, Any]] = []
        self.store_sizes: list[int] = []
        self.alive_from_earlier_pages: list[int] = []
        self._served: list[weakref.ref[Whole]] = []
        self.missing: set[int] = set()

    async def get(self, path: str, **params: Any) -> dict[str, Any] | None:
        if path != self.path:
            return {"metadata": {"resourceVersion": "7"}, "items": []}
        self.requests.append(params)
        self.store_sizes.append(len(self.store) if self.store is not None else -1)
        self.alive_from_earlier_pages.append(sum(ref() is not None for ref in self._served))
        limit = int(params["limit"])
        start = int(params.get("continue") or 0)
        indexes = [i for i in range(start, min(start + limit, self.total)) if i not in self.missing]
        items = [finished_editjob(i) for i in indexes]
        self._served += [weakref.ref(obj) for obj in items]
        more = start + limit < self.total
        meta = {"resourceVersion": "5000", **({"continue": str(start + limit)} if more else {})}
        return {"kind": "EditJobList", "metadata": meta, "items": items}

    async def watch(self, path: str, **_: Any) -> Any:
        await asyncio.Event().wait()  # silent until cancelled
        yield {}  # pragma: no cover  (makes this an async generator)


async def test_the_first_list_is_projected_page_by_page_and_no_whole_object_outlives_its_page():
    store = Store(project=project_editjob)
    path = editjob_path(NAMESPACE)
    kube = PagedKube(1050, store=store, path=path)
    informer = Informer(kube, path, store, kind="editjobs", page_size=250)  # type: ignore[arg-type]

    await informer.relist()

    # Five pages, each asked for with the previous page's continue token.
    assert [r.get("continue") for r in kube.requests] == [None, "250", "500", "750", "1000"]
    assert {r["limit"] for r in kube.requests} == {250}
    assert informer.pages == 5 and informer.synced.is_set() and informer._version == "5000"
    # Each page was in the store, projected, before the next one was fetched...
    assert kube.store_sizes == [0, 250, 500, 750, 1000]
    # ...and nothing of an earlier page was still alive when the next one came.
    assert kube.alive_from_earlier_pages == [0, 0, 0, 0, 0]
    assert sum(ref() is not None for ref in kube._served) == 0
    assert len(store) == 1050


async def test_a_settled_editjob_is_kept_slim_and_nothing_else_of_it():
    store = Store(project=project_editjob)
    path = editjob_path(NAMESPACE)
    kube = PagedKube(3, store=store, path=path)
    informer = Informer(kube, path, store, kind="editjobs")  # type: ignore[arg-type]
    await informer.relist()

    kept = store.get((NAMESPACE, "ej-00001"))
    assert is_slim(kept)
    assert set(kept) == {"metadata", "status"}  # no spec, apiVersion, kind
    assert set(kept["metadata"]) == {
        "name", "namespace", "uid", "resourceVersion", "annotations", "labels",
        "finalizers",  # released by the reconciler when the EditJob is deleted
    }  # fmt: skip
    assert kept["metadata"]["labels"] == {SLIM_MARK: "true"}
    assert kept["metadata"]["annotations"] == {"editflow.io/event-id": "ev-1"}
    assert kept["status"] == {
        "phase": "Succeeded",
        "finishedAt": "2026-12-01T12:00:00Z",
        "completionEventId": "done-1",
        "completionPublishedAt": "2026-12-01T12:00:01Z",
        "callbackDelivery": "none",
        "jobName": "ej-00001-a1",
    }


async def test_a_paged_relist_still_removes_what_disappeared_across_pages():
    store = Store(project=project_editjob)
    path = editjob_path(NAMESPACE)
    kube = PagedKube(600, store=store, path=path)
    informer = Informer(kube, path, store, kind="editjobs", page_size=250)  # type: ignore[arg-type]
    await informer.relist()
    removed: list[tuple[str, str]] = []
    store.listeners.append(lambda key, old, new: removed.append(key) if new is None else None)

    kube.missing = {3, 420, 599}  # deleted while the watch was away (a 410 re-list)
    await informer.relist()

    assert sorted(removed) == [(NAMESPACE, f"ej-{i:05d}") for i in (3, 420, 599)]
    assert len(store) == 597 and informer.relists == 2


def test_kopf_watches_no_resource_so_each_kind_has_one_watch():
    """Issue 21 item 3: the informers hold the only EditJob watch; kopf keeps the login, the
    startup and cleanup handlers and the probes, and registers no resource handler at all
    (a deletion handler would have kopf list and watch every EditJob a second time)."""
    from editflow.core.settings import Settings

    registry, _ = app.build_registry(Settings())
    resource_registries = (
        registry._indexing,
        registry._watching,
        registry._spawning,
        registry._changing,
        registry._webhooks,
    )
    assert all(not r.get_all_handlers() for r in resource_registries)
    assert registry._activities.get_all_handlers()  # login, startup, cleanup, probes


async def test_freed_memory_is_handed_back_once_the_caches_have_synced(monkeypatch):
    path = editjob_path(NAMESPACE)
    calls: list[bool] = []
    cache = ClusterCache(None, [NAMESPACE])  # type: ignore[arg-type]
    kube = PagedKube(40, store=cache.editjobs, path=path)
    for informer in cache.informers:
        informer.kube = kube  # type: ignore[assignment]
    monkeypatch.setattr(caches, "release_freed_memory", lambda: calls.append(cache.synced) or True)

    task = asyncio.create_task(cache.run())
    try:
        for _ in range(200):
            if calls:
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    assert calls == [True]  # once, and only after every informer's first list
    assert len(cache.editjobs) == 40


def test_release_freed_memory_trims_the_heap_on_glibc():
    released = caches.release_freed_memory()
    assert released is (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")


def test_a_write_through_older_than_a_deletion_does_not_bring_the_object_back() -> None:
    """Our own PATCH can be answered after the watch already said DELETED (the finalizer's
    release, say): taking that older version back left a ghost EditJob that held a slot of
    the namespace's cap for good (the lifecycle suite's queue stopped). A newer object of the
    same name (created again) is taken."""
    store = Store()

    def obj(version: str) -> dict:
        return {"metadata": {"namespace": "edits", "name": "a", "resourceVersion": version}}

    store.upsert(obj("10"))
    store.remove(("edits", "a"), version=12)  # the DELETED event, at revision 12
    assert store.upsert(obj("11")) is False and store.get(("edits", "a")) is None
    assert store.upsert(obj("13")) is True  # created again since
