"""The web console in a real headless Chromium, driven over the Chrome DevTools protocol.

``saga-admin serve`` runs as a subprocess on a free loopback port over a
SQLite database filled by :func:`tests.web_sagas.populate`. The browser loads
the overview, opens the dead-lettered ``ship-jammed`` by clicking its link,
presses Retry, confirms, and sees the saga pending; then it opens the saga
whose id, input and errors are markup, with the page's Content-Security-Policy
switched off, and proves that nothing in them ran: the escaping alone holds.

Needs Debian's ``chromium`` (``apt-get install chromium``; ``.ci/run`` installs
it). Skipped locally without it, failed in CI (``CI=true``).

``SAGADSL_WEB_SCREENSHOTS=DIR pytest tests/test_web_browser.py`` also saves
the screenshots of the docs (``docs/how-to/web-console-*.png``) into DIR.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from base64 import b64decode
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from sagadsl import SagaEngine
from tests import web_sagas
from tests.conftest import IN_CI
from tests.web_sagas import HOSTILE_ID

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NO_CHROMIUM = ("the browser tests need headless Chromium: apt-get install chromium "
               "(Debian's package; .ci/run installs it)")
SCREENSHOTS = os.environ.get("SAGADSL_WEB_SCREENSHOTS")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[Any], what: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{what} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{what} did not listen on port {port} within 20 s")


def stop(process: subprocess.Popen[Any]) -> None:
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Tab:
    """One browser tab driven over the DevTools protocol (a websocket)."""

    def __init__(self, ws_url: str) -> None:
        import websocket  # websocket-client, a test dependency

        self.ws = websocket.create_connection(ws_url, timeout=20, suppress_origin=True)
        self.last_id = 0
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.last_id += 1
        call_id = self.last_id
        self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == call_id:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
            self.events.append(message)
            if message.get("method") == "Page.javascriptDialogOpening":
                # An open alert blocks the page: dismiss it (the test then sees the event and fails).
                self.last_id += 1
                self.ws.send(json.dumps({"id": self.last_id, "method": "Page.handleJavaScriptDialog",
                                         "params": {"accept": True}}))

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 10) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"still false after {timeout} s: {expression}")

    def navigated(self) -> None:
        """Wait until a new document replaced the one marked before the navigation and loaded."""
        self.wait_for("!window.__before && document.readyState === 'complete'")
        self.evaluate("window.__before = true")

    def goto(self, url: str) -> None:
        self.evaluate("window.__before = true")
        self.call("Page.navigate", url=url)
        self.navigated()

    def click(self, selector: str) -> None:
        """Click the element like a person: a real mouse press and release on its centre."""
        box = self.evaluate(f"""(() => {{
            const el = document.querySelector({json.dumps(selector)});
            if (!el) return null;
            el.scrollIntoView({{block: 'center'}});
            const r = el.getBoundingClientRect();
            return {{x: r.left + r.width / 2, y: r.top + r.height / 2}};
        }})()""")
        assert box is not None, f"no element matches {selector}"
        self.evaluate("window.__before = true")
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=box["x"], y=box["y"], button="left",
                      clickCount=1)

    def text(self, selector: str) -> str:
        value = self.evaluate(f"document.querySelector({json.dumps(selector)})?.textContent ?? null")
        assert value is not None, f"no element matches {selector}"
        return " ".join(str(value).split())

    def screenshot(self, path: Path, width: int = 1280) -> None:
        height = int(self.evaluate("document.documentElement.scrollHeight"))
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                  mobile=False)
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(b64decode(data))
        self.call("Emulation.clearDeviceMetricsOverride")

    def close(self) -> None:
        self.ws.close()


@pytest.fixture
def console(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """``(base URL, database URL)`` of ``saga-admin serve --allow-actions`` on a populated SQLite file."""
    url = f"sqlite:///{tmp_path / 'sagas.db'}"
    web_sagas.populate(url)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAGADSL_")}
    server = subprocess.Popen(
        [sys.executable, "-m", "sagadsl", "--database-url", url, "serve", "--port", str(port),
         "--allow-actions", "--import", "tests.web_sagas"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_port(port, server, "saga-admin serve")
        yield f"http://127.0.0.1:{port}", url
    finally:
        stop(server)


@pytest.fixture
def tab(tmp_path: Path) -> Iterator[Tab]:
    """A tab of a fresh headless Chromium."""
    if CHROMIUM is None:
        if IN_CI:
            pytest.fail(NO_CHROMIUM)
        pytest.skip(NO_CHROMIUM)
    port = free_port()
    browser = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", "--no-default-browser-check", "--disable-extensions",
         f"--remote-debugging-port={port}", "--remote-allow-origins=*",
         f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1280,900", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, browser, "chromium")
        deadline = time.monotonic() + 10
        pages: list[dict[str, Any]] = []
        while not pages and time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as response:
                pages = [t for t in json.load(response) if t.get("type") == "page"]
            time.sleep(0.05)
        assert pages, "chromium opened no page"
        driven = Tab(pages[0]["webSocketDebuggerUrl"])
        driven.call("Page.enable")
        driven.call("Runtime.enable")
        try:
            yield driven
        finally:
            driven.close()
    finally:
        stop(browser)


def saga_status(db_url: str, saga_id: str) -> str:
    with SagaEngine(db_url) as engine:
        record = engine.get(saga_id)
    assert record is not None
    return record.status.value


def test_an_operator_opens_a_dead_lettered_saga_from_the_overview_and_retries_it(
        console: tuple[str, str], tab: Tab) -> None:
    base, db_url = console
    tab.goto(base + "/")
    assert tab.evaluate("document.title") == "Overview · sagadsl console"
    assert tab.text(".tile.t-dead_letter .n") == "3"
    if SCREENSHOTS:
        tab.screenshot(Path(SCREENSHOTS) / "web-console-overview.png")
        tab.goto(base + "/sagas")
        tab.screenshot(Path(SCREENSHOTS) / "web-console-list.png")
        # A dead-lettered saga with a fan-out graph and steps that took time, for the docs.
        tab.goto(base + "/saga?id=trip-jammed")
        tab.screenshot(Path(SCREENSHOTS) / "web-console-saga.png")
        tab.goto(base + "/")

    tab.click('section.card a.id[href$="id=ship-jammed"]')
    tab.navigated()
    assert tab.text("h1 .id") == "ship-jammed"
    assert tab.text("h1 .badge") == "dead letter"
    assert "payments service unavailable" in tab.text(".error-card")
    assert tab.evaluate("document.querySelectorAll('svg.graph .node').length") == 3

    tab.click("#retry")
    tab.navigated()
    assert tab.text("h1") == "Retry saga ship-jammed?"
    assert saga_status(db_url, "ship-jammed") == "dead_letter"  # nothing happens before the confirmation

    tab.click("#confirm")
    tab.navigated()
    assert tab.text("#outcome") == ("Saga ship-jammed moved back to pending (retry 1 of 10); "
                                    "a worker continues it.")
    assert tab.text("#status-now") == "pending"
    assert saga_status(db_url, "ship-jammed") == "pending"

    tab.click("a.button.primary")  # back to the saga
    tab.navigated()
    assert tab.text("h1 .badge") == "pending"
    assert "Retry…" not in tab.text("main")


def test_markup_in_a_saga_id_and_error_never_runs_even_without_the_csp(
        console: tuple[str, str], tab: Tab) -> None:
    base, _ = console
    # Switch the Content-Security-Policy off: only the escaping may stand between the saga's text
    # and the browser. Had any of it been parsed as markup, its script would set the title, or
    # its <img onerror> would open an alert.
    tab.call("Page.setBypassCSP", enabled=True)
    tab.goto(base + "/")
    tab.click(f'section.card a.id[href="/saga?id={quote(HOSTILE_ID, safe="")}"]')
    tab.navigated()
    for path in ("", "/sagas", f"/saga?id={quote(HOSTILE_ID, safe='')}"):
        if path:
            tab.goto(base + path)
        time.sleep(0.2)  # time for an injected image to fail to load and fire its onerror
        title = tab.evaluate("document.title")
        assert "pwned" not in title.replace("document.title='pwned'", "")
        assert tab.evaluate("document.scripts.length") == 0
        assert tab.evaluate("document.querySelectorAll('img').length") == 0
        assert not [e for e in tab.events if e.get("method") == "Page.javascriptDialogOpening"]
    assert title == f"Saga {HOSTILE_ID} · sagadsl console"
    assert tab.text("h1 .id") == HOSTILE_ID
    assert f"RuntimeError: step says {web_sagas.HOSTILE}" in tab.text(".error-card")
    assert tab.evaluate("document.querySelectorAll('pre.traceback').length") == 2
