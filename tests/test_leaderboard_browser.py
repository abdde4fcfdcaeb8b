"""The leaderboard page in a real headless browser: Debian's chromium driven by chromedriver.

chromedriver speaks the W3C WebDriver protocol over HTTP on 127.0.0.1; the few commands the
test needs are sent with urllib, so no Python browser library is required. The test skips
when chromium or chromedriver is missing (``scripts/install_test_packages.sh`` installs both).
Set ``KDBENCH_SCREENSHOT_DIR`` to keep the screenshots it takes.
"""

from __future__ import annotations

import base64
import json
import math
import os
import shutil
import socket
import struct
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from bench.leaderboard.aggregate import Settings
from bench.leaderboard.cli import leaderboard_from_runs
from bench.leaderboard.figures import FIGURES
from bench.leaderboard.runs import runs_frame

CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs chromium and chromedriver on PATH (scripts/install_test_packages.sh)",
)

ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C key of an element reference
WIDTH, HEIGHT = 1400, 1000


class WebDriver:
    """The W3C WebDriver commands this test uses, sent to a chromedriver on 127.0.0.1."""

    def __init__(self, port: int, user_data_dir: Path) -> None:
        self.base = f"http://127.0.0.1:{port}"
        args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            # Any network lookup fails: the page must work from disk alone.
            "--host-resolver-rules=MAP * ~NOTFOUND",
            f"--user-data-dir={user_data_dir}",
            f"--window-size={WIDTH},{HEIGHT}",
        ]
        options = {"binary": CHROMIUM, "args": args}
        caps = {"capabilities": {"alwaysMatch": {"goog:chromeOptions": options}}}
        self.session = self._call("POST", "/session", caps)["sessionId"]

    def _call(self, method: str, path: str, body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.base + path, data=data, method=method,
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return json.loads(response.read())["value"]
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"WebDriver {method} {path}: {exc.read().decode()}") from None

    def _session(self, method: str, path: str, body: dict | None = None):
        return self._call(method, f"/session/{self.session}{path}", body)

    def get(self, url: str) -> None:
        self._session("POST", "/url", {"url": url})

    def find(self, css: str) -> str:
        return self._session("POST", "/element", {"using": "css selector", "value": css})[ELEMENT]

    def find_all(self, css: str) -> list[str]:
        found = self._session("POST", "/elements", {"using": "css selector", "value": css})
        return [e[ELEMENT] for e in found]

    def click(self, element: str) -> None:
        self._session("POST", f"/element/{element}/click", {})

    def text(self, element: str) -> str:
        return self._session("GET", f"/element/{element}/text")

    def displayed(self, element: str) -> bool:
        return self._session("GET", f"/element/{element}/displayed")

    def script(self, source: str, *args):
        return self._session("POST", "/execute/sync", {"script": source, "args": list(args)})

    def screenshot(self) -> bytes:
        return base64.b64decode(self._session("GET", "/screenshot"))

    def resize(self, width: int, height: int) -> None:
        self._session("POST", "/window/rect", {"width": width, "height": height})

    def quit(self) -> None:
        self._session("DELETE", "")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("chromedriver") / "chromedriver.log"
    driver_process = subprocess.Popen(
        [CHROMEDRIVER, f"--port={port}", f"--log-path={log}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5):
                    break
            except OSError:
                if time.monotonic() > deadline or driver_process.poll() is not None:
                    pytest.fail(f"chromedriver did not start; see {log}")
                time.sleep(0.2)
        driver = WebDriver(port, tmp_path_factory.mktemp("chromium-profile"))
        yield driver
        driver.quit()
    finally:
        driver_process.terminate()
        driver_process.wait(timeout=30)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """A leaderboard of 6 methods over 6 cells; 'good' is 1 point over kd everywhere."""
    rng = np.random.default_rng(3)
    effects = {"ce": -0.02, "kd": 0.0, "good": 0.01, "fair": 0.004, "poor": -0.006, "odd": 0.0}
    records = []
    for c in range(6):
        dataset, teacher = f"d{c // 3}", ("resnet56", "wrn_40_2", "vgg13")[c % 3]
        level = 0.85 + 0.1 * rng.random()
        for method, effect in effects.items():
            for seed in range(3):
                records.append(
                    {
                        "run_key": f"{c}-{method}-{seed}", "dataset": dataset, "teacher": teacher,
                        "student": "resnet20", "method": method, "method_version": 1,
                        "params": {}, "seed": seed, "phase": "final", "status": "FINISHED",
                        "test_acc": level + effect + rng.normal(0, 0.002), "val_acc": level,
                        "teacher_test_acc": 0.97, "train_seconds": 10.0,
                    }
                )  # fmt: skip
    folder = tmp_path_factory.mktemp("leaderboard")
    board = leaderboard_from_runs(runs_frame(records), folder, name="browser-check")
    return folder, board


@pytest.fixture(scope="module")
def wide_page(tmp_path_factory):
    """A tune leaderboard as wide as they come: 17 entries with long names (one method run
    with several settings per method, a plugin with a long name), every side metric, and 3
    cells, too few for the across-cell test."""
    rng = np.random.default_rng(5)
    settings = [("ce", {})]
    settings += [
        ("kd", {"temperature": t, "alpha": a}) for t in (1.0, 4.0, 8.0) for a in (0.5, 0.9)
    ]
    settings += [("dkd", {"beta": b, "temperature": t}) for b in (1.0, 8.0) for t in (1.0, 4.0)]
    settings += [("relational_distillation_with_a_long_plugin_name", {"w": w}) for w in (1.0, 10.0)]
    records = []
    for c, teacher in enumerate(("resnet32x4", "wrn_40_2", "vgg13")):
        level = 0.7 + 0.05 * rng.random()
        for i, (method, params) in enumerate(settings):
            for seed in range(3):
                acc = level + 0.002 * (i % 5) + rng.normal(0, 0.003)
                records.append(
                    {
                        "run_key": f"{c}-{i}-{seed}", "dataset": "cifar100", "teacher": teacher,
                        "student": "resnet8x4", "method": method, "method_version": 1,
                        "params": params, "seed": seed, "phase": "tune", "status": "FINISHED",
                        "val_acc": acc, "test_acc": acc, "test_top5": acc + 0.2,
                        "macro_f1": acc - 0.01, "ece": 0.05, "teacher_test_acc": 0.79,
                        "agreement": 0.8 if method != "ce" else math.nan,
                        "train_seconds": 100.0, "extra_params": 12345 if i > 10 else 0,
                    }
                )  # fmt: skip
    folder = tmp_path_factory.mktemp("wide-leaderboard")
    settings = Settings(phase="tune", metric="val_acc", n_boot=200)
    board = leaderboard_from_runs(runs_frame(records), folder, name="wide", settings=settings)
    assert len(board.entries) == 13 and len(board.cells) == 3
    return folder, board


def _save(name: str, png: bytes, tmp_path: Path) -> None:
    (tmp_path / name).write_bytes(png)
    keep = os.environ.get("KDBENCH_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        (Path(keep) / name).write_bytes(png)


def _row_entries(browser: WebDriver) -> list[str]:
    return browser.script(
        "return Array.from(document.querySelectorAll('#main tbody tr.entry'))"
        ".map(r => r.dataset.entry);"
    )


def _column_keys(browser: WebDriver, column: int) -> list[float | None]:
    keys = browser.script(
        "return Array.from(document.querySelectorAll('#main tbody tr.entry'))"
        ".map(r => r.cells[arguments[0]].getAttribute('data-sort'));",
        column,
    )
    return [float(k) if k not in ("", None) else None for k in keys]


def test_page_renders_sorts_and_drills_down(browser, page, tmp_path):
    folder, board = page
    browser.get((folder / "index.html").as_uri())

    # The table renders, in rank order, and the figures load from the relative links.
    assert browser.script("return document.title") == "kdbench leaderboard: browser-check"
    assert _row_entries(browser) == [e.entry for e in board.entries]
    assert _row_entries(browser)[0] == "good@1"
    first = browser.find("#main tbody tr.entry")
    assert browser.text(first).split()[0] == "1" and "good@1" in browser.text(first)
    loaded = browser.script(
        "return Array.from(document.images).map(i => i.complete && i.naturalWidth > 0);"
    )
    assert loaded == [True, True, True]
    png = browser.screenshot()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == (WIDTH, browser.script("return innerHeight"))
    _save("leaderboard.png", png, tmp_path)

    # Clicking a header re-sorts: gain over the reference kd@1, largest first, then smallest first.
    header = browser.find("#main thead th:nth-child(5) button")
    assert browser.text(header) == "Gain vs kd@1"
    browser.click(header)
    gains = _column_keys(browser, 4)
    known = [g for g in gains if g is not None]
    assert known == sorted(known, reverse=True) and gains[-1] is None  # kd itself: no gain
    assert _row_entries(browser)[:2] == ["good@1", "fair@1"]
    th = browser.find("#main thead th:nth-child(5)")
    assert browser.script("return arguments[0].getAttribute('aria-sort')", {ELEMENT: th}) == (
        "descending"
    )
    browser.click(header)
    known = [g for g in _column_keys(browser, 4) if g is not None]
    assert known == sorted(known)
    assert _row_entries(browser)[0] == "ce@1"
    browser.click(browser.find("#main thead th:nth-child(2) button"))
    assert _row_entries(browser) == sorted(e.entry for e in board.entries)

    # A drill-down opens under its method and travels with it when the table is re-sorted.
    drill = browser.find("#drill-good_1")
    assert not browser.displayed(drill)
    button = browser.find("#entry-good_1 button.drill")
    browser.click(button)
    assert browser.displayed(drill)
    text = browser.text(drill)
    for cell in board.cells:
        assert cell.label in text
    assert text.count("(3)") == len(board.cells)  # mean ± sd (n) of each cell
    browser.click(browser.find("#main thead th:nth-child(1) button"))
    follows = browser.script(
        "return document.getElementById('entry-good_1').nextElementSibling.id;"
    )
    assert follows == "drill-good_1"
    _save("leaderboard-drilldown.png", browser.screenshot(), tmp_path)

    # A per-cell drill-down opens on click and shows every method's seeds.
    details = browser.find("details.cell")
    browser.click(browser.find("details.cell > summary"))
    assert browser.script("return arguments[0].open", {ELEMENT: details}) is True
    rows = browser.find_all("details.cell:first-of-type tbody tr")
    assert len(rows) == len(board.entries)
    assert all(browser.displayed(r) for r in rows)
    assert "s0:" in browser.text(rows[0])

    # Following a link to a cell opens its details (the hash handler).
    browser.click(browser.find("#main thead th:nth-child(1) button"))
    link = browser.find_all('#drill-good_1 a[href^="#cell-"]')[-1]
    # A link at the top edge of the viewport sits under the sticky table header; scroll it
    # to the middle first, as a reader would.
    browser.script("arguments[0].scrollIntoView({block: 'center'})", {ELEMENT: link})
    browser.click(link)
    # The page opens the cell from its hashchange handler, which runs after the click returns.
    deadline = time.monotonic() + 5
    while True:
        opened = browser.script(
            "var id = arguments[0].getAttribute('href').slice(1);"
            "return [id, document.getElementById(id).open];",
            {ELEMENT: link},
        )
        if opened[1] is True or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert opened[1] is True and opened[0] != browser.script(
        "return document.querySelector('details.cell').id"
    )


#: Elements outside any scrolling container that reach past the page's right edge (CSS px
#: beyond it, tag, id or class, start of the text); a scrolling container itself counts.
_OVERFLOWING = """
var width = document.documentElement.clientWidth, out = [];
document.querySelectorAll("body *").forEach(function (el) {
  var box = el.getBoundingClientRect();
  if (!box.width || (el.parentElement && el.parentElement.closest(".scroll"))) { return; }
  if (box.right > width + 0.5 || box.left < -0.5) {
    out.push([Math.round(Math.max(box.right - width, -box.left)), el.tagName, el.id || el.className,
              (el.textContent || "").trim().slice(0, 40)]);
  }
});
return out;
"""


@pytest.mark.parametrize("width", [1400, 800])
def test_the_page_fits_the_window_and_keeps_the_method_column_in_view(
    browser, page, wide_page, width, tmp_path
):
    try:
        browser.resize(width, HEIGHT)
        for folder, board in (page, wide_page):
            browser.get((folder / "index.html").as_uri())
            assert browser.script("return window.innerWidth") == width
            # Nothing overflows the page: no horizontal scrolling of the page itself, which
            # shows its width (overflow is not hidden).
            hidden = (
                "return [document.documentElement, document.body]"
                ".map(e => getComputedStyle(e).overflowX);"
            )
            assert browser.script(hidden) == ["visible", "visible"]
            overflow = "var e = document.documentElement; return e.scrollWidth - e.clientWidth;"
            assert browser.script(overflow) <= 0
            assert browser.script(_OVERFLOWING) == []
            # The verdict is the first thing under the title.
            verdict = browser.text(browser.find("header #verdict"))
            assert verdict.startswith(f"Nothing is established against {board.reference.label}: ")
            # Every column of the methods table has its definition in the legend.
            headers = browser.script(
                "return Array.from(document.querySelectorAll('#main > thead th'))"
                ".map(th => th.textContent.trim());"
            )
            terms = browser.script(
                "return Array.from(document.querySelectorAll('#legend dt'))"
                ".map(dt => dt.textContent.trim());"
            )
            assert terms == headers and headers[-1] == "Cost"

            # Scrolled to its end, the methods table shows its last column and still shows
            # every method's rank and name beside it.
            geometry = browser.script(
                """
                var box = document.getElementById("main-scroll");
                box.scrollLeft = box.scrollWidth;
                var view = box.getBoundingClientRect(), out = {scrolls: box.scrollLeft > 0};
                var cost = document.querySelector("#main > thead th:last-child");
                out.cost = cost.getBoundingClientRect().right - view.right;
                out.rows = Array.from(document.querySelectorAll("#main tr.entry")).map(
                  function (row) {
                    var rank = row.cells[0].getBoundingClientRect();
                    var name = row.cells[1].getBoundingClientRect();
                    var last = row.cells[row.cells.length - 1].getBoundingClientRect();
                    return [rank.left - view.left, name.right - last.left,
                            name.right - view.right];
                  });
                return out;
                """
            )
            assert geometry["cost"] <= 0.5
            for rank_left, name_overlap, name_right in geometry["rows"]:
                assert -0.5 <= rank_left <= 2  # the rank column stays at the left edge
                assert name_right < 0  # the method's name is inside the view
                if geometry["scrolls"]:
                    assert name_overlap <= 0.5  # and does not cover the last column
            browser.script("document.getElementById('methods').scrollIntoView()")
            _save(f"leaderboard-{board.name}-{width}.png", browser.screenshot(), tmp_path)

            # Every figure loads (lazily: scrolled to) and is inside its section's width.
            browser.script("document.getElementById('figures').scrollIntoView()")
            deadline = time.monotonic() + 10
            while not browser.script(
                "return Array.from(document.images).every(i => i.complete && i.naturalWidth);"
            ):
                assert time.monotonic() < deadline, "the figures did not load"
                time.sleep(0.05)
            beyond = browser.script(
                "var right = document.getElementById('figures').getBoundingClientRect().right;"
                "return Array.from(document.images).map(i => i.getBoundingClientRect().right"
                " - right);"
            )
            assert len(beyond) == len(FIGURES) and max(beyond) <= 0.5
    finally:
        browser.resize(WIDTH, HEIGHT)


def test_figure_text_stays_inside_every_figure(browser, page, wide_page):
    """Each SVG opened on its own: every text's box, as the browser lays it out, lies inside
    the drawing (a label cut at the edge would reach past it)."""
    for folder, board in (page, wide_page):
        for name in FIGURES:
            browser.get((folder / "figures" / name).as_uri())
            texts = browser.script(
                """
                var svg = document.documentElement, box = svg.getBoundingClientRect();
                return Array.from(svg.querySelectorAll("text")).map(function (t) {
                  var r = t.getBoundingClientRect();
                  return [t.textContent, r.left - box.left, r.top - box.top,
                          box.right - r.right, box.bottom - r.bottom];
                });
                """
            )
            assert len(texts) > 10, (board.name, name)
            cut = [t for t in texts if min(t[1:]) < 0]
            assert cut == [], (board.name, name, cut)
            shown = " ".join(t[0] for t in texts)
            if name != "gain_heatmap.svg":  # the heatmap leaves out the reference's own row
                for entry in board.entries:
                    assert entry.entry in shown, (name, entry.entry)
