"""``GET /dashboard``: the page is served self-contained, and a real browser renders live numbers.

The browser test runs Debian's headless ``chromium`` (``make system-deps`` installs it) against a
live proxy: ``--dump-dom`` prints the document after the page's script has fetched ``/stats`` and
drawn it. The formatting functions are also run on their own under ``node`` when it is installed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from stratacache.proxy.dashboard import DASHBOARD_HTML

from .conftest import RunningProxy
from .fake_upstream import FakeUpstream
from .helpers import CHAT, client


class _Texts(HTMLParser):
    """The text content of every element that has an id (nested ids each get their own text)."""

    def __init__(self) -> None:
        super().__init__()
        self.texts: dict[str, str] = {}
        self.classes: dict[str, str] = {}
        self._open: list[str | None] = []
        self._void = {"meta", "br", "img", "input", "link", "hr"}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._void:
            return
        found = dict(attrs)
        id = found.get("id")
        if id is not None:
            self.texts[id] = ""
            self.classes[id] = found.get("class") or ""
        self._open.append(id)

    def handle_endtag(self, tag: str) -> None:
        if tag not in self._void and self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for id in self._open:
            if id is not None:
                self.texts[id] += data


def _texts(html: str) -> _Texts:
    parser = _Texts()
    parser.feed(html)
    return parser


def test_the_route_serves_the_page_with_a_strict_policy(http: httpx.Client) -> None:
    response = http.get("/dashboard")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.text == DASHBOARD_HTML
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy
    assert "connect-src 'self'" in policy
    assert response.headers["cache-control"] == "no-store"


def test_the_page_loads_nothing_from_elsewhere() -> None:
    assert not re.search(r"""(src|href)\s*=""", DASHBOARD_HTML, re.IGNORECASE)
    assert not re.search(r"""https?://|["'(]//""", DASHBOARD_HTML)  # no absolute URL at all
    assert "@import" not in DASHBOARD_HTML
    assert "url(" not in DASHBOARD_HTML


def test_every_element_the_script_fills_exists() -> None:
    ids = set(_texts(DASHBOARD_HTML).texts)
    used = set(re.findall(r"""\$\("([a-z-]+)"\)""", DASHBOARD_HTML))
    used |= set(re.findall(r"""table\("([a-z-]+)",""", DASHBOARD_HTML))
    assert used, "the script fills no element?"
    assert used <= ids, used - ids


def test_the_page_is_in_the_proxy_routes(http: httpx.Client) -> None:
    assert http.get("/stats").status_code == 200  # the page's only data source
    assert http.post("/dashboard").status_code == 405


_NODE_CHECK = """
const out = {
  count: [fmt.count(1234567), fmt.count(undefined), fmt.count(NaN)],
  percent: [fmt.percent(0.5), fmt.percent(1), fmt.percent(null)],
  dollars: [fmt.dollars(1234.5), fmt.dollars(0.000012), fmt.dollars(0)],
  seconds: [fmt.seconds(0.00027), fmt.seconds(0.0078), fmt.seconds(0.25), fmt.seconds(3)],
  value: [fmt.value("hit_rate", 0.25), fmt.value("saved_dollars", 2), fmt.value("vetoes", 7),
          fmt.value("enabled", true), fmt.value("p99_seconds", 0.002)],
  flatten: fmt.flatten({semantic: {hits: 3, vetoes: {numbers: 2}}, list: [1, 2]}),
  shares: fmt.shares({miss: 1, hit: 3}),
};
console.log(JSON.stringify(out));
"""


def test_the_formatting_functions_under_node(tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (the browser test covers the page)")
    block = re.search(r"<script id=fmt>(.*?)</script>", DASHBOARD_HTML, re.DOTALL)
    assert block is not None
    script = tmp_path / "fmt.js"
    script.write_text(block.group(1) + _NODE_CHECK, encoding="utf-8")
    run = subprocess.run(
        [node, str(script)], check=False, capture_output=True, text=True, timeout=30
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    dash = "\u2013"
    assert out["count"] == ["1,234,567", dash, dash]
    assert out["percent"] == ["50.0%", "100.0%", dash]
    assert out["dollars"] == ["$1,234.50", "$0.000012", "$0.00"]
    assert out["seconds"] == ["270 µs", "7.80 ms", "250.0 ms", "3.00 s"]
    assert out["value"] == ["25.0%", "$2.00", "7", "yes", "2.00 ms"]
    assert out["flatten"] == [
        ["semantic.hits", 3],
        ["semantic.vetoes.numbers", 2],
        ["list", "[1,2]"],
    ]
    assert out["shares"] == [["hit", 3, 0.75], ["miss", 1, 0.25]]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no headless browser: apt-get install chromium (make system-deps)")


def test_a_browser_renders_live_numbers(
    proxy: RunningProxy, fake: FakeUpstream, tmp_path: Path
) -> None:
    browser = _chromium()
    sdk = client(proxy)
    sdk.chat.completions.create(**CHAT)  # a miss
    sdk.chat.completions.create(**CHAT)  # a hit
    sdk.chat.completions.create(**CHAT)  # a hit
    run = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",  # tests run as root on CI
            "--disable-gpu",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=5000",  # run the page's timers; network fetches pause it
            "--dump-dom",
            f"{proxy.root}/dashboard",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    page = _texts(run.stdout)
    assert page.texts["status"].startswith("updated"), page.texts["status"]
    assert page.texts["total"] == "3"
    assert page.texts["hit-rate"] == "66.7%"
    assert page.texts["coalesced"] == "0"
    assert page.texts["verification"] == "0"
    assert page.texts["in-flight"] == "0"
    assert page.texts["dollars-saved"].startswith("$")
    assert page.texts["dollars-saved"] != "$0.00"
    assert re.fullmatch(r"[\d,]+ \([\d,]+ in / [\d,]+ out\)", page.texts["tokens-saved"])
    outcomes = page.texts["outcomes"]
    assert "hit266.7%" in outcomes.replace(" ", "")
    assert "miss133.3%" in outcomes.replace(" ", "")
    assert "memoryup" in page.texts["health"].replace(" ", "")
    assert "gpt-4o-mini" in page.texts["models"]
    latency = page.texts["latency"]
    assert "hit" in latency
    assert re.search(r"(µs|ms)", latency)
