"""The web page of `ditkit serve` in a real browser: Playwright driving Debian's Chromium.

One real server (`python -m ditkit serve`, shapes-64 and shapes-upscale) on a free loopback
port for the module; each test opens the page fresh. Playwright never downloads a browser:
it launches /usr/bin/chromium (`make test` installs it with apt when missing).

Screenshots of every tab go to a temporary folder; with DITKIT_UPDATE_SCREENSHOTS=1 they
replace docs/figures/serve-<tab>.png (the pictures docs/serving.md shows).
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
sync_api = pytest.importorskip("playwright.sync_api")
from ditkit.serve import running_server  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
MODELS = "shapes-64,shapes-upscale"
TABS = ("generate", "inpaint", "outpaint", "vary", "fuse", "upscale")
STARTUP_S = 180  # loading the models on a busy 2-core machine; the server answers /healthz when ready
JOB_MS = 120_000  # how long the page may take for one small job (text encoder load on the first)
FIGURES = Path(__file__).resolve().parents[1] / "docs" / "figures"

if not shutil.which(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is missing: `make test` installs Chromium with apt", allow_module_level=True)


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The base URL of a `ditkit serve` process (ditkit.serve.running_server: a free loopback
    port); its log is in the failure if it does not start."""
    log_path = tmp_path_factory.mktemp("serve") / "server.log"
    try:
        with running_server(MODELS, env={"OMP_NUM_THREADS": "1"}, log_path=log_path, startup_timeout=STARTUP_S) as s:
            yield s.url
    except RuntimeError as e:  # it exited or never answered /healthz: the message holds its log
        pytest.fail(str(e))


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    """The page, loaded and wired (it has listed the models); fails the test on an uncaught script error."""
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    page.set_default_timeout(JOB_MS)
    script_errors = []
    page.on("pageerror", lambda error: script_errors.append(str(error)))
    page.goto(server + "/")
    page.wait_for_selector("body[data-ready=true]")
    yield page
    context.close()
    assert not script_errors, script_errors


def decode_data_url(data_url: str) -> np.ndarray:
    assert data_url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.partition(",")[2]))).convert("RGB"))


def submitted_job(page, click) -> dict:
    """Click (a function) and return the JSON body of the POST /v1/jobs it sends."""
    with page.expect_request(lambda r: r.url.endswith("/v1/jobs") and r.method == "POST") as request:
        click()
    return json.loads(request.value.post_data)


def record_progress(page) -> None:
    """Log, in order, every value the progress bar takes and every gallery addition (window.seen)."""
    page.evaluate("""() => {
        window.seen = [];
        const status = document.getElementById("job-status");
        new MutationObserver(() => window.seen.push(["status", status.textContent]))
            .observe(status, { childList: true, characterData: true, subtree: true });
        new MutationObserver(() => window.seen.push(["gallery", document.querySelectorAll("#gallery li").length]))
            .observe(document.getElementById("gallery"), { childList: true });
    }""")
    # <progress>.value is a property, not an attribute: mirror it so the observer sees each change.
    page.evaluate("""() => {
        const bar = document.getElementById("progress");
        const descriptor = Object.getOwnPropertyDescriptor(HTMLProgressElement.prototype, "value");
        Object.defineProperty(bar, "value", {
            get() { return descriptor.get.call(this); },
            set(v) { descriptor.set.call(this, v); window.seen.push(["progress", descriptor.get.call(this)]); },
        });
    }""")


def generate(page, steps: int, seed: int) -> dict:
    page.click("#tab-generate")
    page.fill("#steps", str(steps))
    page.fill("#seed", str(seed))
    before = page.locator("#gallery li").count()
    body = submitted_job(page, lambda: page.click("#submit"))
    page.wait_for_function(f"document.querySelectorAll('#gallery li').length > {before}")
    return body


def test_generate_shows_progress_and_preview_then_the_image(page, server):
    record_progress(page)
    body = generate(page, steps=4, seed=7)
    assert body["task"] == "generate" and body["steps"] == 4 and body["seed"] == 7 and body["model"] == "shapes-64"

    seen = page.evaluate("window.seen")
    first_image = seen.index(["gallery", 1])
    partial = [i for i, (kind, value) in enumerate(seen) if kind == "progress" and 0 < value < 1]
    assert partial and partial[0] < first_image, seen  # the bar moved before the image arrived
    steps_shown = [value for kind, value in seen[:first_image] if kind == "status" and "step" in value]
    assert "Running: step 1 of 4" in steps_shown, seen
    assert page.get_attribute("#preview", "src").startswith("data:image/png;base64,")  # the live x0 estimate

    card = page.locator("#gallery li").first
    assert "seed 7" in card.inner_text()
    # decode() waits for the image to load (the card is added before its PNG arrives)
    size = card.locator("img").evaluate("img => img.decode().then(() => [img.naturalWidth, img.naturalHeight])")
    assert size == [64, 64]
    href = card.locator("a[download]").get_attribute("href")
    png = Image.open(io.BytesIO(get(server + href)))
    assert png.format == "PNG" and png.size == (64, 64)

    # "Reuse seed" puts the image's seed back into the form.
    page.fill("#seed", "")
    card.get_by_role("button", name="Reuse seed 7").click()
    assert page.input_value("#seed") == "7"


def test_paint_a_mask_and_inpaint_keeps_the_rest(page, server):
    page.click("#tab-inpaint")
    page.wait_for_function("document.getElementById('image-canvas').width === 64")
    page.fill("#steps", "3")
    box = page.locator("#mask-canvas").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.55, box["y"] + box["height"] * 0.3)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.85, box["y"] + box["height"] * 0.7, steps=6)
    page.mouse.up()

    body = submitted_job(page, lambda: page.click("#submit"))
    assert body["task"] == "inpaint"
    image, mask = decode_data_url(body["image"]), decode_data_url(body["mask"])
    assert mask.shape == image.shape == (64, 64, 3)
    assert set(np.unique(mask)) == {0, 255}  # hard-edged: white = fill, black = keep
    fill = mask[..., 0] == 255
    assert 0.02 < fill.mean() < 0.5 and fill[:, :32].sum() < fill[:, 32:].sum()  # where the stroke went

    page.wait_for_selector("#gallery li")
    result_url = page.locator("#gallery li img").first.get_attribute("src")
    result = np.asarray(Image.open(io.BytesIO(get(server + result_url))).convert("RGB"))
    assert result.shape == image.shape
    assert np.array_equal(result[~fill], image[~fill])  # kept pixels exact, as `ditkit inpaint` promises
    assert "inpaint" in page.inner_text("#gallery li")


@pytest.mark.parametrize("tab, kind, size", [("outpaint", None, (80, 64)), ("vary", "vary", (64, 64)),
                                             ("vary", "edit", (64, 64)), ("fuse", None, (64, 64)),
                                             ("upscale", None, (128, 128))])
def test_every_other_task_runs_from_its_tab(page, server, tab, kind, size):
    page.click(f"#tab-{tab}")
    if kind:
        page.check(f'input[name="mode"][value="{kind}"]')
    page.wait_for_function("document.getElementById('image-canvas').width === 64")
    page.fill("#steps", "2")
    body = submitted_job(page, lambda: page.click("#submit"))
    task = kind or tab
    assert body["task"] == task and body["model"] == ("shapes-upscale" if tab == "upscale" else "shapes-64")
    if tab == "outpaint":  # the default: 16 pixels on the right
        assert (body["left"], body["right"], body["top"], body["bottom"]) == (0, 16, 0, 0)
    if tab == "fuse":
        assert body["alpha"] == 0.5 and decode_data_url(body["image_b"]).shape == (64, 64, 3)
    page.wait_for_selector("#gallery li")
    card = page.locator("#gallery li").first
    assert card.inner_text().startswith(task)
    result = Image.open(io.BytesIO(get(server + card.locator("img").get_attribute("src"))))
    assert result.size == size
    # editing tasks stream their sampler steps and x0 previews too
    assert page.is_visible("#preview") and page.get_attribute("#preview", "src").startswith("data:image/png;base64,")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_upload_an_image(page, tmp_path, fmt):
    path = tmp_path / f"upload.{fmt.lower()}"
    Image.new("RGB", (48, 40), (40, 170, 70)).save(path, fmt)
    page.click("#tab-vary")
    page.set_input_files("#image-file", str(path))
    page.wait_for_function("document.getElementById('image-canvas').width === 48")
    assert page.locator("#image-source option:checked").inner_text() == f"Upload: {path.name}"
    page.fill("#steps", "2")
    body = submitted_job(page, lambda: page.click("#submit"))
    sent = decode_data_url(body["image"])  # a PNG data URL, whatever the upload's format
    assert sent.shape == (40, 48, 3)
    if fmt == "PNG":
        assert body["image"].partition(",")[2] == base64.b64encode(path.read_bytes()).decode()  # the file's own bytes
    page.wait_for_selector("#gallery li")


def test_bad_input_is_shown_next_to_its_field(page):
    page.fill("#steps", "0")
    page.click("#submit")
    error = page.locator("#steps-error")
    error.wait_for(state="visible")
    assert "steps" in error.inner_text() and "1.." in error.inner_text()  # what was wrong, what is allowed
    assert page.get_attribute("#steps", "aria-invalid") == "true"
    assert page.evaluate("document.activeElement.id") == "steps"  # the keyboard lands on the field
    assert page.locator("#gallery li").count() == 0 and page.locator("#job").is_hidden()

    page.fill("#steps", "2")
    page.fill("#size", "big")
    page.click("#submit")
    page.locator("#size-error").wait_for(state="visible")
    assert "WxH" in page.inner_text("#size-error")
    assert page.locator("#steps-error").is_hidden()  # the old error is gone


def test_keyboard_tabs_mask_and_labels(page):
    page.focus("#tab-generate")
    page.keyboard.press("ArrowRight")
    assert page.get_attribute("#tab-inpaint", "aria-selected") == "true"
    assert page.evaluate("document.activeElement.id") == "tab-inpaint"
    page.wait_for_function("document.getElementById('image-canvas').width === 64")

    page.focus("#mask-canvas")
    page.keyboard.press("Space")
    page.keyboard.press("Shift+ArrowRight")
    painted = page.evaluate("""() => {
        const c = document.getElementById("mask-canvas");
        const a = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 3; i < a.length; i += 4) n += a[i] > 0; return n;
    }""")
    assert painted > 0
    page.click("#mask-undo")
    page.click("#mask-undo")
    assert page.evaluate("""() => {
        const c = document.getElementById("mask-canvas");
        return c.getContext("2d").getImageData(0, 0, c.width, c.height).data.every((v, i) => i % 4 !== 3 || v === 0);
    }""")

    for tab in TABS:  # every shown control has a label
        page.click(f"#tab-{tab}")
        unlabelled = page.evaluate("""() => [...document.querySelectorAll("#job-form :is(input, select, textarea)")]
            .filter(el => el.offsetParent !== null && !el.labels.length && !el.getAttribute("aria-label"))
            .map(el => el.id)""")
        assert unlabelled == [], (tab, unlabelled)


def test_cancel_a_running_job(page):
    page.fill("#steps", "200")
    page.click("#submit")
    page.wait_for_function("document.getElementById('progress').value > 0")
    page.click("#cancel")
    page.wait_for_function("document.getElementById('job-status').textContent === 'Cancelled'")
    assert page.locator("#gallery li").count() == 0
    assert page.is_enabled("#submit")


def test_screenshot_of_every_tab(page, tmp_path):
    """Each tab after running its own task: its result first in the gallery, its last x0 preview
    and "Done" in the progress panel (the inpaint tab with its painted mask)."""
    out = FIGURES if os.environ.get("DITKIT_UPDATE_SCREENSHOTS") == "1" else tmp_path
    for tab in TABS:
        page.click(f"#tab-{tab}")
        assert page.get_attribute(f"#tab-{tab}", "aria-selected") == "true"
        assert page.locator("#form-error").is_hidden(), page.inner_text("#form-error")  # a model serves each tab
        if tab != "generate":
            page.wait_for_function("document.getElementById('image-canvas').width > 0")
        if tab == "inpaint":  # a stroke over the blue square of the sample scene
            box = page.locator("#mask-canvas").bounding_box()
            page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.4)
            page.mouse.down()
            page.mouse.move(box["x"] + box["width"] * 0.8, box["y"] + box["height"] * 0.6, steps=4)
            page.mouse.up()
        page.fill("#steps", "12")
        page.fill("#seed", "3")
        before = page.locator("#gallery li").count()
        page.click("#submit")
        page.wait_for_function(f"document.querySelectorAll('#gallery li').length > {before}")
        card = page.locator("#gallery li").first
        assert card.inner_text().startswith(tab)
        card.locator("img").evaluate("img => img.decode()")  # loaded before the picture is taken
        assert page.is_visible("#preview") and page.inner_text("#job-status").startswith("Done")
        path = out / f"serve-{tab}.png"
        page.screenshot(path=str(path), full_page=True)
        assert Image.open(path).size[0] == 1100
