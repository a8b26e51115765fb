"""The arena's browser tests: a real server (`python -m server`, HTTP on a free port) with scripted models,
driven in Debian's headless Chromium through Playwright's driver (no browser download)."""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.process import ROOT, server_process
from tests.sdk.proxy import Proxy

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
#: As the machine notes say works here: no first-run, no background fetches from Google's hosts.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
ARTIFACTS = ROOT / "build" / "test-artifacts" / "arena"
ADMIN_KEY = "arena-admin-key-0123456789abcdef"

DRAFT = "Sydney is the capital of Australia, since it is the largest city and the best known abroad."
CRITIQUE = (
    "The draft names the wrong city: size does not make a capital.\nVERDICT: REVISE\n"
    "FOCUS: factual accuracy; historical context"
)
TAKEOVER = (
    "Canberra is the capital. The other model kept repeating an answer; here is mine: the seat of"
    " government moved there from Melbourne in 1927."
)
IMPROVED = "Canberra, the planned capital in the Australian Capital Territory, chosen in 1908."
REPLY = "Thank you. Here is what an assistant would say to that, word by word, slowly enough to watch."


def _model(model_id: str, *script: str, delay_ms: int) -> str:
    lines = ", ".join(json.dumps(s) for s in script)
    return (
        f'[[models]]\nid = "{model_id}"\nprovider = "scripted"\ncapabilities = ["text", "conversation"]\n'
        f"script = [{lines}]\nchunk_delay_ms = {delay_ms}\npricing = {{input = 0.001, output = 0.002}}\n"
    )


#: "looper" repeats its draft, so iterative_refinement finds it stuck (a loop) and hands off to "rescuer"
#: (as tests/server/test_reasoning.py's takeover test); "assistant" answers a person in a conversation.
CONFIG = "\n".join(
    [
        _model("looper", DRAFT, delay_ms=25),
        _model("rescuer", CRITIQUE, TAKEOVER, IMPROVED, delay_ms=25),
        _model("assistant", REPLY, delay_ms=10),
    ]
)


class Api:
    """The server's REST surface, for what a test checks the page against."""

    def __init__(self, base: str, key: str | None = None) -> None:
        self.base = base
        self.key = key

    def call(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Content-Type": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, headers=headers, method=method)
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"{}")

    def events(self, path: str) -> list[dict[str, Any]]:
        """Every event of a finished run's NDJSON stream (it ends after the terminal event)."""
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        request = urllib.request.Request(self.base + path, headers=headers)
        with urllib.request.urlopen(request, timeout=30) as response:
            return [json.loads(line)["result"]["event"] for line in response if line.strip()]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    with server_process(
        CONFIG, tmp_path_factory.mktemp("arena"), AIBATTLE_HTTP_ADDR="127.0.0.1:0"
    ) as running:
        yield Api(running.http_url)


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    from tests.security_testlib import SECRETS

    SECRETS.add(ADMIN_KEY)
    with server_process(
        CONFIG,
        tmp_path_factory.mktemp("arena-keys"),
        AIBATTLE_HTTP_ADDR="127.0.0.1:0",
        AIBATTLE_ADMIN_KEY=ADMIN_KEY,
    ) as running:
        yield Api(running.http_url, ADMIN_KEY)


@pytest.fixture
def proxy(server: Api) -> Iterator[Proxy]:
    """A TCP proxy in front of the server whose connections a test can cut, as a network does: the page
    loaded through it sees its streams break mid-body and must resume them."""
    running = Proxy(server.base.removeprefix("http://"))
    yield running
    running.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium, driven by Playwright's sync API, for one module: that API keeps an event loop
    marked running on the main thread while it is open, which any later asyncio test would trip on."""
    if not Path(CHROMIUM).exists() and not os.environ.get("CI"):
        pytest.skip("needs Debian's chromium (make install)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class Console:
    """What the page said on its console, and errors it threw: a test expects none of either."""

    def __init__(self, page: Any) -> None:
        self.problems: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.problems.append(f"pageerror: {error}"))

    def _console(self, message: Any) -> None:
        if message.type in ("warning", "error"):
            self.problems.append(f"{message.type}: {message.text}")


def _tab(browser: Any, scheme: str) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 950}, color_scheme=scheme)
    tab = context.new_page()
    tab.set_default_timeout(15_000)
    tab.console = Console(tab)
    yield tab
    context.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh tab (its own sessionStorage), in the light theme."""
    yield from _tab(browser, "light")


@pytest.fixture
def dark_page(browser: Any) -> Iterator[Any]:
    """A fresh tab in the dark theme (prefers-color-scheme: dark)."""
    yield from _tab(browser, "dark")


def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def sequences(page: Any, selector: str = "#timeline li") -> list[int]:
    return [int(s) for s in page.eval_on_selector_all(selector, "els => els.map(e => e.dataset.seq)")]


#: WCAG 2's contrast of every visible text against its background: 4.5:1, or 3:1 for large text (24px, or
#: 18.66px bold). Disabled controls are exempt, as WCAG exempts inactive components.
_LOW_CONTRAST = """() => {
  const rgb = (c) => (c.match(/[\\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => {
    const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const background = (el) => {
    for (let e = el; e; e = e.parentElement) {
      const c = rgb(getComputedStyle(e).backgroundColor);
      if (c.length === 3 || (c.length === 4 && c[3] > 0)) return c.slice(0, 3);
    }
    return rgb(getComputedStyle(document.documentElement).backgroundColor).slice(0, 3);
  };
  const low = [];
  for (const el of document.querySelectorAll("body *")) {
    const text = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    if (!text || !el.checkVisibility() || el.closest(":disabled")) continue;
    const style = getComputedStyle(el);
    const [a, b] = [lum(rgb(style.color)), lum(background(el))];
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    const size = parseFloat(style.fontSize);
    const large = size >= 24 || (size >= 18.66 && Number(style.fontWeight) >= 700);
    if (ratio >= (large ? 3 : 4.5)) continue;
    low.push(`${el.tagName}.${el.className} ${ratio.toFixed(2)}: ${el.textContent.trim().slice(0, 40)}`);
  }
  return low;
}"""


def low_contrast(page: Any) -> list[str]:
    """The texts of the page that are hard to read against their background (none, in either theme)."""
    return list(page.evaluate(_LOW_CONTRAST))
