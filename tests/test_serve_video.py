"""ditkit serve's task "video" (issue 29): the job API through FastAPI's test client, and the
page's Video tab in Chromium. A tiny random VideoDiT (4 frames of 32x32, 2 steps) is served next
to a tiny image model, so every job takes a fraction of a second once the text encoder is loaded.

The browser tests start `python -m ditkit serve` with the two model folders; with
DITKIT_UPDATE_SCREENSHOTS=1 the screenshot of the Video tab replaces docs/figures/serve-video.png,
and DITKIT_SERVE_VIDEO_MODEL=<model folder> serves that folder as "shapes-video" instead of the
tiny model (a trained model makes a picture worth showing; docs/serving.md has the command).
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

import ditkit  # noqa: E402
from ditkit.core.video_io import mp4_frames, read_video, write_video  # noqa: E402
from ditkit.serve.app import create_app  # noqa: E402
from ditkit.serve.settings import ServeSettings  # noqa: E402
from ditkit.serve.worker import preview_png  # noqa: E402

from conftest import save_tiny_video_model, scene_image, tiny_folder  # noqa: E402

FRAMES, SIZE = 4, 32  # the tiny video model's clip length and frame side
IMAGE, VIDEO = "tiny-image", "tiny-video"  # the served names (a folder is served under its last component)
PROMPT = "a red circle moving to the right"
SCENE_PROMPT = "a red circle moving up and a blue square standing still"  # the page's first sample scene, animated
VID = {"task": "video", "prompt": PROMPT, "steps": 2, "seed": 3}


def save_video_model(folder: Path) -> Path:
    return save_tiny_video_model(folder, FRAMES, SIZE)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("serve-video")
    return tiny_folder(root, IMAGE), save_video_model(root / VIDEO)


@pytest.fixture(scope="module")
def pipes(model_dirs):
    image_dir, video_dir = model_dirs
    return {IMAGE: ditkit.load(image_dir), VIDEO: ditkit.load(video_dir)}  # the image model first


@pytest.fixture
def make_client(pipes):
    made = []

    def make(**settings):
        app = create_app(pipes, ServeSettings(**settings))
        made.append(app)
        return TestClient(app)

    yield make
    for app in made:
        app.state.service.close()


@pytest.fixture
def client(make_client):
    return make_client()


def png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def wait(client, job_id, states=("completed", "failed", "cancelled")) -> dict:
    while True:
        view = client.get(f"/v1/jobs/{job_id}").json()
        if view["state"] in states:
            return view
        time.sleep(0.02)


def run_job(client, **body) -> dict:
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    return wait(client, r.json()["id"])


def error_of(r, status: int) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


def gif_frames(data: bytes, tmp_path: Path, name: str = "clip.gif") -> list[np.ndarray]:
    """A served GIF's frames (read back by core.video_io, which expands runs of equal frames)."""
    assert data[:6] == b"GIF89a"
    path = tmp_path / name
    path.write_bytes(data)
    return [np.asarray(f) for f in read_video(path)]


# -- the job API ------------------------------------------------------------------------------------

def test_models_say_which_model_serves_video(client):
    models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert models[VIDEO]["tasks"] == ["video"] and models[VIDEO]["defaults"]["frames"] == FRAMES
    assert "video" not in models[IMAGE]["tasks"] and "frames" not in models[IMAGE]["defaults"]


def test_text_to_video_is_the_librarys_clip_as_a_gif(client, pipes, tmp_path):
    """Two clips of 6 frames (not the model's 4), clip j from seed + j, each GIF byte-identical to
    the library's clip written by core.video_io; the job's default model is the video model."""
    job = run_job(client, **VID, n=2, frames=6)
    assert job["state"] == "completed", job
    assert job["model"] == VIDEO and job["frames"] == 6 and job["seeds"] == [3, 4] and job["progress"] == 1.0
    assert [u.rsplit("/", 1)[1] for u in job["result"]] == ["0.gif", "1.gif"]
    served = []
    for url in job["result"]:
        r = client.get(url)
        assert r.headers["content-type"] == "image/gif"
        frames = gif_frames(r.content, tmp_path)
        assert len(frames) == 6 and all(f.shape == (SIZE, SIZE, 3) for f in frames)
        served.append(r.content)
    clips = pipes[VIDEO].generate_video([PROMPT] * 2, frames=6, steps=2, seed=3)
    for k, clip in enumerate(clips):
        assert write_video(clip, tmp_path / f"lib{k}.gif").read_bytes() == served[k]
    assert served[0] != served[1]  # another seed, another clip

    if job["mp4"]:  # imageio-ffmpeg installed: an MP4 of each clip too
        assert [u.rsplit("/", 1)[1] for u in job["mp4"]] == ["0.mp4", "1.mp4"]
        r = client.get(job["mp4"][0])
        assert r.headers["content-type"] == "video/mp4"
        (tmp_path / "0.mp4").write_bytes(r.content)
        assert len(mp4_frames(tmp_path / "0.mp4", (SIZE, SIZE))) == 6
    error_of(client.get(f"/v1/files/{job['id']}/2.gif"), 404)
    error_of(client.get(f"/v1/files/{job['id']}/0.png"), 404)  # a video job's files are GIFs (and MP4s)


def test_image_to_video_keeps_the_upload_as_frame_zero(client, tmp_path):
    """A multipart upload (64 px) is frame 0 of the clip, resized to the model's 32 px (bicubic, as
    Pipeline.generate_video does). The scene has under 256 colours, so the GIF keeps it exactly."""
    upload = scene_image(64, seed=2)
    r = client.post("/v1/jobs", data={"task": "video", "prompt": PROMPT, "steps": "2", "seed": "5"},
                    files={"image": ("first.png", png(upload), "image/png")})
    assert r.status_code == 202, r.text
    job = wait(client, r.json()["id"])
    assert job["state"] == "completed" and job["frames"] == FRAMES, job
    frames = gif_frames(client.get(job["result"][0]).content, tmp_path)
    assert len(frames) == FRAMES
    assert np.array_equal(frames[0], np.asarray(upload.resize((SIZE, SIZE), Image.BICUBIC)))
    assert not np.array_equal(frames[1], frames[0])  # the rest is sampled


def test_progress_previews_and_cancel(client):
    """A running video job is cancelled between sampler steps; a watched one streams every step
    with a preview of its first clip's frames in a grid (4 frames of 32 px: 128 x 32)."""
    blocker = client.post("/v1/jobs", json={**VID, "steps": 200}).json()["id"]  # holds the worker while we connect
    wait(client, blocker, ("running",))
    watched = client.post("/v1/jobs", json={**VID, "steps": 3}).json()["id"]
    with client.stream("GET", f"/v1/jobs/{watched}/events") as s:
        assert client.post(f"/v1/jobs/{blocker}/cancel").status_code == 200
        text = "".join(s.iter_text())
    cancelled = wait(client, blocker)
    assert cancelled["state"] == "cancelled" and cancelled["result"] == [] and cancelled["mp4"] == []
    events = [(block.split("\n")[0][len("event: "):], json.loads(block.split("\n")[1][len("data: "):]))
              for block in text.strip().split("\n\n")]
    progress = [data for name, data in events if name == "progress"]
    assert [p["step"] for p in progress] == [0, 1, 2, 3] and all(p["steps"] == 3 for p in progress[1:])
    assert [p["progress"] for p in progress] == sorted(p["progress"] for p in progress) and events[-1][0] == "completed"
    preview = Image.open(io.BytesIO(base64.b64decode(progress[-1]["preview"])))
    assert preview.size == (4 * SIZE, SIZE)
    # the grid of a longer clip: rows of 4 frames, a short last row filled with white
    grid = preview_png(torch.zeros(6, 3, 16, 16).uniform_(-1, 1))
    assert Image.open(io.BytesIO(base64.b64decode(grid))).size == (64, 32)


@pytest.mark.parametrize("body, status, param, code", [
    ({"frames": 0}, 400, "frames", "invalid_value"),
    ({"frames": 17}, 400, "frames", "invalid_value"),  # over max_frames (16)
    ({"frames": 2.5}, 400, "frames", "invalid_request"),
    ({"fps": 0}, 400, "fps", "invalid_value"),
    ({"model": IMAGE}, 400, "task", "unsupported_task"),  # an image model makes no video
    ({"model": IMAGE, "image": "FIRST"}, 400, "task", "unsupported_task"),  # nor image-to-video
    ({"task": "generate", "model": VIDEO}, 400, "task", "unsupported_task"),  # a video model makes only videos
    ({"task": "vary", "model": VIDEO, "image": "FIRST"}, 400, "task", "unsupported_task"),
    ({"model": "nope"}, 404, "model", "model_not_found"),
    ({"prompt": None}, 400, "prompt", "missing_prompt"),  # text-to-video needs a prompt
    ({"image": "bm90IGFuIGltYWdl"}, 400, "image", "invalid_image"),  # base64 of "not an image"
    ({"image": "***"}, 400, "image", "invalid_image"),
    ({"n": 9}, 400, "n", "invalid_value"),
    ({"steps": 0}, 400, "steps", "invalid_value"),
    ({"size": "36x36"}, 400, "size", "invalid_size"),  # not a multiple of the patch size
    ({"loop": True}, 400, "loop", "invalid_request"),  # a field the API does not know
])
def test_bad_input_is_a_4xx_before_queueing(client, body, status, param, code):
    first = base64.b64encode(png(scene_image(SIZE))).decode()
    body = {**VID, **{k: first if v == "FIRST" else v for k, v in body.items()}}
    err = error_of(client.post("/v1/jobs", json={k: v for k, v in body.items() if v is not None}), status)
    assert (err["param"], err["code"]) == (param, code), err
    if param == "frames" and code == "invalid_value":
        assert "max_frames" in err["message"] and "1..16" in err["message"]
    assert client.app.state.service.workers[VIDEO].queue_length() == 0


def test_frames_limit_is_a_setting_and_a_bad_upload_is_refused(make_client):
    client = make_client(max_frames=2)
    err = error_of(client.post("/v1/jobs", json=VID), 400)  # the model's 4 frames are over this server's 2
    assert err["param"] == "frames" and "max_frames" in err["message"]
    assert run_job(client, **VID, frames=2)["frames"] == 2
    r = client.post("/v1/jobs", data={"task": "video", "prompt": PROMPT},
                    files={"image": ("x.png", b"\x89PNG\r\n\x1a\n broken", "image/png")})
    assert error_of(r, 400)["param"] == "image"
    with pytest.raises(ValueError, match="max_frames"):
        ServeSettings(max_frames=0)


# -- the page in Chromium -----------------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
STARTUP_S = 180  # loading the models on a busy 2-core machine
JOB_MS = 300_000  # one job of the page (a trained model's 12 steps when DITKIT_SERVE_VIDEO_MODEL is set)
FIGURES = Path(__file__).resolve().parents[1] / "docs" / "figures"


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


@pytest.fixture(scope="module")
def browser_server(model_dirs, tmp_path_factory):
    """`ditkit serve` with the tiny image model and the video model; yields (url, video model name)."""
    if not shutil.which(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing: `make chromium` installs it with apt")
    pytest.importorskip("playwright.sync_api")
    from ditkit.serve import running_server

    image_dir, video_dir = model_dirs
    trained = os.environ.get("DITKIT_SERVE_VIDEO_MODEL")
    if trained:  # served under the embedded model's name: a link named shapes-video to the folder
        video_dir = tmp_path_factory.mktemp("trained") / "shapes-video"
        video_dir.symlink_to(Path(trained).resolve())
    log_path = tmp_path_factory.mktemp("serve-video-log") / "server.log"
    try:
        with running_server(f"{image_dir},{video_dir}", env={"OMP_NUM_THREADS": "1"}, log_path=log_path,
                            startup_timeout=STARTUP_S) as s:
            yield s.url, video_dir.name
    except RuntimeError as e:  # it exited or never answered /healthz: the message holds its log
        pytest.fail(str(e))


@pytest.fixture(scope="module")
def browser(browser_server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, browser_server):
    """The page, wired, on the Video tab; fails the test on an uncaught script error."""
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    page.set_default_timeout(JOB_MS)
    script_errors = []
    page.on("pageerror", lambda error: script_errors.append(str(error)))
    page.goto(browser_server[0] + "/")
    page.wait_for_selector("body[data-ready=true]")
    page.click("#tab-video")
    yield page
    context.close()
    assert not script_errors, script_errors


def run_from_page(page) -> dict:
    """Click the submit button; wait for the result card; return the POST /v1/jobs body sent."""
    before = page.locator("#gallery li").count()
    with page.expect_request(lambda r: r.url.endswith("/v1/jobs") and r.method == "POST") as request:
        page.click("#submit")
    page.wait_for_function(f"document.querySelectorAll('#gallery li').length > {before}")
    return json.loads(request.value.post_data)


def test_video_tab_makes_a_video_that_plays_as_a_gif(page, browser_server, tmp_path):
    url, model = browser_server
    defaults = {m["id"]: m for m in json.loads(get(url + "/v1/models"))["data"]}[model]["defaults"]
    assert page.get_attribute("#tab-video", "aria-selected") == "true" and page.locator("#form-error").is_hidden()
    assert page.input_value("#model") == model and page.input_value("#frames") == str(defaults["frames"])
    assert page.input_value("#first_frame-source") == "none" and page.is_hidden("#image-source")
    assert page.inner_text("#submit") == "Make video"
    unlabelled = page.evaluate("""() => [...document.querySelectorAll("#job-form :is(input, select, textarea)")]
        .filter(el => el.offsetParent !== null && !el.labels.length && !el.getAttribute("aria-label"))
        .map(el => el.id)""")
    assert unlabelled == []

    page.fill("#prompt", "a blue square moving up")
    page.fill("#frames", "3")
    page.fill("#steps", "2")
    page.fill("#seed", "7")
    body = run_from_page(page)
    assert body == {"task": "video", "model": model, "prompt": "a blue square moving up", "steps": 2,
                    "guidance": defaults["guidance"], "seed": 7, "frames": 3, "sampler": defaults["sampler"]}
    card = page.locator("#gallery li").first
    assert card.inner_text().startswith("video · seed 7 · 3 frames")
    assert card.get_by_role("button", name="Use as input").count() == 0  # a video is no input image
    img = card.locator("img")
    side = int(defaults["size"].split("x")[0])
    assert img.evaluate("img => img.decode().then(() => [img.naturalWidth, img.naturalHeight])") == [side, side]
    src = img.get_attribute("src")
    assert src.endswith(".gif")
    assert len(gif_frames(get(url + src), tmp_path)) == 3  # the <img> plays the served GIF
    links = card.locator("a[download]")
    assert links.first.get_attribute("href") == src
    assert links.first.get_attribute("download") == "ditkit-video-seed7.gif"
    if links.count() == 2:  # the server wrote an MP4 too (imageio-ffmpeg installed)
        assert links.nth(1).get_attribute("download") == "ditkit-video-seed7.mp4"
        assert get(url + links.nth(1).get_attribute("href"))[4:8] == b"ftyp"  # an MP4 file
    assert page.inner_text("#job-status") == "Done: 1 video added to the gallery"
    assert page.get_attribute("#preview", "src").startswith("data:image/png;base64,")

    page.fill("#frames", "0")  # the server's refusal, next to the field
    page.click("#submit")
    page.locator("#frames-error").wait_for(state="visible")
    assert "max_frames" in page.inner_text("#frames-error")
    assert page.evaluate("document.activeElement.id") == "frames"


def test_video_tab_animates_a_first_frame_and_screenshot(page, browser_server, tmp_path):
    """A sample scene as the first frame: sent as a PNG data URL, frame 0 of the GIF is that scene
    at the model's size. The screenshot is taken after this run (12 steps, seed 3, as every tab's)."""
    url, model = browser_server
    page.select_option("#first_frame-source", "sample:0")
    page.wait_for_function("document.getElementById('first_frame-canvas').width === 64")
    assert page.is_visible("#first_frame-canvas")
    page.fill("#prompt", SCENE_PROMPT)  # the sample scene's objects, one of them moving
    page.fill("#steps", "12")
    page.fill("#seed", "3")
    body = run_from_page(page)
    assert body["image"].startswith("data:image/png;base64,")
    sent = Image.open(io.BytesIO(base64.b64decode(body["image"].partition(",")[2]))).convert("RGB")
    card = page.locator("#gallery li").first
    card.locator("img").evaluate("img => img.decode()")
    frames = gif_frames(get(url + card.locator("img").get_attribute("src")), tmp_path)
    side = frames[0].shape[0]
    expected = np.asarray(sent.resize((side, side), Image.BICUBIC)).astype(int)
    assert np.abs(frames[0].astype(int) - expected).max() <= 8  # the GIF's palette may round a rare edge colour
    assert page.is_visible("#preview") and page.inner_text("#job-status").startswith("Done")

    out = FIGURES if os.environ.get("DITKIT_UPDATE_SCREENSHOTS") == "1" else tmp_path
    path = out / "serve-video.png"
    page.screenshot(path=str(path), full_page=True)
    assert Image.open(path).size[0] == 1100
