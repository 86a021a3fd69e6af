"""The explorer in a real browser: `streamlit run` headless, driven by Debian's chromium.

Opens the app, uploads example images on the check page, moves the timestep slider, runs
the attack comparison, and saves a screenshot of every page under
test-artifacts/screenshots/. It also records every request the browser makes: the app must
work offline, so nothing may leave 127.0.0.1.

Without chromium (or Playwright) the test skips with the reason, except under CI=true,
where it fails: CI installs chromium (`make browser`).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from explorer import state
from explorer.choices import GRID_ENV, MODEL_ENV

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "explorer" / "app.py"
SHOTS = ROOT / "test-artifacts" / "screenshots"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic",
]
GRID = "0:100:20"
#: Generous: the first sweep of the memorising demo runs on a shared CI core or two.
RUN_TIMEOUT_MS = 420_000

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _require_browser() -> None:
    problem = None
    if not CHROMIUM.is_file():
        problem = f"{CHROMIUM} is not installed (run `make browser`, or apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            problem = "the playwright package is not installed (pip install -e '.[test]')"
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(f"browser test cannot run in CI: {problem}")
        pytest.skip(problem)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app served headless on a free local port, with a private score cache."""
    _require_browser()
    port = _free_port()
    cache = tmp_path_factory.mktemp("score-cache")
    log = open(tmp_path_factory.mktemp("server") / "streamlit.log", "w+")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SIMA_CACHE_DIR": str(cache), GRID_ENV: GRID}
    env.pop(MODEL_ENV, None)
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(APP), "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                pytest.fail(f"streamlit did not start:\n{log.read()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def _example_files(tmp_path: Path) -> list[Path]:
    """One member and one held-out example: the bundled ones, else the same digits written out."""
    examples = state.examples()
    chosen = [next((e.path for e in examples if e.label == label), None) for label in ("member", "held-out")]
    if all(chosen):
        return chosen
    from PIL import Image

    from core.datasets import digits_split, digits_uint8

    split, pictures = digits_split(), digits_uint8(16)
    paths = []
    for name, image_id in (("member.png", split.member_ids[0]), ("held-out.png", split.heldout_ids[0])):
        path = tmp_path / name
        Image.fromarray(pictures[int(image_id.split("-")[-1])]).save(path)
        paths.append(path)
    return paths


def _settle(page, timeout: int = RUN_TIMEOUT_MS) -> None:
    """Wait until Streamlit has finished running the script (its status widget is gone)."""
    page.wait_for_timeout(600)
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=timeout)
    page.wait_for_timeout(800)


def _screenshot(page, name: str) -> Path:
    """The whole page: the viewport is stretched to the content, which scrolls inside the app."""
    height = page.evaluate(
        "() => Math.max(...[...document.querySelectorAll('[data-testid=stMain], section')].map(e => e.scrollHeight))"
    )
    page.set_viewport_size({"width": 1440, "height": min(int(height) + 60, 9000)})
    page.wait_for_timeout(1200)  # plotly redraws at the new size
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path))
    page.set_viewport_size({"width": 1440, "height": 1000})
    return path


def _start_if_asked(page) -> None:
    """Press the button a run longer than a minute waits behind, once the page has settled."""
    _settle(page)
    start = page.get_by_role("button", name="Start (about")
    if start.count():
        start.first.click()


@contextmanager
def _app_page(server: str):
    """A Chromium page on the app, its first page rendered; on leaving, the browser is closed and
    every request it made is checked to have stayed on this machine."""
    from playwright.sync_api import sync_playwright

    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.on("request", lambda request: requests.append(request.url))
            page.goto(server)
            page.get_by_role("heading", name="Check an image").wait_for(timeout=90_000)
            _settle(page)
            yield page
        finally:
            browser.close()
    outside = sorted({url for url in requests if not url.startswith((server, "data:", "blob:"))})
    assert not outside, f"the app fetched from outside this machine: {outside[:5]}"


def _open(page, title: str) -> None:
    page.get_by_role("link", name=title, exact=True).click()
    page.get_by_role("heading", level=1).filter(has_text=title.split()[0]).wait_for(timeout=60_000)
    _settle(page)


def _no_error_shown(page) -> None:
    assert page.locator('[data-testid="stException"]').count() == 0
    assert "Traceback" not in page.inner_text("body")


def test_the_app_in_a_real_browser(server, tmp_path, capsys):
    with _app_page(server) as page:
        # Check an image: upload a member and a held-out example.
        files = _example_files(tmp_path)
        page.locator('[data-testid="stFileUploaderDropzoneInput"]').first.set_input_files([str(f) for f in files])
        _start_if_asked(page)
        page.get_by_text("as the model sees it").first.wait_for(timeout=RUN_TIMEOUT_MS)
        _settle(page)
        verdicts = page.get_by_text("Likely a member").count() + page.get_by_text("Not flagged").count()
        assert verdicts >= 2, "each uploaded image should get a verdict"
        assert page.get_by_text(files[0].name).count() >= 1
        _no_error_shown(page)
        _screenshot(page, "1-check-an-image")

        # Timestep explorer: the slider moves the marked t.
        _open(page, "Timestep explorer")
        thumb = page.locator('[data-testid="stSliderThumbValue"]').first
        before = thumb.inner_text()
        slider = page.locator('[data-testid="stSlider"] input[type="range"]').first
        slider.focus()
        at_end = slider.get_attribute("value") == slider.get_attribute("max")
        slider.press("ArrowLeft" if at_end else "ArrowRight")
        _settle(page)
        after = thumb.inner_text()
        assert after != before, "the slider did not move"
        page.get_by_text(f"Distributions at t = {after}").wait_for(timeout=30_000)
        _no_error_shown(page)
        _screenshot(page, "2-timestep-explorer")

        _open(page, "Audit a dataset")
        page.get_by_text("Result at t =").wait_for(timeout=RUN_TIMEOUT_MS)
        _no_error_shown(page)
        _screenshot(page, "3-audit-a-dataset")

        _open(page, "Local mean")
        page.get_by_text("heaviest neighbours").wait_for(timeout=60_000)
        _no_error_shown(page)
        _screenshot(page, "4-local-mean")

        # Compare attacks starts cheap: the two one-query attacks on a subset.
        _open(page, "Compare attacks")
        for name in ("SimA", "Loss"):
            assert page.get_by_role("button", name=f"Remove {name}", exact=True).count() == 1
        for name in ("SimA-MC", "PIA", "PIAN", "SecMI", "PFAMI"):
            assert page.get_by_role("button", name=f"Remove {name}", exact=True).count() == 0
        page.get_by_text("timed on one batch of each attack").wait_for(timeout=RUN_TIMEOUT_MS)
        page.get_by_role("button", name="Run the comparison").click()
        page.get_by_text("Higher and further left is better").wait_for(timeout=RUN_TIMEOUT_MS)
        _settle(page)
        legend = {text.split(" (")[0] for text in page.locator(".legendtext").all_text_contents()}
        assert {"sima", "loss"} <= legend and "pfami" not in legend
        _no_error_shown(page)
        _screenshot(page, "5-compare-attacks")

        # A long run can be stopped from the page (the minimal toolbar hides Streamlit's own Stop).
        page.get_by_role("button", name="Remove Loss", exact=True).click()
        _settle(page)
        page.get_by_label("Images per group", exact=True).fill("256")
        page.get_by_label("Images per group", exact=True).press("Enter")
        _settle(page)
        page.get_by_role("button", name="Run the comparison").click()
        stop = page.get_by_role("button", name="Stop: scoring with SimA")
        stop.wait_for(timeout=60_000)
        _screenshot(page, "5b-compare-running")
        stop.click()
        page.get_by_text("was stopped").wait_for(timeout=60_000)
        assert page.get_by_role("button", name="Run it again").count() == 1
        _no_error_shown(page)

        _open(page, "Latent bottleneck")
        if page.get_by_role("button", name="Audit the pixel and latent models").count():
            page.get_by_role("button", name="Audit the pixel and latent models").click()
            page.get_by_text("How to read this").wait_for(timeout=RUN_TIMEOUT_MS)
            _settle(page)
        _no_error_shown(page)
        _screenshot(page, "6-pixel-vs-latent")

        _open(page, "About")
        assert page.locator(".katex").count() >= 5, "the formulas did not render"
        _screenshot(page, "7-about")
    assert len(list(SHOTS.glob("*.png"))) >= 7


def test_the_check_page_scores_an_upload_with_a_typed_caption_on_the_captioned_demo(server, tmp_path):
    """Pick the text-to-image demo, upload one of its members, type its caption into the
    table, and get a score and verdict conditioned on that caption."""
    from PIL import Image

    from core.datasets import digit_captions, digits_uint8
    from core.models.registry import DEMO_DIR, read_manifest

    name = "digits-sd-captioned"
    member = read_manifest(DEMO_DIR / name)["member_ids"][0]
    caption = digit_captions([member])[0]
    path = tmp_path / f"{member}.png"
    Image.fromarray(digits_uint8(16)[int(member.split("-")[-1])]).save(path)
    with _app_page(server) as page:
        page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').first.click()
        page.get_by_role("option", name=name, exact=True).click()
        _settle(page)
        page.get_by_text("Condition on").wait_for(timeout=60_000)

        page.locator('[data-testid="stFileUploaderDropzoneInput"]').first.set_input_files([str(path)])
        page.get_by_text("Type a caption for").wait_for(timeout=RUN_TIMEOUT_MS)
        _settle(page)  # an edit made while the script still runs is lost when it redraws the table
        # The caption column of the table's only row: a click selects the cell, typing edits it.
        grid = page.locator('[data-testid="stDataFrame"]').first
        box = grid.bounding_box()
        page.mouse.dblclick(box["x"] + box["width"] * 0.75, box["y"] + 35 + 17)
        page.wait_for_timeout(500)
        page.keyboard.insert_text(caption)  # at once: a key typed while the cell editor opens is lost
        page.keyboard.press("Enter")
        _screenshot(page, "8-check-caption-typed")
        _start_if_asked(page)
        page.get_by_text(f"Conditioned on “{caption}”").wait_for(timeout=RUN_TIMEOUT_MS)
        _settle(page)
        verdicts = page.get_by_text("Likely a member").count() + page.get_by_text("Not flagged").count()
        assert verdicts >= 1, "the uploaded image should get a verdict"
        _no_error_shown(page)
        _screenshot(page, "9-check-with-a-caption")
