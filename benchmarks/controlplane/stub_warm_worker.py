"""A warm worker that answers at once: ``editflow worker serve`` with no model behind it.

The process kubelet runs it in place of ``editflow worker serve`` for the benchmark's
stub image (``controlplane.localplatform.write_stub_launcher``), so the warm-mode run
times the control plane, not an edit. Everything but the model is the real worker:

* the pull loop, the heartbeats (``loading`` → ``idle`` → ``busy`` → ``idle``), the
  control subject, the acks and the result publish are
  :class:`editflow.inference.serve.WarmWorker` itself;
* each work message is opened as :func:`editflow.inference.worker.execute` opens it:
  :func:`~editflow.inference.worker.parse_request`, then
  :func:`~editflow.inference.worker.open_attempt` unseals the attempt's STS credentials
  and result token with the mounted pool key (``EDITFLOW_WORKER__POOL_KEY_FILE``);
* the result JSON is written to S3 with those credentials by
  :func:`~editflow.inference.worker.store_result` (the attempt's key, its prefix only),
  and the published result carries the attempt's token, as a real worker's does.

Only the image is skipped: no fetch, no pipeline, no upload of a PNG. ``serve`` takes
``execute`` as a module function with no injection point, so :func:`main` rebinds it in
this process alone (a benchmark stub; the product's worker is untouched).

Every handled message's receive time (``time.monotonic()``, system-wide on Linux, so
comparable with the benchmark's clock) is logged as ``stub answered <edit id> <status>
received=<time>``.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time

from editflow.core.errors import EditflowError
from editflow.core.settings import Settings
from editflow.events.worker_contract import CostBreakdown, WorkerRequest, WorkerResult
from editflow.events.worker_contract import attempt_prefix as attempt_prefix_of
from editflow.inference import serve
from editflow.inference.pipeline import ModelCache
from editflow.inference.worker import failure, open_attempt, parse_request, store_result

log = logging.getLogger("bench.stub_warm_worker")


def success(request: WorkerRequest, settings: Settings) -> WorkerResult:
    """The result of a successful attempt of ``request`` (no image is really made)."""
    fmt = request.output.format
    return WorkerResult(
        status="success",
        edit_id=request.edit_id,
        attempt=request.attempt,
        model=request.model,
        seed=request.parameters.seed or 0,
        bucket=settings.s3.bucket,
        result_key=f"{attempt_prefix_of(request)}/result.{fmt}",
        width=64,
        height=64,
        format=fmt,
        cost=CostBreakdown(total=0.001),
    )


def answer(
    raw: str,
    settings: Settings,
    models: ModelCache | None = None,
    *,
    termination_log: str | None = None,
    worker: str | None = None,
) -> tuple[WorkerResult, int]:
    """``execute``'s contract without the edit: unseal, answer, store the result JSON.

    A message that cannot be read or unsealed gets the failed result ``execute`` would
    give, so a broken protocol shows in the benchmark as failed completions, not a hang.
    """
    received = time.monotonic()
    request: WorkerRequest | None = None
    token: str | None = None
    try:
        request = parse_request(raw)
        settings, token = open_attempt(settings, request)
        result = success(request, settings)
    except EditflowError as exc:
        result = failure(request, raw, exc, exc)
    result.worker = worker
    result.token = token
    try:
        store_result(result, request, settings)
    except Exception as exc:  # as execute: the contract still needs a result
        log.exception("stub result not stored")
        result = failure(request, raw, None, exc)
        result.worker, result.token = worker, token
    log.info("stub answered %s %s received=%.4f", result.edit_id, result.status, received)
    return result, 0


class StubWarmWorker(serve.WarmWorker):
    """The real warm worker with nothing to load."""

    async def _load(self) -> int:
        self.loaded = True
        return 0


def main(argv: list[str]) -> int:
    """``editflow worker serve --model NAME [...]``, as the operator's Job runs it."""
    if argv[:2] != ["worker", "serve"]:
        print(f"stub warm worker: expected 'worker serve ...', got {argv[:2]}", file=sys.stderr)
        return 2
    model = argv[argv.index("--model") + 1] if "--model" in argv else None
    if not model:
        print("stub warm worker: --model NAME is required", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    serve.execute = answer  # see the module docs: serve has no injection point for it
    worker = StubWarmWorker(Settings(), model=model, http_port=0)
    return asyncio.run(worker.run())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
