"""ditkit serve through the official `openai` client (no socket: its http_client is the test
client), and a bounded schemathesis run against /openapi.json (no 5xx)."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

import ditkit  # noqa: E402
from ditkit.serve.app import create_app  # noqa: E402
from ditkit.serve.settings import ServeSettings  # noqa: E402

FAST = {"steps": 2, "seed": 1}


@pytest.fixture(scope="module")
def app():
    app = create_app({"shapes-64": ditkit.load("shapes-64")}, ServeSettings(api_key="k"))
    yield app
    app.state.service.close()


@pytest.fixture(scope="module")
def client(app):
    return openai.OpenAI(base_url="http://testserver/v1", api_key="k", http_client=TestClient(app), max_retries=0)


def decode(item) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(item.b64_json)))


def png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def test_generations(client):
    out = client.images.generate(prompt="a red circle", n=2, size="64x64", response_format="b64_json", extra_body=FAST)
    assert len(out.data) == 2 and all(decode(d).size == (64, 64) for d in out.data)
    url = client.images.generate(prompt="a red circle", response_format="url", extra_body=FAST).data[0].url
    assert url.startswith("http://testserver/v1/files/")


def test_edit_with_mask_keeps_pixels(client):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    alpha = np.full((64, 64), 255, np.uint8)
    alpha[20:44, 20:44] = 0  # OpenAI: fully transparent = the region to change
    mask = np.dstack([np.zeros((64, 64, 3), np.uint8), alpha])
    out = client.images.edit(image=("i.png", png(Image.fromarray(image))), mask=("m.png", png(Image.fromarray(mask, "RGBA"))),
                             prompt="a red circle", n=1, response_format="b64_json", extra_body=FAST)
    result = np.asarray(decode(out.data[0]).convert("RGB"))
    kept = alpha == 255
    assert result.shape == image.shape and (result[kept] == image[kept]).all()
    assert not (result[~kept] == image[~kept]).all()


def test_variations(client):
    image = png(Image.new("RGB", (64, 64), "white"))
    out = client.images.create_variation(image=("i.png", image), n=2, response_format="b64_json", extra_body=FAST)
    assert [decode(d).size for d in out.data] == [(64, 64)] * 2


def test_wrong_key_is_an_authentication_error(app):
    bad = openai.OpenAI(base_url="http://testserver/v1", api_key="wrong", http_client=TestClient(app), max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.images.generate(prompt="x", extra_body=FAST)


def test_openapi_fuzz_has_no_server_errors():
    """Every operation of /openapi.json, a few generated cases each (hypothesis through schemathesis)."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings

    app = create_app({"shapes-64": ditkit.load("shapes-64")}, ServeSettings(max_steps=2, max_n=2, max_size=64))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    seen = []
    try:
        for result in schema.get_all_operations():
            operation = result.ok()

            @given(case=operation.as_strategy())
            @settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def check(case):
                response = case.call()
                seen.append(response.status_code)
                assert response.status_code < 500, (case.path, response.status_code, response.text[:300])

            check()
    finally:
        app.state.service.close()
    assert len(seen) >= 10
