"""A tiny headless-Chromium driver over the Chrome DevTools Protocol (no browser download).

Debian's ``/usr/bin/chromium`` (installed by ``scripts/bootstrap.sh``) runs
headless with remote debugging on a free loopback port; one page target is
driven over its WebSocket with ``websocket-client``: navigate, evaluate
JavaScript, set a file input. Enough for one end-to-end page test.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import httpx
import websocket

from editflow.devstack.procs import ManagedProcess, free_port, wait_until

CHROMIUM = Path("/usr/bin/chromium")


class CDPError(RuntimeError):
    pass


class Page:
    def __init__(self, ws_url: str) -> None:
        # No Origin header: Chromium refuses DevTools sockets from unlisted origins.
        self.ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self._ids = itertools.count(1)
        self.console: list[str] = []

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self._ids)
        self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("method") == "Runtime.consoleAPICalled":
                args = message["params"].get("args", [])
                self.console.append(
                    " ".join(str(a.get("value", a.get("description"))) for a in args)
                )
            elif message.get("method") == "Runtime.exceptionThrown":
                details = message["params"]["exceptionDetails"]
                self.console.append(f"uncaught: {details.get('exception', {}).get('description')}")
            if message.get("id") == call_id:
                if "error" in message:
                    raise CDPError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str) -> Any:
        result = self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise CDPError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def navigate(self, url: str) -> None:
        self.send("Page.navigate", url=url)

    def set_files(self, selector: str, *paths: Path) -> None:
        root = self.send("DOM.getDocument")["root"]["nodeId"]
        node = self.send("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        if not node:
            raise CDPError(f"no element matches {selector!r}")
        self.send("DOM.setFileInputFiles", nodeId=node, files=[str(p) for p in paths])
        self.evaluate(
            f"document.querySelector({json.dumps(selector)})"
            ".dispatchEvent(new Event('change', {bubbles: true}))"
        )

    def close(self) -> None:
        self.ws.close()


class Chromium:
    """``/usr/bin/chromium --headless`` in its own process group, with a throwaway profile."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.process = ManagedProcess(
            "chromium",
            [
                str(CHROMIUM),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--lang=en-US",
                f"--user-data-dir={workdir / 'profile'}",
                "--remote-debugging-address=127.0.0.1",
                f"--remote-debugging-port={self.port}",
                "about:blank",
            ],
            log_path=workdir / "chromium.log",
        )

    def __enter__(self) -> Chromium:
        self.process.start()

        def listening() -> bool:
            self.process.ensure_running()
            return httpx.get(self._url("/json/version"), timeout=2).status_code == 200

        wait_until(listening, timeout=60, what="chromium's DevTools endpoint")
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.stop(grace=5)

    def _url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def page(self) -> Page:
        targets = httpx.get(self._url("/json/list"), timeout=5).json()
        target = next(t for t in targets if t.get("type") == "page")
        page = Page(target["webSocketDebuggerUrl"])
        page.send("Page.enable")
        page.send("Runtime.enable")
        page.send("DOM.enable")
        return page
