"""`ditkit serve` itself (cli/serve.py, cmd_serve): a real process on a free loopback port
(ditkit.serve.running_server) that answers /healthz, makes an image and exits 0 on SIGINT or
SIGTERM; bad flags are one line on stderr and exit 2."""

from __future__ import annotations

import base64
import io
import json
import signal
import socket
import time
import urllib.request

import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
from conftest import assert_one_line_error, run_cli  # noqa: E402

from ditkit.serve import running_server  # noqa: E402


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def post_json(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_serve_answers_generates_and_stops_cleanly(tmp_path, stop):
    log = tmp_path / "serve.log"
    with running_server("shapes-64", "--max-batch", "1", env={"OMP_NUM_THREADS": "1"}, log_path=log,
                        stop_signal=stop) as server:
        assert server.url.startswith("http://127.0.0.1:") and not server.url.endswith(":0")  # --port 0: a real port
        assert get_json(server.url + "/healthz") == {"status": "ok", "models": ["shapes-64"]}
        out = post_json(server.url + "/v1/images/generations", {"prompt": "a red circle", "steps": 2, "seed": 1})
        (item,) = out["data"]
        assert Image.open(io.BytesIO(base64.b64decode(item["b64_json"]))).size == (64, 64)
        job = post_json(server.url + "/v1/jobs", {"prompt": "a blue square", "steps": 200})
        while get_json(f"{server.url}/v1/jobs/{job['id']}")["step"] < 1:  # stopped while a job runs: still clean
            time.sleep(0.05)
    assert server.returncode == 0
    text = log.read_text()
    assert "Traceback" not in text and "error" not in text.lower(), text
    assert text.splitlines()[0] == f"ditkit serve: shapes-64 on {server.url}/" and text.splitlines()[-1] == \
        "ditkit serve: stopped", text


@pytest.mark.parametrize("flags, needle", [
    (["--port", "-1"], "--port"),
    (["--port", "70000"], "0..65535"),
    (["--models", "no-such-model"], "no-such-model"),
    (["--models", " , "], "--models"),
    (["--max-batch", "0"], "max_batch"),
    (["--api-key-file", "/nonexistent/key"], "--api-key-file"),
])
def test_bad_flags_are_one_line_and_exit_2(capsys, flags, needle):
    code, _, err = run_cli(["serve", "--port", "0", *flags], capsys)
    assert_one_line_error(code, err, needle)


def test_port_in_use_is_one_line_before_loading(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = run_cli(["serve", "--port", str(port), "--models", "shapes-64"], capsys)
    assert_one_line_error(code, err, f"127.0.0.1:{port}", "in use")
