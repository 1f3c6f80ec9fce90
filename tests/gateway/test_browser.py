"""The try-it page in headless Chromium: upload an image, pick a template, see before and after.

Chromium comes from Debian (``scripts/bootstrap.sh`` installs it); nothing
is installed at test time, and the test is skipped only where
``/usr/bin/chromium`` is absent. The edit runs for real: the page uploads
through ``POST /v1/uploads`` (the worker reads the image from MinIO by key),
submits ``POST /v1/edits`` and polls until the result image loads.
"""

from __future__ import annotations

import json

import pytest

from editflow.devstack.procs import wait_until
from tests.gateway.cdp import CHROMIUM, Chromium

pytestmark = [
    pytest.mark.platform,
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium (bootstrap.sh)"),
]


def test_try_it_page_submits_an_edit_and_shows_the_result(
    gateway_server, operator, image_host, tmp_path
) -> None:
    image = tmp_path / "red.png"
    image.write_bytes(image_host.png)
    with Chromium(tmp_path) as browser:
        page = browser.page()
        page.navigate(f"{gateway_server.url}/")
        wait_until(
            lambda: page.evaluate("document.body && document.body.dataset.ready") == "true",
            timeout=30,
            what="the page to load its catalogue",
        )
        templates = page.evaluate(
            "[...document.querySelectorAll('#template option')].map(o => o.value)"
        )
        assert {"replace-background", "change-colour", "add-text", "remove-watermark"} <= set(
            templates
        )
        assert page.evaluate("document.getElementById('auth').hidden") is False
        # Bilingual: switching the language relabels the dropdown.
        page.evaluate(
            "(() => { const l = document.getElementById('lang'); l.value = 'zh';"
            " l.dispatchEvent(new Event('change')); })()"
        )
        assert "更换背景" in page.evaluate("document.getElementById('template').textContent")

        page.evaluate(
            f"document.getElementById('token').value = {json.dumps(gateway_server.token)}"
        )
        page.set_files("#source-file", image)
        page.evaluate(
            """(() => {
              const t = document.getElementById('template');
              t.value = 'change-colour';
              t.dispatchEvent(new Event('change'));
              for (const [name, value] of [['object', '方块'], ['colour', '蓝色']]) {
                const input = document.getElementById('param-' + name);
                input.value = value;
                input.dispatchEvent(new Event('input'));
              }
              document.getElementById('usage').value = 'poster';
            })()"""
        )
        assert page.evaluate("document.getElementById('prompt').value") == "把方块的颜色改成蓝色"
        page.evaluate("document.getElementById('submit').click()")

        def finished() -> bool:
            status = page.evaluate("document.getElementById('status').dataset.status || ''")
            return status in ("success", "failed", "needs_review", "cancelled")

        try:
            wait_until(finished, timeout=300, what="the page to show the outcome", interval=0.5)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}; console: {page.console}") from None
        state = page.evaluate(
            """(() => ({
              status: document.getElementById('status').dataset.status,
              error: document.getElementById('error').textContent,
              id: document.getElementById('edit-id').textContent,
              before: document.getElementById('before').naturalWidth,
            }))()"""
        )
        assert state["status"] == "success", (state, page.console)
        wait_until(
            lambda: page.evaluate(
                "(() => { const i = document.getElementById('after');"
                " return !i.hidden && i.complete && i.naturalWidth > 0; })()"
            ),
            timeout=30,
            what="the result image to load",
        )
        assert state["before"] == 96  # the uploaded 96x64 image, shown from the file
        after_src = page.evaluate("document.getElementById('after').src")
        page.close()

    assert after_src.startswith("http://127.0.0.1:")  # a presigned MinIO URL
    ej = operator.editjob(f"ej-{state['id']}")
    assert ej["spec"]["source"]["s3Key"].startswith("uploads/")
    assert ej["spec"]["usage"] == "poster" and ej["spec"]["template"]["id"] == "change-colour"
    assert ej["status"]["phase"] == "Succeeded"
