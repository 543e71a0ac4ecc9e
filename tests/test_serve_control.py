"""ditkit serve's control (issue 30): the job API's `control` field and the page's Control tab,
on a tiny 32 px model (2 steps) with a tiny boxes control model made for it."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import save_perturbed_model, save_tiny_control, tiny_folder
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

import ditkit  # noqa: E402
from ditkit.core.control_maps import BOX_LEVELS, draw_boxes, map_image  # noqa: E402
from ditkit.serve.app import create_app  # noqa: E402
from ditkit.serve.settings import ServeSettings  # noqa: E402

MODEL = "base"  # the served id of the tiny model folder root/base
GEN = {"prompt": "a red circle to the left of a blue square", "steps": 2, "seed": 3}


def b64(im: Image.Image) -> str:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-control")
    base = tiny_folder(root, MODEL)
    control = save_tiny_control(base, root / "boxes-control", "boxes", 1)
    other = save_perturbed_model(root / "other", None, depth=1)  # the base's architecture, other weights
    foreign = save_tiny_control(other, root / "other-control", "boxes", 1)
    layout = map_image(draw_boxes([(2, 8, 14, 24), (18, 6, 30, 26)], 32))
    return {"root": root, "base": base, "control": str(control), "foreign": str(foreign), "layout": layout,
            "pipe": ditkit.load(str(base))}


@pytest.fixture
def make_client(setup):
    made = []

    def make(**settings):
        settings.setdefault("control_models", (setup["control"], setup["foreign"]))
        app = create_app({MODEL: setup["pipe"]}, ServeSettings(**settings))
        made.append(app)
        return TestClient(app)

    yield make
    for app in made:
        app.state.service.close()


@pytest.fixture
def client(make_client):
    return make_client()


def wait(client, job_id) -> dict:
    while True:
        view = client.get(f"/v1/jobs/{job_id}").json()
        if view["state"] in ("completed", "failed", "cancelled"):
            return view
        time.sleep(0.02)


def submit(client, **body) -> str:
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    return r.json()["id"]


def result_bytes(client, job_id) -> list[bytes]:
    job = wait(client, job_id)
    assert job["state"] == "completed", job
    return [client.get(url).content for url in job["result"]]


def control(setup, scale=1.0, image=None, **what) -> dict:
    return {**(what or {"model": setup["control"]}), "image": b64(image or setup["layout"]), "scale": scale}


def test_models_list_their_control_models(client, setup):
    (model,) = client.get("/v1/models").json()["data"]
    # both listed folders have this model's architecture (the other one's weights are checked on use)
    assert model["controls"] == [{"id": setup["control"], "condition": "boxes", "kind": None},
                                 {"id": setup["foreign"], "condition": "boxes", "kind": None}]


def test_control_changes_the_image_and_scale_zero_does_not(client, setup):
    plain = result_bytes(client, submit(client, **GEN))
    on = result_bytes(client, submit(client, **GEN, control=[control(setup)]))
    off = result_bytes(client, submit(client, **GEN, control=[control(setup, scale=0.0)]))
    assert off == plain  # scale 0 is the model alone, byte for byte
    assert on != plain
    im = Image.open(io.BytesIO(on[0]))
    assert im.size == (32, 32) and im.format == "PNG"
    # the control makes the same pixels each time; a map of another size is resized to the image's
    again = result_bytes(client, submit(client, **GEN, control=[control(setup)]))
    big = setup["layout"].resize((64, 64), Image.NEAREST)
    with pytest.warns(UserWarning, match="resized"):
        resized_id = submit(client, **GEN, control=[control(setup, image=big)])
    resized = result_bytes(client, resized_id)
    assert again == on == resized
    # n images, each under the one map; as the library makes them (seed + k)
    two = wait(client, submit(client, **GEN, n=2, control=[control(setup)]))
    assert two["state"] == "completed" and two["seeds"] == [3, 4] and len(two["result"]) == 2


def test_a_control_job_runs_alone(make_client, setup):
    """Jobs that would share a batch (same settings, submitted together) do not when one has a
    control: each sampler batch holds one condition. Every image is the one its job makes alone."""
    solo = make_client(batch_wait_ms=0, max_batch=2)
    other_map = map_image(draw_boxes([(16, 2, 30, 14)], 32))
    expect = [result_bytes(solo, submit(solo, **GEN)),
              result_bytes(solo, submit(solo, **GEN, control=[control(setup)])),
              result_bytes(solo, submit(solo, **GEN, control=[control(setup, image=other_map)])),
              result_bytes(solo, submit(solo, **GEN))]
    busy = make_client(batch_wait_ms=10_000, max_batch=2)  # the first job waits for the fourth: a full batch
    worker = busy.app.state.service.workers[MODEL]
    ids = [submit(busy, **GEN), submit(busy, **GEN, control=[control(setup)]),
           submit(busy, **GEN, control=[control(setup, image=other_map)]), submit(busy, **GEN)]
    assert [result_bytes(busy, i) for i in ids] == expect
    assert expect[1] != expect[2]  # the two maps make two images
    # the two plain jobs share a batch (they wait for each other); each control job runs alone
    assert worker.batches_run == 3


def test_form_control_is_json_text(client, setup):
    """In a multipart form, control is one text part holding the JSON list."""
    fields = {"prompt": GEN["prompt"], "steps": "2", "seed": "3", "control": json.dumps([control(setup)])}
    r = client.post("/v1/jobs", files={k: (None, v) for k, v in fields.items()})
    assert r.status_code == 202, r.text
    assert result_bytes(client, r.json()["id"]) == result_bytes(client, submit(client, **GEN, control=[control(setup)]))
    r = client.post("/v1/jobs", files={**{k: (None, v) for k, v in fields.items()}, "control": (None, "[{oops")})
    assert r.status_code == 400 and r.json()["error"]["param"] == "control", r.text


# -- bad input: a 4xx JSON error naming the field, never a 500 -----------------------------------

def bad_cases(setup):
    other_file = base64.b64encode(b"just some text, not a picture").decode()
    return [
        ({"control": [control(setup, kind="depth")]}, "control.0.kind", ["unknown control kind 'depth'",
                                                                         "edges, boxes, seg"]),
        ({"control": [control(setup, kind="boxes")]}, "control.0.kind", [f"{MODEL}-control-boxes",
                                                                         setup["control"]]),
        ({"control": [control(setup, model="/etc")]}, "control.0.model", ["'/etc' is not served",
                                                                         setup["control"]]),
        ({"control": [{**control(setup), "kind": "boxes"}]}, "control.0", ["exactly one of kind"]),
        ({"control": [{"image": b64(setup["layout"])}]}, "control.0", ["exactly one of kind"]),
        ({"control": [{**control(setup), "image": other_file}]}, "control.0.image", ["not an image"]),
        ({"control": [{**control(setup), "image": "%%% not base64"}]}, "control.0.image", ["not valid base64"]),
        ({"control": [{"model": setup["control"]}]}, "control.0.image", ["Field required"]),
        ({"control": [control(setup, scale=-1)]}, "control.0.scale", ["control scale", ">= 0"]),
        ({"control": [control(setup, scale="lots")]}, "control.0.scale", ["number"]),
        ({"control": [control(setup, model=setup["foreign"])]}, "control", ["is for the base", f"not '{MODEL}'",
                                                                            "weights sha256"]),
        ({"control": [control(setup)] * 5}, "control", ["at most 4 controls"]),
        ({"control": []}, "control", ["non-empty list"]),
        ({"control": "boxes"}, "control", ["list"]),
        ({"control": [control(setup)], "task": "vary", "image": b64(setup["layout"])}, "control",
         ["task 'generate' only"]),
    ]


def test_each_bad_control_is_a_4xx_naming_the_field(client, setup):
    for extra, param, needles in bad_cases(setup):
        r = client.post("/v1/jobs", json={**GEN, **extra})
        assert 400 <= r.status_code < 500, (extra, r.status_code, r.text)
        err = r.json()["error"]
        assert err["param"] == param, (param, err)
        for needle in needles:
            assert needle in err["message"], (needle, err["message"])
        assert str(setup["base"]) not in err["message"]  # the server's model folder never reaches a client
    # NaN and infinity (Python's JSON parses them; the check refuses them)
    for value in ("NaN", "Infinity"):
        body = json.dumps({**GEN, "control": [control(setup)]}).replace('"scale": 1.0', f'"scale": {value}')
        r = client.post("/v1/jobs", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and "finite" in r.json()["error"]["message"], r.text
    assert client.get("/metrics").status_code == 200 and client.get("/healthz").json()["status"] == "ok"


def test_control_models_are_only_those_the_server_lists(make_client, setup):
    """A request cannot open a control folder the server was not started with."""
    client = make_client(control_models=())
    assert client.get("/v1/models").json()["data"][0]["controls"] == []
    r = client.post("/v1/jobs", json={**GEN, "control": [control(setup)]})
    assert r.status_code == 400 and "not served" in r.json()["error"]["message"]
    with pytest.raises(ValueError, match="control_models"):
        ServeSettings(control_models="runs/control")


# -- the page's Control tab in a real browser ---------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
JOB_MS = 120_000
FIGURES = Path(__file__).resolve().parents[1] / "docs" / "figures"


def http_json(url: str, body: dict | None = None) -> dict:
    import urllib.request

    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def http_result(server: str, body: dict) -> bytes:
    """The first image of a job run through the HTTP API."""
    import urllib.request

    job_id = http_json(server + "/v1/jobs", body)["id"]
    while (job := http_json(f"{server}/v1/jobs/{job_id}"))["state"] not in ("completed", "failed", "cancelled"):
        time.sleep(0.02)
    assert job["state"] == "completed", job
    with urllib.request.urlopen(server + job["result"][0], timeout=30) as response:
        return response.read()


@contextlib.contextmanager
def serving(pipes: dict, settings: ServeSettings):
    """The app on uvicorn in a thread, on a free loopback port (the command line cannot name a
    control folder, ServeSettings can); yields its base URL."""
    uvicorn = pytest.importorskip("uvicorn")
    app = create_app(pipes, settings)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            assert thread.is_alive(), "uvicorn did not start"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        app.state.service.close()
        sock.close()


@pytest.fixture(scope="module")
def server(setup):
    with serving({MODEL: setup["pipe"]}, ServeSettings(control_models=(setup["control"],))) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    if not shutil.which(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing: `make test` installs Chromium with apt")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@contextlib.contextmanager
def open_page(browser, url: str):
    """The page, loaded and wired; fails on an uncaught script error."""
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    page.set_default_timeout(JOB_MS)
    script_errors = []
    page.on("pageerror", lambda error: script_errors.append(str(error)))
    page.goto(url + "/")
    page.wait_for_selector("body[data-ready=true]")
    yield page
    context.close()
    assert not script_errors, script_errors


@pytest.fixture
def page(browser, server):
    with open_page(browser, server) as page:
        yield page


def drag(page, selector, a, b):
    """Drag from a to b, each (x, y) as fractions of the element's box."""
    box = page.locator(selector).bounding_box()
    page.mouse.move(box["x"] + box["width"] * a[0], box["y"] + box["height"] * a[1])
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * b[0], box["y"] + box["height"] * b[1], steps=5)
    page.mouse.up()


def test_draw_a_box_and_generate(page, server, setup):
    page.click("#tab-control")
    assert page.get_attribute("#tab-control", "aria-selected") == "true"
    assert page.input_value("#control-model") == setup["control"]  # /v1/models' control for this model and kind
    assert page.inner_text("#submit") == "Generate"
    page.fill("#steps", "2")
    page.fill("#seed", "3")

    page.click("#submit")  # nothing drawn yet: said next to the map, nothing sent
    page.locator("#control-image-error").wait_for(state="visible")
    assert "box" in page.inner_text("#control-image-error") and page.locator("#job").is_hidden()

    drag(page, "#control-canvas", (0.1, 0.25), (0.45, 0.75))
    assert page.locator("#box-list li").count() == 1
    assert "Box 1 (gray 255" in page.inner_text("#box-list") and "red circle" in page.inner_text("#box-list")

    with page.expect_request(lambda r: r.url.endswith("/v1/jobs") and r.method == "POST") as request:
        page.click("#submit")
    body = json.loads(request.value.post_data)
    assert body["task"] == "generate" and body["model"] == MODEL and body["steps"] == 2 and body["seed"] == 3
    (item,) = body["control"]
    assert item["model"] == setup["control"] and item["scale"] == 1 and "kind" not in item
    sent = np.asarray(Image.open(io.BytesIO(base64.b64decode(item["image"].partition(",")[2]))).convert("L"))
    assert sent.shape == (32, 32)  # the model's size: one map pixel per image pixel
    assert set(np.unique(sent)) == {0, BOX_LEVELS[0]}  # the label map: box 1 white on black, hard edges
    ys, xs = np.nonzero(sent)
    assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == (3, 14, 8, 24)  # where the drag went

    page.wait_for_selector("#gallery li")
    card = page.locator("#gallery li").first
    assert card.inner_text().startswith("control") and "seed 3" in card.inner_text()
    url = card.locator("img").get_attribute("src")
    size = card.locator("img").evaluate("img => img.decode().then(() => [img.naturalWidth, img.naturalHeight])")
    assert size == [32, 32]
    import urllib.request

    with urllib.request.urlopen(server + url, timeout=30) as response:
        shown = response.read()
    assert shown == http_result(server, body)  # the page shows the control job's own image
    assert shown != http_result(server, {k: v for k, v in body.items() if k != "control"})  # the box mattered

    page.click("#control-clear")
    assert page.locator("#box-list li").count() == 0


def test_control_tab_kinds_keyboard_and_labels(page):
    page.click("#tab-control")
    page.focus("#control-canvas")  # the keyboard draws too: Space at each corner
    page.keyboard.press("Space")
    for _ in range(3):
        page.keyboard.press("Shift+ArrowRight")
        page.keyboard.press("Shift+ArrowDown")
    page.keyboard.press("Space")
    assert page.locator("#box-list li").count() == 1 and "12×12 px" in page.inner_text("#box-list")
    page.click("#control-undo")
    assert page.locator("#box-list li").count() == 0

    page.check('input[name="control-kind"][value="edges"]')  # no edges control here: the page says so
    assert "no edges control model" in page.inner_text("#control-model-help")
    assert "Upload an edge map" in page.inner_text("#control-help") and page.is_hidden("#control-undo")
    drag(page, "#control-canvas", (0.2, 0.2), (0.6, 0.6))  # edges are uploaded, not drawn
    assert page.locator("#box-list li").count() == 0
    unlabelled = page.evaluate("""() => [...document.querySelectorAll("#job-form :is(input, select, textarea)")]
        .filter(el => el.offsetParent !== null && !el.labels.length && !el.getAttribute("aria-label"))
        .map(el => el.id)""")
    assert unlabelled == []


def test_uploaded_map_and_a_server_error_next_to_its_field(page, tmp_path, setup):
    page.click("#tab-control")
    path = tmp_path / "layout.png"
    setup["layout"].save(path)
    page.fill("#steps", "2")
    page.check('input[name="control-kind"][value="seg"]')  # a kind with no control model for this model
    page.set_input_files("#control-file", str(path))
    with page.expect_request(lambda r: r.url.endswith("/v1/jobs") and r.method == "POST") as request:
        page.click("#submit")
    item = json.loads(request.value.post_data)["control"][0]
    assert item["kind"] == "seg" and item["image"].partition(",")[2] == base64.b64encode(path.read_bytes()).decode()
    error = page.locator("#control-error")
    error.wait_for(state="visible")
    assert f"{MODEL}-control-seg" in error.inner_text()  # the server's message, next to the kind
    assert page.locator("#gallery li").count() == 0


def test_screenshot_of_the_control_tab(browser, setup, tmp_path):
    """The Control tab with a drawn two-box layout, box 1 left for the red circle, box 2 right for
    the blue square, and its result. With DITKIT_SERVE_CONTROL_MODEL (a boxes control model
    folder for shapes-64, e.g. runs/control-boxes/control) it serves shapes-64 with it, 25 steps,
    and DITKIT_UPDATE_SCREENSHOTS=1 writes docs/figures/serve-control.png; else the tiny model."""
    folder = os.environ.get("DITKIT_SERVE_CONTROL_MODEL")
    if folder:
        pipes, control_model, steps = {"shapes-64": ditkit.load("shapes-64")}, folder, 25
    else:
        pipes, control_model, steps = {MODEL: setup["pipe"]}, setup["control"], 2
    update = folder and os.environ.get("DITKIT_UPDATE_SCREENSHOTS") == "1"
    path = (FIGURES if update else tmp_path) / "serve-control.png"
    with serving(pipes, ServeSettings(control_models=(control_model,))) as url, open_page(browser, url) as page:
        page.click("#tab-control")
        assert page.input_value("#control-model") == control_model
        page.fill("#steps", str(steps))
        page.fill("#seed", "2")
        drag(page, "#control-canvas", (0.1, 0.31), (0.41, 0.63))
        drag(page, "#control-canvas", (0.56, 0.28), (0.91, 0.63))
        assert page.locator("#box-list li").count() == 2
        page.click("#submit")
        page.wait_for_selector("#gallery li")
        page.locator("#gallery li img").first.evaluate("img => img.decode()")  # loaded before the picture
        assert page.inner_text("#job-status").startswith("Done")
        page.screenshot(path=str(path), full_page=True)
    assert Image.open(path).size[0] == 1100
