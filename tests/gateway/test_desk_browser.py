"""The designer's desk in headless Chromium: a NeedsReview ticket appears, is claimed, fixed.

The gateway runs as deployed (``editflow gateway run``, a uvicorn process) against the
session's NATS and MinIO, with a reviewer token; the test plays the operator, writing the
ticket ``operator/desk.py`` makes of a NeedsReview EditJob into the desk's read model
(``EDITFLOW_DESK_<ns>``), with its before and after images in MinIO. One browser walks the
loop: the ticket in the queue, claimed, a fixed image uploaded; the review action lands in
the approvals stream with the stored image's key. Screenshots of the queue and the edit in
both languages go where the try-it test leaves its own
(``~/.cache/editflow/reports/screenshots/``).
"""

from __future__ import annotations

import asyncio
import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import nats
import PIL.Image
import pytest
from selenium.webdriver.common.by import By

from editflow.core.s3 import s3_client
from editflow.devstack.procs import wait_until
from editflow.events.desk import bucket_name
from editflow.operator.desk import ticket_bytes, ticket_for
from tests.gateway.browser import available, chromium, console, screenshot
from tests.gateway.servers import isolated_events, running_gateway

pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(
        not available(), reason="needs Debian chromium and chromium-driver (bootstrap.sh)"
    ),
]

NS = "desk-browser"
REVIEWER = {"token": "desk-browser-token-0123", "name": "李雷", "id": "u-lei", "namespaces": [NS]}


def png(colour: str, size: tuple[int, int] = (160, 120)) -> bytes:
    out = io.BytesIO()
    PIL.Image.new("RGB", size, colour).save(out, format="PNG")
    return out.getvalue()


def nats_call(url: str, work: Any) -> Any:
    async def go() -> Any:
        nc = await nats.connect(url)
        try:
            return await work(nc.jetstream())
        finally:
            await nc.close()

    return asyncio.run(go())


def test_a_needs_review_ticket_is_claimed_and_fixed_in_the_browser(nats_minio, tmp_path) -> None:
    name = f"ej-{datetime.now(UTC):%H%M%S%f}"
    s3 = nats_minio.s3_settings()
    client = s3_client(s3)
    keys = {
        "input": f"uploads/{NS}/ab/poster.png",
        "r1": f"results/{NS}/{name}/attempt-2/1.png",
        "r2": f"results/{NS}/{name}/attempt-2/2.png",
    }
    for key, colour in zip(keys.values(), ("steelblue", "orange", "gold"), strict=True):
        data = png(colour)
        client.put_object(s3.bucket, key, io.BytesIO(data), len(data), content_type="image/png")
    # The operator's own read model of a NeedsReview EditJob (operator/desk.py), so that the
    # page is tested against what the operator really writes.
    since = (datetime.now(UTC) - timedelta(hours=5)).isoformat()
    editjob = {
        "metadata": {"namespace": NS, "name": name, "uid": "uid-1"},
        "spec": {
            "prompt": "把背景换成海边日落",
            "usage": "wechat-article",
            "model": "longcat-image-edit",
            "template": {"id": "replace-background"},
            "source": {"s3Key": keys["input"]},
            "oa": {"department": "marketing", "applicant": "u-1", "approvers": ["m-1"]},
        },
        "status": {
            "phase": "NeedsReview",
            "finishedAt": since,
            "errorCode": "quality_gate",
            "message": "the quality gate failed: the edit changed too much of the image",
            "attempts": 2,
            "workerPod": "editflow-worker-a2",
            "variants": [
                {"index": 1, "resultKey": keys["r1"]},
                {"index": 2, "resultKey": keys["r2"]},
            ],
            "quality": {"verdict": "fail", "changedFraction": 0.81, "ssim": 0.42},
        },
    }
    ticket = ticket_bytes(ticket_for(editjob, {2: ["loading model", "step 8/8"]}))
    assert ticket is not None

    async def put_ticket(js: Any) -> None:
        kv = await js.create_key_value(bucket=bucket_name(NS), history=1)
        await kv.put(name, ticket)

    nats_call(nats_minio.nats_url, put_ticket)
    reviewers = tmp_path / "reviewers.json"
    reviewers.write_text(json.dumps([REVIEWER]), encoding="utf-8")
    events = isolated_events()
    fixed = tmp_path / "fixed.png"
    fixed.write_bytes(png("seagreen"))
    with (
        running_gateway(
            nats_minio,
            tmp_path / "gateway",
            EDITFLOW_GATEWAY__DESK_REVIEWERS_FILE=str(reviewers),
            EDITFLOW_GATEWAY__DESK_WAITING_SECONDS="3600",
            **events,
        ) as gateway,
        chromium(tmp_path) as driver,
    ):

        def js(expression: str) -> Any:
            return driver.execute_script(f"return {expression}")

        def ready() -> None:
            wait_until(
                lambda: js("document.body.dataset.ready") == "true",
                timeout=30,
                what="the desk to load",
            )

        def language(lang: str) -> None:
            driver.execute_script(
                f"const l = document.getElementById('lang'); l.value = '{lang}';"
                " l.dispatchEvent(new Event('change'));"
            )

        driver.get(f"{gateway.url}/desk?lang=en")
        ready()
        assert js("document.getElementById('login').hidden") is False  # no token yet
        driver.find_element(By.ID, "token").send_keys(REVIEWER["token"])
        driver.find_element(By.ID, "login-button").click()
        wait_until(
            lambda: js("document.querySelector('#lane-needs_review li[data-name]')") is not None,
            timeout=30,
            what="the NeedsReview ticket in the queue",
        )
        assert js("document.getElementById('count-needs_review').textContent") == "1"
        assert js("document.querySelector('#lane-needs_review .badge').textContent") == "overdue"
        screenshot(driver, "desk-queue-en")
        language("zh")
        wait_until(
            lambda: (
                js("document.querySelector('#lane-needs_review .badge')?.textContent") == "超时"
            ),
            timeout=10,
            what="the queue in Chinese",
        )
        assert js("document.getElementById('count-needs_review').textContent") == "1"
        screenshot(driver, "desk-queue-zh")

        driver.find_element(By.CSS_SELECTOR, "#lane-needs_review li[data-name] a").click()
        wait_until(
            lambda: js("document.body.dataset.view") == "edit", timeout=15, what="the edit to open"
        )
        driver.find_element(By.ID, "claim").click()
        wait_until(
            lambda: js("!document.getElementById('act-upload').hidden"),
            timeout=15,
            what="the upload form after the claim",
        )
        assert "李雷" in js("document.getElementById('holder').textContent")
        wait_until(
            lambda: js(
                "[...document.querySelectorAll('#edit img')]"
                ".every(i => i.complete && i.naturalWidth === 160)"
            ),
            timeout=15,
            what="before and both variants to load from MinIO",
        )
        assert js("document.querySelectorAll('#variants img').length") == 2
        driver.execute_script("window.scrollTo(0, 0)")
        screenshot(driver, "desk-edit-zh")
        language("en")
        wait_until(
            lambda: (
                js("document.body.dataset.view") == "edit"
                and "Held by" in js("document.getElementById('holder').textContent")
            ),
            timeout=15,
            what="the edit in English",
        )
        driver.execute_script("window.scrollTo(0, 0)")
        screenshot(driver, "desk-edit-en")

        driver.find_element(By.ID, "upload-file").send_keys(str(fixed))
        driver.find_element(By.ID, "upload-button").click()
        try:
            wait_until(
                lambda: "review-" in js("document.getElementById('done').textContent"),
                timeout=15,
                what="the upload to be accepted",
            )
        except TimeoutError as exc:
            shown = js("document.getElementById('error').textContent")
            raise AssertionError(f"{exc}; error: {shown}; console: {console(driver)}") from None
        result_key = js("document.getElementById('done').textContent").split(": ", 1)[1]

    assert result_key.startswith(f"results/{NS}/{name}/review-") and result_key.endswith(".png")
    stored = client.get_object(s3.bucket, result_key)
    try:
        assert stored.read() == fixed.read_bytes()
    finally:
        stored.close()
        stored.release_conn()

    async def published(js: Any) -> list[dict]:
        stream = events["EDITFLOW_EVENTS__APPROVALS_STREAM"]
        subject = f"{events['EDITFLOW_EVENTS__APPROVAL_SUBJECT']}.review"
        sub = await js.pull_subscribe(subject, stream=stream)
        return [json.loads(m.data)["data"] for m in await sub.fetch(10, timeout=2)]

    [action] = nats_call(nats_minio.nats_url, published)
    assert action["action"] == "upload" and action["result_key"] == result_key
    assert action["reviewer"] == {"id": "u-lei", "name": "李雷"} and action["editjob"] == name
