"""The built docs site, rendered in a real headless Chromium.

`mkdocs build --strict` passing says nothing about what a reader sees: raw
markdown in the home page's cards, Mermaid source shown as text, a script
fetched from a CDN that an offline reader cannot reach. These tests build the
site, serve it on a loopback port, load every page in headless Chromium
(Debian's `chromium` package) over the DevTools protocol, and fail on raw
Mermaid source, raw markdown, a console error, an uncaught exception, a failed
request, or any request to a host other than the loopback one.

Locally they skip when Chromium, the docs extra or websocket-client is missing;
with CI=true they fail instead (`.ci/run` installs all three).

Set SAGADSL_DOCS_SCREENSHOTS=DIR to also save a full-page PNG of every page.
"""

from __future__ import annotations

import functools
import http.server
import importlib.util
import json
import os
import re
import shutil
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
IN_CI = os.environ.get("CI") == "true"

pytestmark = pytest.mark.slow


def _missing(reason: str) -> None:
    """Skip locally, fail in CI: there the browser tests must run."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: .ci/run must install it)", pytrace=False)
    pytest.skip(reason)


def _pages() -> list[str]:
    """Every page of the site, as its source path under docs/."""
    return sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md") if "hooks" not in p.parts)


def _url_path(page: str) -> str:
    """docs/how-to/async.md is served at how-to/async/ (mkdocs' use_directory_urls)."""
    stem = page[: -len(".md")]
    if stem == "index":
        return ""
    stem = stem.removesuffix("/index")
    return stem + "/"


# --- building and serving the site -------------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None:
        _missing("the docs extra is not installed: pip install -e '.[docs]' to build the site")
    out = tmp_path_factory.mktemp("docs") / "site"
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=240, check=False,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    return out


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def base_url(site: Path) -> Iterator[str]:
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


# --- a minimal DevTools protocol client --------------------------------------------------------


class DevTools:
    """One page target of a headless Chromium, driven over the DevTools protocol."""

    def __init__(self, ws_url: str) -> None:
        import websocket

        self._ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def close(self) -> None:
        self._ws.close()

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        self._ws.send(json.dumps({"id": self._next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv())
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            if "method" in message:
                self.events.append(message)

    def wait_for_event(self, method: str, timeout: float) -> bool:
        import websocket

        deadline = time.monotonic() + timeout
        if any(e["method"] == method for e in self.events):
            return True
        while time.monotonic() < deadline:
            self._ws.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                message = json.loads(self._ws.recv())
            except websocket.WebSocketTimeoutException:
                break
            finally:
                self._ws.settimeout(30)
            if "method" in message:
                self.events.append(message)
                if message["method"] == method:
                    return True
        return False

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")


def _chromium() -> str | None:
    for name in (os.environ.get("SAGADSL_CHROMIUM", ""), "chromium", "chromium-browser"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[DevTools]:
    chromium = _chromium()
    if chromium is None:
        _missing("headless Chromium is not installed: apt-get install chromium")
    if importlib.util.find_spec("websocket") is None:
        _missing("websocket-client is not installed: pip install -e '.[test]'")
    profile = tempfile.mkdtemp(prefix="sagadsl-chromium-")
    process = subprocess.Popen(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", "--no-default-browser-check", "--disable-extensions",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--mute-audio", "--hide-scrollbars", "--window-size=1280,900",
         # Nothing leaves the machine: every host but the loopback one fails to resolve, and the
         # page's own requests are checked below besides.
         "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
         f"--user-data-dir={profile}", "--remote-debugging-address=127.0.0.1",
         "--remote-debugging-port=0", "about:blank"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    devtools: DevTools | None = None
    try:
        port_file = Path(profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().count("\n") >= 1):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{chromium} did not start (exit code {process.poll()})", pytrace=False)
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
            targets = json.load(response)
        page = next(t for t in targets if t["type"] == "page")
        devtools = DevTools(page["webSocketDebuggerUrl"])
        for domain in ("Page", "Runtime", "Log", "Network", "DOM"):
            devtools.call(f"{domain}.enable")
        devtools.call("Network.setCacheDisabled", cacheDisabled=False)
        yield devtools
    finally:
        if devtools is not None:
            devtools.close()
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(profile, ignore_errors=True)


# --- loading one page and reading what a reader sees --------------------------------------------

# Mermaid is done when no <pre class="mermaid"> is left: Material replaces each with a
# <div class="mermaid"> holding the SVG in a (closed) shadow root.
_MERMAID_PENDING = "document.querySelectorAll('pre.mermaid').length"
# The article's text outside code, where markdown syntax must not survive.
_PROSE = """(() => {
  const article = document.querySelector('article.md-content__inner') || document.body;
  const copy = article.cloneNode(true);
  copy.querySelectorAll('pre, code, script, style, .highlight').forEach(e => e.remove());
  return copy.innerText;
})()"""
_RAW_MERMAID = re.compile(r"\b(graph|flowchart|stateDiagram(-v2)?|sequenceDiagram|classDiagram|erDiagram|"
                          r"gantt|journey|pie)\b|-->")


class Loaded:
    def __init__(self, url: str, events: list[dict[str, Any]], document: dict[str, Any], prose: str) -> None:
        self.url = url
        self.events = events
        self.document = document
        self.prose = prose

    def problems(self) -> list[str]:
        """Console errors, exceptions, failed requests and requests to other hosts."""
        found: list[str] = []
        host = urllib.parse.urlsplit(self.url).netloc
        for event in self.events:
            method, params = event["method"], event.get("params", {})
            if method == "Network.requestWillBeSent":
                url = params["request"]["url"]
                parts = urllib.parse.urlsplit(url)
                if parts.scheme not in ("data", "blob", "about") and parts.netloc != host:
                    found.append(f"request to another host: {url}")
            elif method == "Network.loadingFailed" and not params.get("canceled"):
                found.append(f"request failed: {params.get('errorText')} ({params.get('type')})")
            elif method == "Network.responseReceived" and params["response"]["status"] >= 400:
                found.append(f"HTTP {params['response']['status']}: {params['response']['url']}")
            elif method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                text = details.get("exception", {}).get("description") or details.get("text")
                found.append(f"uncaught exception: {text}")
            elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                text = " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
                found.append(f"console.{params['type']}: {text}")
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                entry = params["entry"]
                found.append(f"console error: {entry['text']} {entry.get('url', '')}".strip())
        return found

    def mermaid_blocks(self) -> list[dict[str, Any]]:
        """Each element with the class mermaid: its light-DOM text and whether it holds an SVG."""
        blocks: list[dict[str, Any]] = []

        def text_of(node: dict[str, Any], shadow: bool) -> str:
            if node.get("nodeType") == 3:
                return node.get("nodeValue", "")
            parts = [text_of(c, shadow) for c in node.get("children", [])]
            if shadow:
                parts += [text_of(r, shadow) for r in node.get("shadowRoots", [])]
            return "".join(parts)

        def has_svg(node: dict[str, Any]) -> bool:
            if node.get("nodeName", "").lower() == "svg":
                return True
            return any(has_svg(c) for c in node.get("children", []) + node.get("shadowRoots", []))

        def walk(node: dict[str, Any]) -> None:
            attributes = node.get("attributes", [])
            classes = dict(zip(attributes[::2], attributes[1::2])).get("class", "").split()
            if "mermaid" in classes:
                blocks.append({"tag": node["nodeName"].lower(), "text": text_of(node, shadow=False),
                               "svg": has_svg(node), "all_text": text_of(node, shadow=True)})
            for child in node.get("children", []) + node.get("shadowRoots", []):
                walk(child)

        walk(self.document)
        return blocks


def _load(browser: DevTools, url: str) -> Loaded:
    browser.events.clear()
    browser.call("Page.navigate", url=url)
    assert browser.wait_for_event("Page.loadEventFired", timeout=20), f"{url} did not load"
    deadline = time.monotonic() + 10
    while browser.evaluate(_MERMAID_PENDING) and time.monotonic() < deadline:
        time.sleep(0.05)
    browser.wait_for_event("__settle__", timeout=0.3)  # late console messages and requests
    screenshots = os.environ.get("SAGADSL_DOCS_SCREENSHOTS")
    if screenshots:
        _screenshot(browser, url, Path(screenshots))
    document = browser.call("DOM.getDocument", depth=-1, pierce=True)["root"]
    events = list(browser.events)
    return Loaded(url, events, document, browser.evaluate(_PROSE) or "")


def _screenshot(browser: DevTools, url: str, directory: Path) -> None:
    import base64

    directory.mkdir(parents=True, exist_ok=True)
    metrics = browser.call("Page.getLayoutMetrics")["cssContentSize"]
    shot = browser.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                        clip={"x": 0, "y": 0, "width": metrics["width"],
                              "height": min(metrics["height"], 6000), "scale": 1})
    name = urllib.parse.urlsplit(url).path.strip("/").replace("/", "-") or "index"
    (directory / f"{name}.png").write_bytes(base64.b64decode(shot["data"]))


@pytest.fixture(scope="module")
def loaded(browser: DevTools, base_url: str) -> dict[str, Loaded]:
    """Every page, loaded once in the browser."""
    return {page: _load(browser, base_url + _url_path(page)) for page in _pages()}


# --- the tests -------------------------------------------------------------------------------------


@pytest.mark.parametrize("page", _pages())
def test_page_loads_without_console_errors_or_outside_requests(loaded: dict[str, Loaded], page: str) -> None:
    assert loaded[page].problems() == []


@pytest.mark.parametrize("page", _pages())
def test_page_shows_no_raw_markdown(loaded: dict[str, Loaded], page: str) -> None:
    prose = loaded[page].prose
    assert prose.strip(), f"{page} rendered no text"
    for raw in ("](", "**", "- :material", ":material-", "<div", "markdown>", "\\|", "--8<--", "!!! ", "??? "):
        assert raw not in prose, f"{page} shows raw markdown {raw!r}: ...{prose[prose.find(raw) - 80:][:160]}..."


@pytest.mark.parametrize("page", _pages())
def test_every_mermaid_diagram_is_drawn(loaded: dict[str, Loaded], page: str) -> None:
    fences = (DOCS / page).read_text().count("```mermaid")
    blocks = loaded[page].mermaid_blocks()
    for block in blocks:
        assert not _RAW_MERMAID.search(block["text"]), f"raw Mermaid source left in {page}: {block['text'][:200]}"
        assert block["svg"], f"a Mermaid block in {page} has no <svg>: {block}"
        assert "Syntax error" not in block["all_text"], f"Mermaid could not parse a diagram in {page}"
    assert len(blocks) == fences, f"{page} has {fences} mermaid fences, the browser shows {len(blocks)} diagrams"


def test_the_statuses_page_has_its_diagrams(loaded: dict[str, Loaded]) -> None:
    # Guards the parametrized test above against a page that silently lost its fences.
    assert len(loaded["concepts/statuses.md"].mermaid_blocks()) >= 2


def test_home_page_link_cards_are_rendered(browser: DevTools, base_url: str) -> None:
    home = _load(browser, base_url)
    assert home.problems() == []
    cards = browser.evaluate("""[...document.querySelectorAll('.grid.cards > ul > li')].map(li => ({
      text: li.innerText, links: [...li.querySelectorAll('a')].map(a => a.getAttribute('href')),
      strong: li.querySelectorAll('strong').length, height: li.getBoundingClientRect().height}))""")
    assert len(cards) >= 4, cards
    for card in cards:
        assert card["links"] and card["strong"], card
        assert "](" not in card["text"] and "**" not in card["text"], card
        assert card["height"] > 40, f"a card is not laid out as a card: {card}"
    assert cards[0]["links"][0] == "getting-started/"


def test_api_reference_hides_internal_parameters(site: Path) -> None:
    html = (site / "reference" / "api" / "index.html").read_text()
    assert 'id="sagadsl.step"' in html
    assert "idempotency_key" in html
    signatures = re.findall(r'<div class="doc-signature[^"]*">(.*?)</pre>', html, flags=re.DOTALL)
    assert len(signatures) > 10
    text = re.sub(r"<[^>]+>", "", "\n".join(signatures))
    assert "idempotency_key" in text
    assert re.findall(r"[(,]\s*\**_\w+\s*[:=,)]", text) == [], "an internal parameter is in a signature"
    assert "_misused" not in html


def test_no_table_cell_shows_an_escaped_pipe(site: Path) -> None:
    for page in site.rglob("*.html"):
        for cell in re.findall(r"<td[^>]*>(.*?)</td>", page.read_text(), flags=re.DOTALL):
            assert "\\|" not in cell, f"{page.relative_to(site)}: a table cell shows a backslash: {cell}"


def test_no_page_references_an_outside_asset(site: Path) -> None:
    # Static backstop for what the browser test sees: no script, stylesheet or font from the internet.
    for page in site.rglob("*.html"):
        html = page.read_text()
        outside = re.findall(r"<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)=\"(?:https?:)?//[^\"]+\"[^>]*>", html)
        outside = [tag for tag in outside if 'rel="canonical"' not in tag]
        assert outside == [], f"{page.relative_to(site)} loads from the internet: {outside}"


def test_mermaid_is_bundled_with_its_license() -> None:
    script = (DOCS / "javascripts" / "mermaid.min.js").read_text()
    assert script.startswith("/*! mermaid 11.") and "MIT License" in script[:300]
    assert "MIT License" in (DOCS / "javascripts" / "mermaid.LICENSE.txt").read_text()
