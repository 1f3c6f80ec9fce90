"""The reconcile scheduling parts in isolation: the work queue and the queue/cap index.

These are the pieces that make a reconcile's cost independent of the number
of EditJobs; the end-to-end proof (requests counted through a proxy with 10
and 2,000 queued EditJobs) is in test_scale.py.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from editflow.operator.caches import project_editjob
from editflow.operator.names import LABEL_EDITJOB
from editflow.operator.workindex import WorkIndex
from editflow.operator.workqueue import WorkQueue

NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)


def ts(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def editjob(name: str, phase: str = "Queued", priority: int = 50, queued: int = 0, **status):
    return {
        "metadata": {"namespace": "edits", "name": name, "uid": f"u-{name}"},
        "spec": {"priority": priority},
        "status": {"phase": phase, "queuedAt": ts(NOW + timedelta(seconds=queued)), **status},
    }


def job(name: str, owner: str, finished: bool = False):
    conditions = [{"type": "Complete", "status": "True"}] if finished else []
    return {
        "metadata": {"namespace": "edits", "name": name, "labels": {LABEL_EDITJOB: owner}},
        "status": {"conditions": conditions},
    }


async def test_a_key_added_many_times_is_processed_once_and_never_twice_at_once() -> None:
    queue: WorkQueue[str] = WorkQueue()
    seen: list[str] = []
    running: set[str] = set()
    overlap = []

    async def work(key: str) -> None:
        if key in running:
            overlap.append(key)
        running.add(key)
        seen.append(key)
        await asyncio.sleep(0.01)
        running.discard(key)

    for _ in range(50):
        queue.add("a")
    queue.add("b")
    workers = asyncio.create_task(queue.run_workers(4, work))
    await asyncio.sleep(0.005)
    queue.add("a")  # while "a" is processed: marked dirty, processed once more afterwards
    queue.add("a")
    for _ in range(100):
        if len(seen) >= 3 and not queue.processing and not len(queue):
            break
        await asyncio.sleep(0.01)
    workers.cancel()
    assert sorted(seen) == ["a", "a", "b"] and overlap == []


async def test_failures_back_off_exponentially_per_key_until_forgotten() -> None:
    queue: WorkQueue[str] = WorkQueue(base_delay=0.5, max_delay=4.0)
    delays = [queue.add_rate_limited("x") for _ in range(5)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert queue.add_rate_limited("y") == 0.5  # per key
    queue.forget("x")
    assert queue.add_rate_limited("x") == 0.5


async def test_a_delayed_add_never_postpones_an_earlier_one() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add_after("k", 0.05)
    queue.add_after("k", 60)
    await asyncio.sleep(0.1)
    assert len(queue) == 1 and await queue.get() == "k"


def test_queue_order_is_priority_then_arrival_and_backoff_entries_wait() -> None:
    index = WorkIndex()
    index.editjob_changed(("edits", "low"), None, editjob("low", priority=10, queued=0))
    index.editjob_changed(("edits", "high"), None, editjob("high", priority=90, queued=5))
    index.editjob_changed(("edits", "mid"), None, editjob("mid", priority=50, queued=1))
    later = ts(NOW + timedelta(seconds=30))
    retry = editjob("retry", priority=99, queued=0, retryAfter=later)
    index.editjob_changed(("edits", "retry"), None, retry)
    assert index.head("edits", 10, NOW) == [("edits", "high"), ("edits", "mid"), ("edits", "low")]
    assert index.queued_ahead(("edits", "low"), editjob("low", priority=10), NOW) == 2
    # once its backoff passes, the retry sorts first
    assert index.head("edits", 1, NOW + timedelta(seconds=31)) == [("edits", "retry")]
    # leaving the queue (a Job named in status) removes it from the order
    running = editjob("high", phase="Running", jobName="high-a1")
    index.editjob_changed(("edits", "high"), None, running)
    assert ("edits", "high") not in index.head("edits", 10, NOW)


def test_in_flight_counts_unfinished_jobs_claims_and_reservations_once_each() -> None:
    index = WorkIndex()
    index.job_changed(("edits", "a-a1"), None, job("a-a1", "a"))
    running = editjob("a", phase="Running", jobName="a-a1")
    index.editjob_changed(("edits", "a"), None, running)  # same attempt: counted once
    assert index.in_flight("edits") == 1
    # a status that names a Job the cache has not seen yet still holds its slot
    claimed = editjob("b", phase="Running", jobName="b-a1")
    index.editjob_changed(("edits", "b"), None, claimed)
    assert index.in_flight("edits") == 2
    assert index.reserve("edits", "c-a1", cap=3) is True
    assert index.reserve("edits", "d-a1", cap=3) is False  # the cap holds before any watch
    index.job_changed(("edits", "a-a1"), None, job("a-a1", "a", finished=True))
    assert index.in_flight("edits") == 2
    assert index.reserve("edits", "d-a1", cap=3) is True
    index.release("edits", "d-a1")
    assert index.in_flight("edits") == 2


def settled(name: str, *, phase: str = "Succeeded", completion_id: str = "c-1") -> dict:
    """A final EditJob whose completion was published: nothing left to do but expire."""
    return editjob(
        name,
        phase=phase,
        completionEventId=completion_id,
        completionPublishedAt=ts(NOW),
        callbackDelivery="none",
        finishedAt=ts(NOW),
    )


def test_settled_editjobs_are_cached_slim() -> None:
    big = settled("done")
    big["spec"]["prompt"] = "x" * 10_000
    big["metadata"]["managedFields"] = [{"manager": "kopf"}] * 10
    slim = project_editjob(big)
    assert "spec" not in slim and "managedFields" not in slim["metadata"]
    assert slim["status"] == {
        "phase": "Succeeded",
        "finishedAt": ts(NOW),
        "completionEventId": "c-1",
        "completionPublishedAt": ts(NOW),
        "callbackDelivery": "none",
    }
    # Final but not delivered yet: kept whole, its delivery needs the spec.
    undelivered = editjob("going", phase="Succeeded", completionEventId="c-2", finishedAt=ts(NOW))
    assert "spec" in project_editjob(undelivered)
    active = editjob("busy", phase="Running", jobName="busy-a1")
    assert project_editjob(active)["spec"] == active["spec"]


async def test_a_settled_editjob_seen_again_after_a_restart_reconciles_without_its_spec() -> None:
    """After a restart every EditJob arrives as 'new' to the caches; a settled one is kept slim
    (no spec) and its reconcile must only look at retention, never fail for the spec."""
    from editflow.core.settings import Settings
    from editflow.operator.caches import ClusterCache
    from editflow.operator.reconciler import Reconciler

    cache = ClusterCache(None, ["edits"])  # type: ignore[arg-type]  # no request is made
    reconciler = Reconciler(
        Settings(),
        None,
        cache=cache,
        dispatcher=None,
        outbox=None,
        s3=None,  # type: ignore[arg-type]
        writer=None,  # type: ignore[arg-type]
        delivery=None,  # type: ignore[arg-type]
    )
    done = settled("done", phase="NeedsReview")
    done["metadata"]["resourceVersion"] = "5"
    cache.editjobs.upsert(done)
    assert "spec" not in cache.editjobs.get(("edits", "done"))
    assert await reconciler.reconcile("edits", "done") is None


class RecordingOutbox:
    """Stands in for the outbox's apiserver writes: records which outcomes it was handed
    (the real writer is exercised on the platform by the lifecycle and fault suites)."""

    def __init__(self) -> None:
        self.held: list[tuple[str, str, bool]] = []

    async def hold(self, editjob: dict, *, review: bool) -> None:
        self.held.append((editjob["metadata"]["name"], editjob["status"]["phase"], review))

    def alert_if_needed(self, editjob: dict, decision: object) -> None:
        return None


class FinalizerKube:
    """Answers the finalizer PATCHes and Events of a reconcile, and records them."""

    def __init__(self) -> None:
        self.patches: list[tuple[str, dict]] = []

    async def patch(self, path: str, body: dict, **_: object) -> dict:
        self.patches.append((path, body))
        name = path.rsplit("/", 1)[-1]
        return {"metadata": {"namespace": "edits", "name": name, **body["metadata"]}}

    async def create(self, path: str, body: dict) -> dict:
        return body


class RecordingDispatcher:
    """The attempt of a running EditJob, as a dispatcher shows it; records stops."""

    def __init__(self) -> None:
        self.stopped: list[str] = []

    from editflow.operator.attempts import JOB_WORDS as words

    async def observe(self, editjob: dict) -> object:
        from editflow.operator.attempts import AttemptState

        return AttemptState(editjob["status"]["jobName"], worker="w-1")

    async def stop(self, namespace: str, name: str) -> bool:
        self.stopped.append(name)
        return True


def deleting(ej: dict) -> dict:
    from editflow.operator.names import FINALIZER

    ej["metadata"].update(deletionTimestamp=ts(NOW), finalizers=[FINALIZER], resourceVersion="7")
    return ej


async def test_deleting_an_editjob_cancels_it_through_decide_then_releases_the_finalizer() -> None:
    """Issue 21 items 2 and 3: the operator owns the finalizer. A deleted EditJob takes
    decide()'s cancel branch (GPU-seconds and metrics as for the annotation), its outcome
    goes to the outbox (the EditJob is going away), its attempt is stopped, and only then
    is the finalizer released. A final one whose outcome was never recorded as delivered
    is handed over too (issue 20 §7); a delivered one only lets go."""
    from editflow.core.settings import Settings
    from editflow.operator.caches import ClusterCache
    from editflow.operator.reconciler import Reconciler

    outbox, kube, dispatcher = RecordingOutbox(), FinalizerKube(), RecordingDispatcher()
    cache = ClusterCache(None, ["edits"])  # type: ignore[arg-type]
    reconciler = Reconciler(
        Settings(),
        kube,  # type: ignore[arg-type]
        cache=cache,
        dispatcher=dispatcher,  # type: ignore[arg-type]
        outbox=outbox,  # type: ignore[arg-type]
        s3=None,  # type: ignore[arg-type]
        writer=None,  # type: ignore[arg-type]  # a deleting EditJob's status is not written
        delivery=None,  # type: ignore[arg-type]
        now=lambda: NOW,
    )
    running = editjob(
        "busy",
        phase="Running",
        attempts=1,
        jobName="busy-a1",
        startedAt=ts(NOW - timedelta(seconds=30)),
    )
    lost = editjob("lost", phase="NeedsReview", completionEventId="c-1", finishedAt=ts(NOW))
    kept = settled("kept", completion_id="c-2")
    for ej in (running, lost, kept):
        cache.editjobs.upsert(deleting(ej))
        await reconciler.reconcile("edits", ej["metadata"]["name"])

    assert outbox.held == [("busy", "Cancelled", False), ("lost", "NeedsReview", True)]
    assert dispatcher.stopped == ["busy-a1"]
    released = [path.rsplit("/", 1)[-1] for path, body in kube.patches]
    assert released == ["busy", "lost", "kept"]
    assert all(body["metadata"]["finalizers"] == [] for _, body in kube.patches)
    assert all(body["metadata"]["resourceVersion"] == "7" for _, body in kube.patches)

    # The watch's DELETED events of those three are no news: nothing is held twice.
    for name in ("busy", "lost", "kept"):
        cache.editjobs.remove(("edits", name))
    await asyncio.sleep(0.05)
    assert len(outbox.held) == 2

    # One deleted without the finalizer (kubectl-applied, gone before it was accepted) is
    # gone at once: its cancellation still reaches the outbox.
    bare = editjob("bare", phase="Running", attempts=1, jobName="bare-a1")
    cache.editjobs.upsert(bare)
    cache.editjobs.remove(("edits", "bare"))
    await asyncio.sleep(0.05)
    assert outbox.held[-1] == ("bare", "Cancelled", False)
    assert dispatcher.stopped[-1] == "bare-a1"


async def test_deleting_a_settled_editjob_wakes_its_reconcile_through_the_cache() -> None:
    """A settled EditJob changes no more, so its updates wake nothing, except its deletion:
    the watch's update that sets ``deletionTimestamp`` must queue it, or its finalizer is
    never released and ``kubectl delete`` hangs (seen on ``editflow dev up``)."""
    from editflow.core.settings import Settings
    from editflow.operator.caches import ClusterCache
    from editflow.operator.reconciler import Reconciler

    cache = ClusterCache(None, ["edits"])  # type: ignore[arg-type]
    reconciler = Reconciler(
        Settings(),
        FinalizerKube(),  # type: ignore[arg-type]
        cache=cache,
        dispatcher=RecordingDispatcher(),  # type: ignore[arg-type]
        outbox=RecordingOutbox(),  # type: ignore[arg-type]
        s3=None,  # type: ignore[arg-type]
        writer=None,  # type: ignore[arg-type]
        delivery=None,  # type: ignore[arg-type]
        now=lambda: NOW,
    )

    cache.editjobs.upsert(settled("done"))
    while len(reconciler.queue):
        reconciler.queue.done(await reconciler.queue.get())
    resynced = settled("done")
    resynced["metadata"]["resourceVersion"] = "6"
    cache.editjobs.upsert(resynced)
    assert len(reconciler.queue) == 0  # a settled EditJob's resync is no work
    cache.editjobs.upsert(deleting(settled("done")))
    assert len(reconciler.queue) == 1
    key = await reconciler.queue.get()
    await reconciler.reconcile(*key)
    ((path, body),) = reconciler.kube.patches
    assert path.endswith("/done") and body["metadata"]["finalizers"] == []
