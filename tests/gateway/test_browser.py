"""The try-it page in headless Chromium: upload an image, pick a template, see before and after.

Selenium drives Debian's Chromium through Debian's chromium-driver (``tests/gateway/browser.py``;
``scripts/bootstrap.sh`` installs both and a CJK font); nothing is installed at test time, and
the test is skipped only where they are absent. The edit runs for real: the page uploads
through ``POST /v1/uploads`` (the worker reads the image from MinIO by key), submits
``POST /v1/edits`` and polls until the result image loads. Screenshots of the page in both
languages are left in ``~/.cache/editflow/reports/screenshots/``.
"""

from __future__ import annotations

import json

import pytest
from selenium.webdriver.common.by import By

from editflow.devstack.procs import wait_until
from tests.gateway.browser import available, chromium, console, screenshot

pytestmark = [
    pytest.mark.platform,
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(
        not available(), reason="needs Debian chromium and chromium-driver (bootstrap.sh)"
    ),
]


def test_try_it_page_submits_an_edit_and_shows_the_result(
    gateway_server, operator, image_host, tmp_path
) -> None:
    image = tmp_path / "red.png"
    image.write_bytes(image_host.png)
    with chromium(tmp_path) as driver:

        def js(expression: str) -> object:
            return driver.execute_script(f"return {expression}")

        driver.get(f"{gateway_server.url}/")
        wait_until(
            lambda: js("document.body && document.body.dataset.ready") == "true",
            timeout=30,
            what="the page to load its catalogue",
        )
        templates = js("[...document.querySelectorAll('#template option')].map(o => o.value)")
        assert {"replace-background", "change-colour", "add-text", "remove-watermark"} <= set(
            templates
        )
        assert js("document.getElementById('auth').hidden") is False
        screenshot(driver, "try-it-en")
        # Bilingual: switching the language relabels the dropdown.
        driver.execute_script(
            "const l = document.getElementById('lang'); l.value = 'zh';"
            " l.dispatchEvent(new Event('change'));"
        )
        assert "更换背景" in js("document.getElementById('template').textContent")

        driver.execute_script(
            f"document.getElementById('token').value = {json.dumps(gateway_server.token)}"
        )
        driver.find_element(By.ID, "source-file").send_keys(str(image))
        driver.execute_script(
            """
              const t = document.getElementById('template');
              t.value = 'change-colour';
              t.dispatchEvent(new Event('change'));
              for (const [name, value] of [['object', '方块'], ['colour', '蓝色']]) {
                const input = document.getElementById('param-' + name);
                input.value = value;
                input.dispatchEvent(new Event('input'));
              }
              document.getElementById('usage').value = 'poster';
            """
        )
        assert js("document.getElementById('prompt').value") == "把方块的颜色改成蓝色"
        screenshot(driver, "try-it-zh")
        driver.execute_script("document.getElementById('submit').click()")

        def finished() -> bool:
            status = js("document.getElementById('status').dataset.status || ''")
            return status in ("success", "failed", "needs_review", "cancelled")

        try:
            wait_until(finished, timeout=300, what="the page to show the outcome", interval=0.5)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}; console: {console(driver)}") from None
        state = js(
            """({
              status: document.getElementById('status').dataset.status,
              error: document.getElementById('error').textContent,
              id: document.getElementById('edit-id').textContent,
              before: document.getElementById('before').naturalWidth,
            })"""
        )
        assert state["status"] == "success", (state, console(driver))
        wait_until(
            lambda: js(
                "(() => { const i = document.getElementById('after');"
                " return !i.hidden && i.complete && i.naturalWidth > 0; })()"
            ),
            timeout=30,
            what="the result image to load",
        )
        assert state["before"] == 96  # the uploaded 96x64 image, shown from the file
        after_src = js("document.getElementById('after').src")
        screenshot(driver, "try-it-zh-result")

    assert after_src.startswith("http://127.0.0.1:")  # a presigned MinIO URL
    ej = operator.editjob(f"ej-{state['id']}")
    assert ej["spec"]["source"]["s3Key"].startswith("uploads/")
    assert ej["spec"]["usage"] == "poster" and ej["spec"]["template"]["id"] == "change-colour"
    assert ej["status"]["phase"] == "Succeeded"
