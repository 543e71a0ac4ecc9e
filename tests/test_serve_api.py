"""ditkit serve: the HTTP API through FastAPI's test client (shapes-64, 2 steps)."""

from __future__ import annotations

import base64
import io
import json
import time

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

import ditkit  # noqa: E402
from ditkit.core.sampling import SAMPLER_NAMES  # noqa: E402
from ditkit.serve.app import create_app  # noqa: E402
from ditkit.serve.settings import ServeSettings  # noqa: E402

GEN = {"prompt": "a red circle", "steps": 2, "seed": 3}


@pytest.fixture(scope="module")
def pipe():
    return ditkit.load("shapes-64")


@pytest.fixture(scope="module")
def upscaler():
    return ditkit.load("shapes-upscale")


@pytest.fixture
def make_client(pipe):
    made = []

    def make(**settings):
        clock = settings.pop("clock", time.monotonic)
        pipes = settings.pop("pipes", None) or {"shapes-64": pipe}
        app = create_app(pipes, ServeSettings(**settings), clock=clock)
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


def b64(im: Image.Image) -> str:
    return base64.b64encode(png(im)).decode()


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


def error_of(r, status):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


def test_health_models_metrics_docs(client):
    assert client.get("/healthz").json()["status"] == "ok"
    (model,) = client.get("/v1/models").json()["data"]
    assert model["id"] == "shapes-64" and "generate" in model["tasks"] and model["defaults"]["size"] == "64x64"
    assert model["samplers"] == list(SAMPLER_NAMES) and model["defaults"]["sampler"] in model["samplers"]
    assert "ditkit_queue_length" in client.get("/metrics").text
    assert "/v1/jobs" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 200
    error_of(client.get("/static/../../api.py"), 404)
    error_of(client.get("/nowhere"), 404)


def test_job_lifecycle_files_and_events(client):
    r = client.post("/v1/jobs", json={**GEN, "n": 2})
    assert r.status_code == 202 and set(r.json()) == {"id", "state", "queue_position"}
    job = wait(client, r.json()["id"])
    assert job["state"] == "completed" and job["progress"] == 1.0 and job["seeds"] == [3, 4]
    images = [Image.open(io.BytesIO(client.get(u).content)) for u in job["result"]]
    assert [im.size for im in images] == [(64, 64)] * 2
    with client.stream("GET", f"/v1/jobs/{job['id']}/events") as s:
        text = "".join(s.iter_text())
    names = [line[7:] for line in text.splitlines() if line.startswith("event: ")]
    assert names[0] == "queued" and names[-1] == "completed" and "progress" in names
    error_of(client.get(f"/v1/files/{job['id']}/7.png"), 404)
    error_of(client.get(f"/v1/files/{job['id']}/..%2Fx.png"), 404)
    err = error_of(client.post(f"/v1/jobs/{job['id']}/cancel"), 409)  # cancel of a finished job
    assert "completed" in err["message"]


def test_previews_only_while_a_stream_is_open(client, monkeypatch):
    """No stream open: no preview is encoded at all; a stream open from the start gets one per step."""
    from ditkit.serve import worker as worker_module
    calls = []
    real = worker_module.preview_png
    monkeypatch.setattr(worker_module, "preview_png", lambda x0: calls.append(1) or real(x0))
    job = run_job(client, **{**GEN, "steps": 3})
    assert job["state"] == "completed" and calls == []
    blocker = client.post("/v1/jobs", json={**GEN, "steps": 200}).json()["id"]  # holds the worker while we connect
    wait(client, blocker, ("running",))
    watched = client.post("/v1/jobs", json={**GEN, "steps": 3, "prompt": "a blue square"}).json()["id"]
    with client.stream("GET", f"/v1/jobs/{watched}/events") as s:
        client.post(f"/v1/jobs/{blocker}/cancel")
        text = "".join(s.iter_text())
    previews = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ") and "preview" in line]
    assert len(calls) == len(previews) == 3  # sampler steps 1..3 of the watched job only
    assert Image.open(io.BytesIO(base64.b64decode(previews[-1]["preview"]))).size == (64, 64)
    assert client.app.state.service.store.get(watched).watchers == 0  # the closed stream stopped counting


def test_batch_wait_collects_jobs_submitted_apart(make_client):
    """With batch_wait_ms, a job submitted a moment after another joins its sampler batch."""
    client = make_client(max_batch=4, batch_wait_ms=2000)
    worker = client.app.state.service.workers["shapes-64"]
    before = worker.batches_run
    first = client.post("/v1/jobs", json=GEN).json()["id"]
    time.sleep(0.05)
    second = client.post("/v1/jobs", json={**GEN, "seed": 9}).json()["id"]
    assert wait(client, first)["state"] == wait(client, second)["state"] == "completed"
    assert worker.batches_run == before + 1  # one shared batch
    full = make_client(max_batch=1, batch_wait_ms=60_000 / 10)  # a full batch never waits
    assert run_job(full, **GEN)["state"] == "completed"


def test_guidance_limit_and_error_names_model_not_folder(make_client, monkeypatch):
    client = make_client(max_guidance=10)
    err = error_of(client.post("/v1/jobs", json={**GEN, "guidance": 1e30}), 400)
    assert err["param"] == "guidance" and "max_guidance" in err["message"] and "10" in err["message"]
    pipe = client.app.state.service.pipes["shapes-64"]

    def non_finite(request, callback=None):
        from ditkit.engine.generate import check_finite
        return check_finite(torch.full((1, 3, 64, 64), float("nan")), pipe.engine.source)

    monkeypatch.setattr(pipe.engine, "generate", non_finite)  # an instance attribute: this pipeline only
    job = run_job(client, **{**GEN, "guidance": 9.0})
    message = job["error"]["message"]
    assert job["state"] == "failed" and "non-finite" in message and "shapes-64" in message
    assert str(pipe.source) not in message and "/" not in message


def test_cancel_is_atomic_with_finishing(client):
    """The check and the cancel happen under the job's lock: a finished job refuses (409), and a
    job that finishes after an accepted cancel ends cancelled, never completed."""
    svc = client.app.state.service
    worker = svc.workers["shapes-64"]
    from ditkit.serve.jobs import Job
    done = Job("generate", "shapes-64", {}, [1])
    svc.store.add(done)
    svc.store.finish(done, "completed", [b"png"])
    assert worker.cancel(done) is False and not done.cancel_requested
    error_of(client.post(f"/v1/jobs/{done.id}/cancel"), 409)
    running = Job("generate", "shapes-64", {}, [2], state="running")
    svc.store.add(running)
    assert worker.cancel(running) is True
    svc.store.finish(running, "completed", [b"png"])  # the worker finishing just after the cancel
    assert running.state == "cancelled" and running.images == []
    assert Job("generate", "m", {}, [1]) != Job("generate", "m", {}, [1])  # identity, not field equality


def events_of(client, job_id) -> list[tuple[str, dict]]:
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as s:
        text = "".join(s.iter_text())
    names = [line[7:] for line in text.splitlines() if line.startswith("event: ")]
    return list(zip(names, [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]))


def check_progress(events, steps: int) -> list[int]:
    """A start event (step 0, progress 0), then one per sampler step counting 1..steps (restarting
    per sampler batch or per image); progress grows to 1. Returns the steps seen."""
    progress = [data for name, data in events if name == "progress"]
    assert progress[0]["step"] == 0 and progress[0]["progress"] == 0.0
    assert all(p["steps"] == steps and p["unit"] == "step" and 1 <= p["step"] <= steps for p in progress[1:])
    values = [p["progress"] for p in progress]
    assert values == sorted(values) and values[-1] == 1.0
    return [p["step"] for p in progress]


def test_progress_counts_sampler_steps_of_every_task(client):
    """generate and the editing tasks alike: step s of the sampler's S steps, progress over the job."""
    job = run_job(client, **GEN)
    assert (job["step"], job["steps"], job["unit"]) == (2, 2, "step")
    assert check_progress(events_of(client, job["id"]), 2) == [0, 1, 2]
    image = b64(Image.new("RGB", (64, 64), "white"))
    # fusion, two images one after the other: strength 0.5 of 3 steps samples 2 steps each
    job = run_job(client, task="fuse", image=image, image_b=image, steps=3, n=2)
    assert job["state"] == "completed" and (job["step"], job["steps"], job["unit"]) == (2, 2, "step")
    events = events_of(client, job["id"])
    assert check_progress(events, 2) == [0, 1, 2, 1, 2]
    assert [d["progress"] for n, d in events if n == "progress"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    job = run_job(client, task="vary", image=image, steps=4, n=3)  # one batched call: strength 0.6 of 4 = 3 steps
    assert check_progress(events_of(client, job["id"]), 3) == [0, 1, 2, 3]
    job = run_job(client, task="edit", image=image, source_prompt="a white square", prompt="a red circle", steps=3)
    assert check_progress(events_of(client, job["id"]), 6) == list(range(7))  # 3 inversion steps, then 3 sampling
    mask = b64(Image.fromarray(np.pad(np.full((32, 32), 255, np.uint8), 16)))
    job = run_job(client, task="inpaint", image=image, mask=mask, steps=3, n=2, seed=1)
    assert check_progress(events_of(client, job["id"]), 3) == [0, 1, 2, 3, 1, 2, 3]


def test_editing_job_previews_while_watched(client):
    """An editing job makes a preview of its x0 estimate at each step while a stream follows it."""
    blocker = client.post("/v1/jobs", json={**GEN, "steps": 200}).json()["id"]  # holds the worker while we connect
    wait(client, blocker, ("running",))
    image = b64(Image.new("RGB", (64, 64), "white"))
    watched = client.post("/v1/jobs", json={"task": "outpaint", "image": image, "right": 16, "steps": 3}).json()["id"]
    with client.stream("GET", f"/v1/jobs/{watched}/events") as s:
        client.post(f"/v1/jobs/{blocker}/cancel")
        text = "".join(s.iter_text())
    previews = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ") and "preview" in line]
    assert [p["step"] for p in previews] == [1, 2, 3]
    # the working canvas of the outpaint (64x80 at the model's scale), not the final result
    assert Image.open(io.BytesIO(base64.b64decode(previews[-1]["preview"]))).size == (80, 64)


def test_cancel_of_an_editing_job_lands_between_sampler_steps(client):
    image = b64(Image.new("RGB", (64, 64), "white"))
    mask = b64(Image.fromarray(np.pad(np.full((32, 32), 255, np.uint8), 16)))
    job_id = client.post("/v1/jobs", json={"task": "inpaint", "image": image, "mask": mask, "steps": 200}).json()["id"]
    while client.get(f"/v1/jobs/{job_id}").json()["step"] < 1:  # running, past its first sampler step
        time.sleep(0.01)
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    view = wait(client, job_id)
    assert view["state"] == "cancelled" and 1 <= view["step"] < 200 and view["result"] == []
    last = [d for n, d in events_of(client, job_id) if n == "progress"][-1]
    assert last["step"] < 200 and last["progress"] < 1
    assert run_job(client, **GEN)["state"] == "completed"  # the worker still serves


def test_multipart_inpaint_job_matches_json_and_the_library(client, pipe):
    """POST /v1/jobs as multipart/form-data: text fields typed as the JSON body's, images as files;
    the same request in JSON and a direct Pipeline.inpaint give the same pixels."""
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    fill = np.zeros((64, 64), np.uint8)
    fill[8:40, 24:56] = 255  # ditkit's convention: white where to fill
    mask = Image.fromarray(fill)
    fields = {"task": "inpaint", "prompt": "a red circle", "steps": "3", "seed": "5", "guidance": "3.5", "n": ""}
    r = client.post("/v1/jobs", data=fields, files=[("image", ("scene.png", png(image), "image/png")),
                                                    ("mask", ("mask.png", png(mask), "image/png"))])
    assert r.status_code == 202, r.text
    job = wait(client, r.json()["id"])
    assert job["state"] == "completed" and job["seeds"] == [5]
    from_form = client.get(job["result"][0]).content
    from_json = run_job(client, task="inpaint", prompt="a red circle", steps=3, seed=5, guidance=3.5, image=b64(image),
                        mask=b64(mask))
    assert client.get(from_json["result"][0]).content == from_form
    result = np.asarray(Image.open(io.BytesIO(from_form)).convert("RGB"))
    kept = fill == 0
    assert (result[kept] == np.asarray(image)[kept]).all() and not (result[~kept] == np.asarray(image)[~kept]).all()
    direct = pipe.inpaint(image, mask, "a red circle", seed=5, steps=3, guidance=3.5)  # no callback, no previews
    assert np.array_equal(np.asarray(direct), result)
    two = client.post("/v1/jobs", data={"task": "fuse", "steps": "2", "seed": "1"},
                      files=[("images", ("a.png", png(image), "image/png")),
                             ("images", ("b.png", png(mask.convert("RGB")), "image/png"))])
    assert wait(client, two.json()["id"])["state"] == "completed"  # repeated images: image and image_b


def test_multipart_job_bad_inputs(make_client):
    client = make_client(max_upload_bytes=4096)
    small = png(Image.new("RGB", (64, 64), "white"))
    noise = png(Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)))
    assert len(small) < 4096 < len(noise)
    files = {"image": ("a.png", small, "image/png")}
    err = error_of(client.post("/v1/jobs", content=b"task=vary", headers={"content-type": "text/plain"}), 400)
    assert err["code"] == "invalid_content_type" and "multipart/form-data" in err["message"]
    urlencoded = client.post("/v1/jobs", data={"task": "vary"})  # a form without files
    assert error_of(urlencoded, 400)["code"] == "invalid_content_type"
    err = error_of(client.post("/v1/jobs", data={"task": "vary"}, files={"image": ("a.png", b"not a png", "image/png")}),
                   400)
    assert (err["param"], err["code"]) == ("image", "invalid_image")
    err = error_of(client.post("/v1/jobs", data={"task": "vary"}, files={"image": ("a.png", noise, "image/png")}), 413)
    assert err["param"] == "image" and "max_upload_bytes" in err["message"]
    truncated = client.post("/v1/jobs", data={"task": "vary"}, files={"image": ("a.png", small[:60], "image/png")})
    assert error_of(truncated, 400)["param"] == "image"
    for form, param in [({"task": "vary", "steps": "abc"}, "steps"), ({"task": "vary", "steps": "0"}, "steps"),
                        ({"task": "vary", "guidance": "nan"}, "guidance"), ({"task": "vary", "stpes": "2"}, "stpes"),
                        ({"task": "vary", "image_b": "abc"}, "image_b"), ({"task": "vary", "steps": "2"}, None)]:
        if param is None:  # a file under a name that is not an image field
            r = client.post("/v1/jobs", data=form, files={"image": files["image"], "photo": files["image"]})
            param = "photo"
        else:
            r = client.post("/v1/jobs", data=form, files=files)
        assert error_of(r, 400)["param"] == param, r.text
    three = [("images", ("a.png", small, "image/png"))] * 3
    assert error_of(client.post("/v1/jobs", data={"task": "fuse"}, files=three), 400)["code"] == "too_many_images"
    other = png(Image.new("L", (32, 32)))
    err = error_of(client.post("/v1/jobs", data={"task": "inpaint"},
                               files={"image": files["image"], "mask": ("m.png", other, "image/png")}), 400)
    assert err["param"] == "mask" and "32x32" in err["message"]
    assert error_of(client.post("/v1/jobs", data={"task": "inpaint"}, files=files), 400)["param"] == "mask"
    assert client.app.state.service.store.all() == []


def test_limits_of_long_editing_jobs(make_client, pipe, upscaler):
    """Results that follow the input's size are bounded before queueing: an outpaint's canvas
    (max_output_pixels, and at most twice the image), an upscale's side (max_size)."""
    client = make_client(pipes={"shapes-64": pipe, "shapes-upscale": upscaler}, max_output_pixels=64 * 80 - 1)
    image = b64(Image.new("RGB", (64, 64), "white"))
    err = error_of(client.post("/v1/jobs", json={"task": "outpaint", "image": image, "right": 16}), 400)
    assert err["code"] == "output_too_large" and "max_output_pixels" in err["message"] and "80x64" in err["message"]
    err = error_of(client.post("/v1/jobs", json={"task": "outpaint", "image": image, "right": 100}), 400)
    assert "at most double" in err["message"]
    err = error_of(client.post("/v1/jobs", json={"task": "outpaint", "image": image}), 400)
    assert "at least one" in err["message"]
    assert client.app.state.service.store.all() == []
    client = make_client(pipes={"shapes-64": pipe, "shapes-upscale": upscaler})  # the default limits
    big = b64(Image.new("RGB", (260, 200), "white"))
    err = error_of(client.post("/v1/jobs", json={"task": "upscale", "image": big}), 400)
    assert err["param"] == "image" and "max_size" in err["message"] and "520x400" in err["message"]
    assert client.app.state.service.store.all() == []
    largest = client.post("/v1/jobs", json={"task": "upscale", "image": b64(Image.new("RGB", (256, 256))),
                                            "steps": 200})
    assert largest.status_code == 202  # 512 px a side is allowed (stopped: running it is not this test's point)
    client.post(f"/v1/jobs/{largest.json()['id']}/cancel")
    assert wait(client, largest.json()["id"])["state"] == "cancelled"


def test_same_request_same_png_alone_or_batched(make_client):
    """Fixed-shape batches: a job's PNGs are byte-identical alone or batched with other prompts."""
    client = make_client(max_batch=4)
    blocker = client.post("/v1/jobs", json={**GEN, "steps": 200}).json()["id"]
    wait(client, blocker, ("running",))
    worker = client.app.state.service.workers["shapes-64"]
    other = client.post("/v1/jobs", json={"prompt": "two big blue squares above a small green triangle", "steps": 2,
                                          "n": 2, "seed": 11}).json()["id"]
    mine = client.post("/v1/jobs", json={**GEN, "seed": 5}).json()["id"]
    before = worker.batches_run
    client.post(f"/v1/jobs/{blocker}/cancel")
    assert wait(client, blocker)["state"] == "cancelled"
    batched = wait(client, mine)
    assert wait(client, other)["state"] == "completed" and worker.batches_run == before + 1  # one shared batch
    alone = run_job(client, **{**GEN, "seed": 5})
    assert client.get(batched["result"][0]).content == client.get(alone["result"][0]).content


def test_cancel_running_job_stops_between_steps(client):
    job_id = client.post("/v1/jobs", json={**GEN, "steps": 200}).json()["id"]
    wait(client, job_id, ("running",))
    while client.get(f"/v1/jobs/{job_id}").json()["step"] < 1:
        time.sleep(0.01)
    client.post(f"/v1/jobs/{job_id}/cancel")
    view = wait(client, job_id)
    assert view["state"] == "cancelled" and view["step"] < 200 and view["result"] == []
    assert run_job(client, **GEN)["state"] == "completed"  # the worker still serves


def test_full_queue_is_429_with_retry_after(make_client):
    client = make_client(max_queue=1)
    running = client.post("/v1/jobs", json={**GEN, "steps": 200}).json()["id"]
    wait(client, running, ("running",))
    queued = client.post("/v1/jobs", json=GEN)
    assert queued.status_code == 202
    r = client.post("/v1/jobs", json=GEN)
    error_of(r, 429)
    assert r.headers["retry-after"]
    assert client.post(f"/v1/jobs/{queued.json()['id']}/cancel").json()["state"] == "cancelled"
    client.post(f"/v1/jobs/{running}/cancel")
    wait(client, running)


def test_failing_job_fails_alone(client, monkeypatch):
    pipe = client.app.state.service.pipes["shapes-64"]
    real = pipe.vary

    def broken(*a, **k):
        raise RuntimeError("injected failure")

    monkeypatch.setattr(pipe, "vary", broken)
    image = b64(Image.new("RGB", (64, 64), "white"))
    bad = run_job(client, task="vary", image=image, steps=2)
    assert bad["state"] == "failed" and "injected failure" in bad["error"]["message"]
    monkeypatch.setattr(pipe, "vary", real)
    assert run_job(client, **GEN)["state"] == "completed"


def test_results_expire_after_ttl(make_client):
    now = [0.0]
    client = make_client(results_ttl=10, clock=lambda: now[0])
    job = run_job(client, **GEN)
    assert client.get(job["result"][0]).status_code == 200
    now[0] = 11.0
    error_of(client.get(f"/v1/jobs/{job['id']}"), 404)
    error_of(client.get(job["result"][0]), 404)
    store = client.app.state.service.store
    kept = run_job(client, **GEN)
    now[0] = 22.0
    client.post("/v1/images/generations", json={**GEN, "n": 1})  # a client that never looks jobs up
    assert kept["id"] not in {j.id for j in store.all()}  # expired jobs go even without a lookup


def test_api_key(make_client):
    client = make_client(api_key="s3cret")
    assert client.get("/healthz").status_code == 200
    error_of(client.get("/v1/models"), 401)
    error_of(client.get("/v1/models", headers={"Authorization": "Bearer nope"}), 401)
    assert client.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_tasks_through_jobs(client):
    image = b64(Image.new("RGB", (64, 64), "white"))
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    done = run_job(client, task="inpaint", prompt="a red circle", image=image, mask=b64(Image.fromarray(mask)), steps=2)
    assert done["state"] == "completed", done
    out = np.asarray(Image.open(io.BytesIO(client.get(done["result"][0]).content)).convert("RGB"))
    assert (out[mask == 0] == 255).all()  # kept pixels exact
    out = run_job(client, task="outpaint", image=image, right=16, steps=2)
    assert Image.open(io.BytesIO(client.get(out["result"][0]).content)).size == (80, 64)
    assert run_job(client, task="fuse", image=image, image_b=image, alpha=0.3, steps=2)["state"] == "completed"


BAD_JOBS = [
    ({"model": "nope", **GEN}, 404, "model"),
    ({"task": "dance", **GEN}, 400, "task"),
    ({"steps": 2}, 400, "prompt"),
    ({**GEN, "n": 0}, 400, "n"),
    ({**GEN, "n": 99}, 400, "n"),
    ({**GEN, "size": "abc"}, 400, "size"),
    ({**GEN, "size": "60x60"}, 400, "size"),
    ({**GEN, "size": "1024x1024"}, 400, "size"),
    ({**GEN, "steps": 0}, 400, "steps"),
    ({**GEN, "guidance": -1}, 400, "guidance"),
    ({**GEN, "guidance": 1e30}, 400, "guidance"),
    ({**GEN, "sampler": "nope"}, 400, "sampler"),
    ({"task": "edit", "prompt": "x", "source_prompt": "y", "n": 2}, 400, "n"),
    ({**GEN, "prompt": "x" * 5000}, 400, "prompt"),
    ({"task": "inpaint", "prompt": "x"}, 400, "image"),
    ({"task": "outpaint", "image": b64(Image.new("RGB", (64, 64))), "right": 16, "method": "bogus"}, 400, "method"),
    ({**GEN, "unknown_field": 1}, 400, "unknown_field"),
    ({"task": "vary", "image": base64.b64encode(b"not an image").decode()}, 400, "image"),
    ({"task": "vary", "image": base64.b64encode(png(Image.new("RGB", (64, 64), "red"))[:60]).decode()}, 400, "image"),
    ({"task": "vary", "image": "%%% not base64"}, 400, "image"),
    ({"task": "inpaint", "image": b64(Image.new("RGB", (64, 64))), "mask": b64(Image.new("L", (32, 32)))}, 400, "mask"),
]


@pytest.mark.parametrize("body,status,param", BAD_JOBS)
def test_bad_job_requests(client, body, status, param):
    err = error_of(client.post("/v1/jobs", json=body), status)
    if param:
        assert err["param"] == param
    assert client.app.state.service.store.all() == []  # nothing kept


def test_bad_bodies_and_uploads(client):
    error_of(client.post("/v1/jobs", content=b'{"prompt": "x",', headers={"content-type": "application/json"}), 400)
    error_of(client.post("/v1/jobs", content=b'{"prompt": "x", "guidance": NaN, "steps": 2}',
                         headers={"content-type": "application/json"}), 400)
    error_of(client.post("/v1/images/edits", json={"prompt": "x"}), 400)  # wrong content type
    error_of(client.post("/v1/images/variations", files={"image": ("a.png", b"not an image", "image/png")}), 400)
    truncated = png(Image.new("RGB", (64, 64), "red"))[:60]
    error_of(client.post("/v1/images/variations", files={"image": ("a.png", truncated, "image/png")}), 400)
    huge = png(Image.new("1", (8000, 8000)))
    err = error_of(client.post("/v1/images/variations", files={"image": ("a.png", huge, "image/png")}), 400)
    assert "pixels" in err["message"]
    err = error_of(client.post("/v1/images/variations", files={"image": ("a.png", b"\0" * (10 * 2 ** 20), "image/png")}),
                   413)
    assert "limit" in err["message"]
    image = png(Image.new("RGB", (64, 64), "white"))
    mask = png(Image.new("RGBA", (32, 32), (0, 0, 0, 0)))
    err = error_of(client.post("/v1/images/edits", data={"prompt": "x"},
                               files={"image": ("a.png", image, "image/png"), "mask": ("m.png", mask, "image/png")}), 400)
    assert err["param"] == "mask"
    error_of(client.get("/v1/jobs/job_doesnotexist"), 404)
    error_of(client.post("/v1/jobs/job_doesnotexist/cancel"), 404)
    error_of(client.post("/v1/images/generations", json={**GEN, "response_format": "gif"}), 400)
    error_of(client.post("/v1/images/generations", json={**GEN, "negative_prompt": "blue"}), 400)
    for form, param in [({"stpes": "2"}, "stpes"), ({"stream": "true"}, "stream"), ({"negative_prompt": "b"}, "negative_prompt")]:
        r = client.post("/v1/images/variations", data=form, files={"image": ("a.png", image, "image/png")})
        assert error_of(r, 400)["param"] == param
    for body, limit in [({**GEN, "n": 99}, "max_n"), ({**GEN, "steps": 999}, "max_steps"),
                        ({**GEN, "size": "1024x1024"}, "max_size")]:
        assert limit in error_of(client.post("/v1/jobs", json=body), 400)["message"]
    assert client.app.state.service.store.all() == []
