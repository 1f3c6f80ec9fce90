"""The worker's straight line: fetch -> preprocess -> edit -> upload -> report.

``editflow worker run --request '<WorkerRequest JSON>'`` runs :func:`execute`
once and exits with the outcome's exit code (the operator contract, see
:mod:`editflow.events.worker_contract`); ``editflow worker serve`` runs the
same :func:`process` for each message of a JetStream work queue with the
pipeline kept loaded (:mod:`editflow.inference.serve`).

Environment (all read through :class:`editflow.core.settings.Settings`):

==========================================  ==========================================
``EDITFLOW_WORKER__MODELS_ROOT``            dir (or PVC mount) holding ``<model>/`` dirs
                                            saved with ``save_pretrained`` (default
                                            ``/models``)
``EDITFLOW_WORKER__WEIGHTS_S3_PREFIX``      S3 prefix with ``<model>/`` + manifest.json,
                                            used when the local dir is missing
``EDITFLOW_WORKER__WEIGHTS_S3_BUCKET``      bucket of the weights (default: the S3 bucket)
``EDITFLOW_WORKER__CACHE_DIR``              where S3 weights are downloaded once
``EDITFLOW_WORKER__DEVICE``                 ``auto`` | ``cuda`` | ``cuda:N`` | ``cpu``
``EDITFLOW_WORKER__DTYPE``                  ``auto`` | ``bfloat16`` | ``float16`` | ``float32``
``EDITFLOW_WORKER__CPU_OFFLOAD``            ``none`` | ``model`` | ``sequential``
``EDITFLOW_WORKER__ATTENTION_BACKEND``      diffusers attention backend (e.g. ``flash``)
``EDITFLOW_WORKER__COMPILE_REPEATED_BLOCKS``  ``true`` compiles the transformer's blocks
                                            (models whose acceleration leaves it unset)
``EDITFLOW_WORKER__ACCELERATION``           JSON map model -> cache method, FP8, compile
                                            over the registry's (editflow.core.acceleration)
``EDITFLOW_WORKER__FETCH_MAX_BYTES``        download cap (default 30 MiB)
``EDITFLOW_WORKER__FETCH_TIMEOUT_SECONDS``  whole-fetch deadline (default 30)
``EDITFLOW_WORKER__MAX_PIXELS``             decoded pixel cap (default 40 M)
``EDITFLOW_WORKER__ALLOW_HOSTS``            JSON list of hosts exempt from the SSRF guard
``EDITFLOW_WORKER__ALLOW_CIDRS``            JSON list of networks exempt from it
``EDITFLOW_WORKER__TERMINATION_LOG``        termination message path
                                            (default ``/dev/termination-log``)
``POD_NAME``                                the result's ``worker`` (default: host name)
``EDITFLOW_S3__*``                          endpoint, keys, bucket, public endpoint,
                                            ``PRESIGN_EXPIRY_SECONDS``
==========================================  ==========================================

A tiny model for tests: ``editflow worker tiny-model --model longcat-image-edit
--out $ROOT/longcat-image-edit`` then ``EDITFLOW_WORKER__MODELS_ROOT=$ROOT``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import SecretStr, ValidationError

from editflow.core.errors import EditflowError, InvalidInputError
from editflow.core.logging import log_context
from editflow.core.sealing import MAX_SEALED_SECONDS, SealError, parse_keys, unseal
from editflow.core.settings import Settings
from editflow.core.urlguard import redacted
from editflow.events.worker_contract import (
    CostBreakdown,
    LoadDetail,
    VariantResult,
    WorkerRequest,
    WorkerResult,
    attempt_prefix,
)
from editflow.inference import cancel, output, report
from editflow.inference.fetch import Fetched, FetchLimits, fetch_s3, fetch_url
from editflow.inference.pipeline import ModelCache, run_edit
from editflow.inference.preprocess import PreparedImage, preprocess
from editflow.inference.profiles import output_profile
from editflow.inference.prompts import validate_prompt
from editflow.inference.quality import assess, thresholds_from_settings
from editflow.inference.registry import ModelSpec, get_spec
from editflow.inference.weights import model_dir_defaults

log = logging.getLogger(__name__)

#: A valid ``edit_id`` (as the contract's pattern): salvaged ids must match it.
EDIT_ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9.-]{0,252}")
_EDIT_ID = EDIT_ID_PATTERN


@dataclass
class Timer:
    cost: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    load_detail: LoadDetail | None = None

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            self.cost[name] = round(self.cost.get(name, 0.0) + time.perf_counter() - began, 4)

    def add(self, name: str, seconds: float) -> None:
        self.cost[name] = round(self.cost.get(name, 0.0) + seconds, 4)

    def breakdown(self) -> CostBreakdown:
        return CostBreakdown(
            **self.cost,
            total=round(time.perf_counter() - self.started, 4),
            load_detail=self.load_detail,
        )


def pod_name() -> str:
    """The name results and heartbeats give this worker: ``POD_NAME``, else the host name.

    A Pod's host name is its name, so the fallback is right in Kubernetes too; the
    operator may set ``POD_NAME`` from the downward API to be explicit.
    """
    return os.environ.get("POD_NAME") or socket.gethostname()


def parse_request(raw: str) -> WorkerRequest:
    """Operator JSON -> :class:`WorkerRequest`, or one ``InvalidInputError`` naming the field."""
    try:
        return WorkerRequest.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or None
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'request'}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidInputError(f"invalid worker request: {problems}", field=where) from exc


def fetch(request: WorkerRequest, settings: Settings) -> Fetched:
    limits = FetchLimits.from_settings(settings.worker)
    if request.source.url is not None:
        return fetch_url(request.source.url, limits)
    key = request.source.s3_key
    assert key is not None
    weights = settings.worker.weights_s3_prefix
    if weights and key.strip("/").startswith(weights.strip("/") + "/"):
        raise InvalidInputError(
            "the source key points into the model weights", field="source.s3_key"
        )
    return fetch_s3(key, settings.s3, limits)


def process(
    request: WorkerRequest,
    settings: Settings,
    models: ModelCache,
    *,
    timer: Timer | None = None,
) -> WorkerResult:
    """One edit end to end; raises :class:`EditflowError` on failure (no reporting here)."""
    timer = timer or Timer()
    spec: ModelSpec = get_spec(request.model)
    seed = request.parameters.seed
    if seed is None:
        seed = secrets.randbits(32)

    step = timer.step
    # The weights load in the background (a no-op when warm) while the cheap steps run;
    # a bad prompt or image fails at once, never after a 6B load.
    with step("load"):
        # Local, PVC, or downloaded from S3 (once), before the two threads that read it.
        model_dir = models.model_dir(spec)
    loading = models.load_in_background(spec)
    # Overlaps the load (same imports); its time is inside the load's, not added to it.
    tokenizer = models.tokenizer(spec)
    prompt = validate_prompt(request.prompt, tokenizer, spec.prompt)
    steps, guidance, negative = spec.resolve_params(
        steps=request.parameters.steps,
        guidance_scale=request.parameters.guidance_scale,
        negative_prompt=request.parameters.negative_prompt,
        overrides=model_dir_defaults(model_dir),
    )
    with step("fetch"):
        fetched = fetch(request, settings)
    with step("preprocess"):
        prepared: PreparedImage = preprocess(
            fetched.data,
            max_pixels=settings.worker.max_pixels,
            multiple=spec.multiple,
            preview=request.preview,
        )
    cancel.check()  # withdrawn while the image came in: the model never runs
    model, load_seconds = loading.result()
    timer.add("load", load_seconds)
    if load_seconds:  # this attempt loaded the model: say where the time went
        timer.load_detail = model.load_detail
    with step("infer"):
        images = run_edit(
            model, image=prepared.image, prompt=prompt, steps=steps,
            guidance_scale=guidance, negative_prompt=negative, seed=seed,
            variants=request.variants,
        )  # fmt: skip
    cancel.check()
    with step("gate"):
        # Against the image the model saw: same framing, before the usage profile resizes it.
        thresholds = thresholds_from_settings(settings.worker.gate_thresholds)
        verdicts = [
            assess(prepared.image, edited, prompt, template=request.template, thresholds=thresholds)
            for edited in images
        ]
    with step("upload"):
        profile = output_profile(request)
        variants = []
        for index, (edited, quality) in enumerate(zip(images, verdicts, strict=True), start=1):
            encoded = output.encode(edited, output.final_size(prepared.size, profile), profile)
            key = output.result_image_key(attempt_prefix(request), encoded.format, index)
            metadata = output.object_metadata(
                edit_id=request.edit_id, attempt=request.attempt, event_id=request.event_id,
                prompt=prompt, model=spec.name, seed=(seed + index - 1) % 2**32,
                usage=request.usage,
            )  # fmt: skip
            output.put_bytes(
                settings.s3, key, encoded.data, encoded.content_type, metadata,
                retry_seconds=settings.worker.upload_retry_seconds,
            )  # fmt: skip
            variant = VariantResult(
                index=index, seed=(seed + index - 1) % 2**32, result_key=key,
                result_url=output.presign(settings.s3, key), width=encoded.width,
                height=encoded.height, quality=quality,
            )  # fmt: skip
            variants.append(variant)
    first = variants[0]
    log.info(
        "edit done",
        extra={"edit_id": request.edit_id, "attempt": request.attempt, "key": first.result_key,
               "source": fetched.source, "cost": timer.cost, "gate": verdicts[0].verdict,
               "variants": len(variants)},
    )  # fmt: skip
    return WorkerResult(
        status="success",
        edit_id=request.edit_id,
        attempt=request.attempt,
        model=spec.name,
        seed=seed,
        bucket=settings.s3.bucket,
        result_key=first.result_key,
        result_url=first.result_url,
        width=first.width,
        height=first.height,
        format=encoded.format,  # type: ignore[arg-type]
        cost=timer.breakdown(),
        quality=first.quality,
        accelerations=model.accelerations,
        # One result is the common case: its fields above say everything.
        variants=variants if len(variants) > 1 else [],
    )


def failure(
    request: WorkerRequest | None, raw: str | None, error: EditflowError | None, exc: BaseException
) -> WorkerResult:
    edit_id, attempt, model = "unknown", 1, "unknown"
    if request is not None:
        edit_id, attempt, model = request.edit_id, request.attempt, request.model
    elif raw:
        # Salvage the ids of a request that failed validation, but only values the
        # contract allows: they become an S3 key and the operator matches on them.
        try:
            data = json.loads(raw)
            if isinstance(data.get("edit_id"), str) and _EDIT_ID.fullmatch(data["edit_id"]):
                edit_id = data["edit_id"]
            if isinstance(data.get("attempt"), int) and 1 <= data["attempt"] <= 100:
                attempt = data["attempt"]
            if isinstance(data.get("model"), str) and len(data["model"]) <= 64:
                model = data["model"]
        except (ValueError, TypeError, AttributeError):
            pass
    info = error.info() if error is not None else report.unexpected_error_info(exc)
    seed = request.parameters.seed if request is not None else None
    return WorkerResult(
        status="failed", edit_id=edit_id, attempt=attempt, model=model, seed=seed, error=info
    )


def open_attempt(settings: Settings, request: WorkerRequest) -> tuple[Settings, str | None]:
    """The attempt's settings (its sealed STS key as the S3 key) and its result token.

    The sealed token expires with the attempt's longest life (its STS duration): a message
    read back from the stream later than that cannot be used, even with the key.
    """
    if request.credentials is None:
        return settings, request.result_token
    path = settings.worker.pool_key_file
    keys = parse_keys(Path(path).read_text()) if path and Path(path).exists() else []
    opened = unseal(request.credentials, keys, ttl=MAX_SEALED_SECONDS)
    try:
        s3 = settings.s3.model_copy(
            update={
                "access_key": SecretStr(opened["access_key"]),
                "secret_key": SecretStr(opened["secret_key"]),
                "session_token": SecretStr(opened["session_token"]),
            }
        )
    except KeyError as exc:
        raise SealError(f"the attempt's sealed credentials lack {exc}") from exc
    return settings.model_copy(update={"s3": s3}), opened.get("result_token")


def _source_for_log(request: WorkerRequest) -> dict[str, str]:
    source = request.source
    if source.url:
        return {"url": redacted(source.url)}
    return {"s3_key": source.s3_key or ""}


def store_result(result: WorkerResult, request: WorkerRequest | None, settings: Settings) -> None:
    """Write ``result`` to S3 at its result JSON key (skipped when no valid edit id is known)."""
    key_prefix = request.output.key_prefix if request is not None else "results"
    if result.edit_id != "unknown":
        # A success's JSON is what an adopting operator reads: as patient as the image was.
        # A failure's is best effort (S3 being away is often why the attempt failed).
        patience = settings.worker.upload_retry_seconds if result.status == "success" else 0.0
        report.upload_result(result, settings.s3, key_prefix, retry_seconds=patience)


def refuse(
    raw: str, settings: Settings, error: EditflowError, *, worker: str | None = None
) -> WorkerResult:
    """The failed result of a request that is not run, stored in S3 like any failed attempt.

    The ids come from the request as far as it parses, so the operator finds the result
    where it looks for this attempt's (warm mode: an edit delivered too often).
    """
    request: WorkerRequest | None = None
    token: str | None = None
    with suppress(InvalidInputError):  # unreadable: the ids are salvaged from the raw JSON
        request = parse_request(raw)
    if request is not None:
        with suppress(EditflowError):  # unreadable credentials: the result goes unsigned
            settings, token = open_attempt(settings, request)
    result = failure(request, raw, error, error)
    result.worker = worker
    result.token = token
    store_result(result, request, settings)
    return result


def execute(
    raw: str,
    settings: Settings,
    models: ModelCache | None = None,
    *,
    termination_log: str | None = None,
    worker: str | None = None,
) -> tuple[WorkerResult, int]:
    """Parse, process and report one request; returns the result and the exit code.

    ``worker`` (the Pod's name) goes into the result, so an outcome names who ran it.
    """
    models = models or ModelCache(settings.worker, settings.s3)
    request: WorkerRequest | None = None
    token: str | None = None
    error: EditflowError | None = None
    timer = Timer()
    try:
        request = parse_request(raw)
        # Warm mode: this attempt's own S3 key and result token, sealed for its pool (issue 20).
        settings, token = open_attempt(settings, request)
        # Every line of this edit names it, whoever logs it (fetch, pipeline, S3 client...).
        with log_context(edit_id=request.edit_id, attempt=request.attempt):
            log.info("edit started", extra={"model": request.model})
            result = process(request, settings, models, timer=timer)
    except EditflowError as exc:
        error = exc
        result = failure(request, raw, exc, exc)
        # Prompt and source go to the log so a designer can pick a failed edit up by hand.
        log.warning(
            "edit failed",
            extra={
                "edit_id": result.edit_id, "attempt": result.attempt, "error": str(exc),
                "retriable": exc.retriable,
                # The URL without its query (a presigned URL's signature); the whole one is
                # in the EditJob's spec for the designer who picks the edit up.
                "source": _source_for_log(request) if request else None,
                "prompt": request.prompt if request else None,
            },
        )  # fmt: skip
    except Exception as exc:  # the contract still needs a result and a retriable code
        log.exception(
            "edit failed unexpectedly", extra={"edit_id": getattr(request, "edit_id", None)}
        )
        result = failure(request, raw, None, exc)
    if result.status == "failed":
        result.cost = timer.breakdown()
    result.worker = worker
    result.token = token
    store_result(result, request, settings)
    report.write_termination_message(
        termination_log if termination_log is not None else settings.worker.termination_log, result
    )
    return result, report.exit_code_for(result, error)
