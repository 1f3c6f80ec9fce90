"""The desk's whole loop in Chromium on the real local platform (issue 22, "Real browser").

Unlike ``test_desk_browser.py`` (the gateway alone, the ticket written by the test), here
the operator runs: an operator of this module's own watches a namespace of its own with
warm workers of the tiny model and every successful edit sampled (``sample_rate`` 1), and
the gateway in front of the same NATS and MinIO shows its tickets. One operator, gateway
and browser serve three cases:

* a NeedsReview edit (its source unreachable) is claimed and a fixed image uploaded; the
  OA side (the SDK's ``wait_for_completion``) receives a success whose result is that image;
* a sampled successful edit is marked poor with a better instruction: the verdict is
  recorded on the EditJob and no second completion follows the success;
* a NeedsReview edit is re-run with a corrected instruction: a new attempt runs on the
  corrected instruction (the warm worker's log lines of it, which the desk shows, say so).
"""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import PIL.Image
import pytest
from nats.js.errors import NotFoundError
from selenium.webdriver.common.by import By

from editflow.core.s3 import s3_client
from editflow.core.settings import NatsSettings, Settings
from editflow.devstack import localmode
from editflow.devstack.kubeapi import KubeClient
from editflow.devstack.procs import wait_until
from editflow.devstack.stack import LocalStack
from editflow.events.models import CompletionEvent
from editflow.events.sdk import OAClient
from editflow.operator.crd import editjob_path
from tests.gateway.browser import available, chromium, console, screenshot
from tests.gateway.servers import running_gateway
from tests.harness import ImageHost
from tests.operator.test_scale import events_settings, isolated_events

pytestmark = [
    pytest.mark.platform,
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(
        not available(), reason="needs Debian chromium and chromium-driver (bootstrap.sh)"
    ),
]

MODEL = "longcat-image-edit"
DEAD = "http://127.0.0.1:9/unreachable.png"  # connection refused: retriable, then review


@dataclass
class Loop:
    """The module's namespace, operator, gateway and signed-in browser."""

    stack: LocalStack
    api: KubeClient
    namespace: str
    env: dict[str, str]
    operator: localmode.OperatorProcess
    gateway: Any
    driver: Any

    # -- the platform ----------------------------------------------------------------
    def submit(self, name: str, url: str, prompt: str, **spec: object) -> None:
        body = {
            "apiVersion": "editflow.io/v1alpha1",
            "kind": "EditJob",
            "metadata": {"name": name},
            "spec": {
                "source": {"url": url},
                "prompt": prompt,
                "parameters": {"steps": 2, "seed": 3},
                "oa": {"department": "marketing", "applicant": "u-1"},
                **spec,
            },
        }
        self.api.post(editjob_path(self.namespace), body)

    def status(self, name: str) -> dict:
        return self.api.get(editjob_path(self.namespace, name)).get("status") or {}

    def wait(self, name: str, done: Any, what: str, timeout: float = 90) -> dict:
        seen: dict = {}

        def reached() -> bool:
            seen.clear()
            seen.update(self.status(name))
            return bool(done(seen))

        try:
            wait_until(reached, timeout=timeout, what=what)
        except TimeoutError as exc:
            log = self.operator.process.log_tail(40) if self.operator.process else ""
            raise AssertionError(
                f"{exc}; status={seen}\noperator log:\n{log}\nworkers:\n{self.worker_logs()}"
            ) from None
        return seen

    def worker_logs(self, tail: int = 30) -> str:
        """The last lines of each worker Pod (a failure's message)."""
        out = []
        for pod in self.api.get(f"/api/v1/namespaces/{self.namespace}/pods")["items"]:
            name = pod["metadata"]["name"]
            try:
                text = self.api._http.get(
                    f"/api/v1/namespaces/{self.namespace}/pods/{name}/log",
                    params={"tailLines": tail},
                ).text
            except Exception as exc:  # a diagnostic only
                text = repr(exc)
            out.append(f"--- {name}\n{text}")
        return "\n".join(out)

    def _settings(self) -> Settings:
        nats_settings = NatsSettings(url=self.stack.nats_url)
        return Settings(nats=nats_settings, events=events_settings(self.env))

    def oa_receives(self, name: str, status: str, timeout: float = 60) -> CompletionEvent:
        """The OA side's view (the SDK): waits until the latest completion has ``status``."""
        approval = f"editjob:{self.namespace}/{name}"

        async def go() -> CompletionEvent:
            client = await OAClient.connect(self._settings(), poll_interval=0.5)
            try:
                deadline = asyncio.get_running_loop().time() + timeout
                while True:
                    left = deadline - asyncio.get_running_loop().time()
                    event = await client.wait_for_completion(approval, max(left, 0.1))
                    if event.data.status == status or left <= 0:
                        return event
                    await asyncio.sleep(0.5)
            finally:
                await client.close()

        return asyncio.run(go())

    def completions(self, name: str) -> list[str]:
        """The status of every completion published for ``name``, in order (read from the
        stream message by message: no consumer, nothing left to acknowledge)."""
        approval = f"editjob:{self.namespace}/{name}"

        async def go() -> list[str]:
            client = await OAClient.connect(self._settings())
            subject = client.topology.completion_subject(approval)
            stream = client.topology.completions_stream
            out: list[str] = []
            seq = 0
            try:
                while True:
                    try:
                        msg = await client.js.get_msg(
                            stream, seq=seq + 1, subject=subject, next=True
                        )
                    except NotFoundError:
                        return out
                    seq = msg.seq
                    event = json.loads(msg.data)
                    if event.get("type") == "io.editflow.completion.v1":
                        out.append(event["data"]["status"])
            finally:
                await client.close()

        return asyncio.run(go())

    # -- the browser -------------------------------------------------------------------
    def js(self, expression: str) -> Any:
        return self.driver.execute_script(f"return {expression}")

    def listed(self, lane: str, name: str) -> bool:
        """Reload the queue (the page does not poll): is ``name`` in ``lane``?"""
        self.driver.get(f"{self.gateway.url}/desk?lang=en")
        wait_until(
            lambda: self.js("document.body.dataset.ready") == "true", timeout=15, what="the desk"
        )
        return bool(self.js(f"document.querySelector('#lane-{lane} li[data-name=\"{name}\"]')"))

    def queue_shows(self, lane: str, name: str, timeout: float = 30) -> None:
        wait_until(
            lambda: self.listed(lane, name), timeout=timeout, what=f"{name} in the {lane} lane"
        )

    def queue_gone(self, lane: str, name: str, timeout: float = 30) -> None:
        wait_until(
            lambda: not self.listed(lane, name),
            timeout=timeout,
            what=f"{name} to leave the {lane} lane",
        )

    def language(self, lang: str) -> None:
        """Switch the page's language and wait until it shows (the back link's text)."""
        self.driver.execute_script(
            f"const l = document.getElementById('lang'); l.value = '{lang}';"
            " l.dispatchEvent(new Event('change'));"
        )
        word = "返回" if lang == "zh" else "Back"
        wait_until(
            lambda: word in self.js("document.getElementById('back').textContent"),
            timeout=10,
            what=f"the page in {lang}",
        )

    def open_and_claim(self, lane: str, name: str) -> None:
        # Found and clicked in one step: a language switch re-renders the queue meanwhile.
        self.driver.execute_script(
            f"document.querySelector('#lane-{lane} li[data-name=\"{name}\"] a').click()"
        )
        wait_until(
            lambda: self.js("document.body.dataset.view") == "edit",
            timeout=15,
            what="the edit to open",
        )
        self.driver.find_element(By.ID, "claim").click()
        wait_until(
            lambda: "Held by" in self.js("document.getElementById('holder').textContent"),
            timeout=15,
            what="the claim",
        )

    def done(self, what: str) -> str:
        try:
            wait_until(
                lambda: self.js("document.getElementById('done').textContent") != "",
                timeout=15,
                what=what,
            )
        except TimeoutError as exc:
            shown = self.js("document.getElementById('error').textContent")
            raise AssertionError(
                f"{exc}; error: {shown}; console: {console(self.driver)}"
            ) from None
        return self.js("document.getElementById('done').textContent")


def png(colour: str, size: tuple[int, int] = (96, 64)) -> bytes:
    out = io.BytesIO()
    PIL.Image.new("RGB", size, colour).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def loop(
    stack: LocalStack, tiny_model_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Loop]:
    workdir = tmp_path_factory.mktemp("desk-loop")
    tag = uuid.uuid4().hex[:6]
    namespace = f"desk-loop-{tag}"
    api = KubeClient(stack.kubeconfig)
    localmode.install_crd(api)
    localmode.install_namespace(api, stack, namespace)
    models = localmode.models_dir(stack, namespace)
    if not (models / MODEL).exists():
        shutil.copytree(tiny_model_root / MODEL, models / MODEL)
    events = isolated_events(tag)
    env = localmode.operator_env(
        stack,
        namespace,
        worker_mode="warm",
        max_warm_workers="1",
        max_running_per_namespace="1",
        warm_idle_seconds="120",
        resync_seconds="1",
        backoff_seconds="0",
        max_attempts="1",
        gpus_per_job="0",
        sample_rate="1",  # every successful edit is in today's sample
    )
    env.update(events)
    reviewer = {"token": f"desk-loop-{tag}-token", "name": "韩梅梅", "id": "u-mei"}
    reviewers = workdir / "reviewers.json"
    reviewers.write_text(json.dumps([{**reviewer, "namespaces": [namespace]}]), encoding="utf-8")
    operator = localmode.OperatorProcess(env, workdir).start()
    try:
        with (
            running_gateway(
                stack,
                workdir / "gateway",
                EDITFLOW_GATEWAY__DESK_REVIEWERS_FILE=str(reviewers),
                **events,
            ) as gateway,
            chromium(workdir) as driver,
        ):
            driver.get(f"{gateway.url}/desk?lang=en")
            wait_until(
                lambda: driver.execute_script("return document.body.dataset.ready") == "true",
                timeout=30,
                what="the desk to load",
            )
            driver.find_element(By.ID, "token").send_keys(reviewer["token"])
            driver.find_element(By.ID, "login-button").click()
            yield Loop(stack, api, namespace, env, operator, gateway, driver)
    finally:
        operator.stop()
        api.delete(f"/api/v1/namespaces/{namespace}")
        api.close()


def test_a_needs_review_edit_is_claimed_fixed_and_oa_gets_the_image(loop: Loop, tmp_path) -> None:
    name = f"nr-{uuid.uuid4().hex[:6]}"
    loop.submit(name, DEAD, "把背景换成海边日落")
    loop.wait(name, lambda s: s.get("phase") == "NeedsReview", "NeedsReview")
    loop.queue_shows("needs_review", name)
    screenshot(loop.driver, "desk-loop-queue-en")
    loop.language("zh")
    screenshot(loop.driver, "desk-loop-queue-zh")
    loop.queue_shows("needs_review", name)  # a fresh page: the switch re-renders the queue
    loop.open_and_claim("needs_review", name)
    # The warm attempt's own log lines are on the desk (no Pod of its own to read them from).
    assert "edit failed" in loop.js("document.getElementById('attempts').textContent")
    screenshot(loop.driver, "desk-loop-edit-en")
    loop.language("zh")
    screenshot(loop.driver, "desk-loop-edit-zh")
    loop.driver.refresh()  # the edit again, in English (?lang=en), before the upload
    wait_until(lambda: loop.js("document.body.dataset.view") == "edit", timeout=15, what="edit")

    fixed = tmp_path / "fixed.png"
    fixed.write_bytes(png("seagreen"))
    loop.driver.find_element(By.ID, "upload-file").send_keys(str(fixed))
    loop.driver.find_element(By.ID, "upload-button").click()
    result_key = loop.done("the upload to be accepted").split(": ", 1)[1]
    assert result_key.startswith(f"results/{loop.namespace}/{name}/review-")

    success = loop.oa_receives(name, "success")
    assert success.data.status == "success" and success.data.result_key == result_key
    assert loop.completions(name) == ["needs_review", "success"]
    s3 = loop.stack.s3_settings()
    stored = s3_client(s3).get_object(s3.bucket, result_key)
    try:
        assert stored.read() == fixed.read_bytes()
    finally:
        stored.close()
        stored.release_conn()
    status = loop.status(name)
    assert status["phase"] == "Succeeded" and status["reviewedBy"]["id"] == "u-mei"


def test_a_sampled_edit_marked_poor_records_the_verdict_and_no_second_completion(
    loop: Loop, image_host: ImageHost
) -> None:
    name = f"sm-{uuid.uuid4().hex[:6]}"
    # A global edit's template: the tiny model's repainting is no gate failure there, so
    # the success is in today's sample, not flagged.
    loop.submit(name, image_host.url("red.png"), "把背景换成海边日落",
                template={"id": "replace-background"})  # fmt: skip
    done = loop.wait(name, lambda s: s.get("phase") in ("Succeeded", "Failed", "NeedsReview"),
                     "the edit to finish", timeout=300)  # fmt: skip
    assert done["phase"] == "Succeeded" and done["sampledForReview"] is True, done
    assert loop.oa_receives(name, "success").data.status == "success"
    assert loop.completions(name) == ["success"]
    loop.queue_shows("sample", name)
    loop.open_and_claim("sample", name)
    better = "只把背景换成海边日落，人物保持不变"
    loop.driver.find_element(By.ID, "better-instruction").send_keys(better)
    loop.driver.find_element(By.ID, "verdict-poor").click()
    assert loop.done("the verdict to be accepted") == "Done"
    verdict = loop.wait(name, lambda s: s.get("reviewVerdict"), "the verdict")["reviewVerdict"]
    assert verdict["verdict"] == "poor" and verdict["betterInstruction"] == better
    assert verdict["by"]["id"] == "u-mei"
    # Out of the lane, and the OA side has the one success it had: no contradicting second.
    loop.queue_gone("sample", name)
    assert loop.completions(name) == ["success"]


def test_a_needs_review_edit_re_run_with_a_corrected_instruction(loop: Loop) -> None:
    name = f"rr-{uuid.uuid4().hex[:6]}"
    loop.submit(name, DEAD, "make the red square blue")
    loop.wait(name, lambda s: s.get("phase") == "NeedsReview", "NeedsReview")
    loop.queue_shows("needs_review", name)
    loop.open_and_claim("needs_review", name)
    corrected = "make the red square green"
    field = loop.driver.find_element(By.ID, "rerun-instruction")  # holds the current one
    assert field.get_attribute("value") == "make the red square blue"
    field.clear()
    field.send_keys(corrected)
    loop.driver.find_element(By.ID, "rerun-button").click()
    assert loop.done("the re-run to be accepted") == "Done"
    again = loop.wait(
        name,
        lambda s: s.get("attempts") == 2 and s.get("phase") == "NeedsReview",
        "the re-run's attempt to end",
    )
    assert again["reviewAttempts"] == 1 and again["reviewInstruction"] == corrected
    # The worker ran the corrected instruction: its own line of the failed attempt says so.
    assert again["workerLog"]["attempt"] == 2
    lines = [json.loads(line) for line in again["workerLog"]["lines"] if line.endswith("}")]
    prompts = {line.get("prompt") for line in lines if line.get("msg") == "edit failed"}
    assert prompts == {corrected}, again["workerLog"]
