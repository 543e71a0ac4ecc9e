"""The fast inference engines (issue 31): `ditkit export`, interop.export / interop.runtime,
--engine onnxruntime | openvino from Python, the CLI and the server.

The engines are optional extras; the Makefile installs them (the dev extra), so CI runs these
tests. Each test that needs one skips, with the reason, only when its package is absent."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import ditkit
from ditkit.core.config import SampleConfig
from ditkit.core.model import PIXART, DiT, DiTConfig
from ditkit.interop.export import export_model
from ditkit.interop.engines import openvino_has_bf16
from ditkit.interop.runtime import ExportedModel, load_exported

from conftest import assert_one_line_error, make_context, perturb_, run_cli, tiny_folder

ort = pytest.importorskip("onnxruntime", reason="the onnx extra (onnxruntime) is not installed")
ENGINES = ["onnxruntime", "openvino"]


def needs(engine: str) -> None:
    if engine == "openvino":
        pytest.importorskip("openvino", reason="the openvino extra is not installed")
        pytest.importorskip("nncf", reason="the openvino extra (nncf) is not installed")


def tiny(seed: int = 0, **overrides) -> DiT:
    kw = dict(width=32, depth=2, heads=2, patch_size=8, stem_channels=4, sample_size=32, text_dim=16)
    kw.update(overrides)
    torch.manual_seed(seed)
    return perturb_(DiT(DiTConfig(**kw)).eval(), std=0.1, seed=seed)


def config_of(model: DiT, size: int = 32) -> dict:
    return {"model": model.config.to_dict(), "sample": SampleConfig(steps=2, guidance=2.0, size=size).__dict__,
            "text_encoder": "minilm", "format": "ditkit-dit-v1"}


def inputs(model: DiT, batch: int, size: int, tokens: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, model.config.in_channels, size, size, generator=g)
    t = torch.rand(batch, generator=g)
    states, mask = make_context(batch, tokens, model.config.text_dim, seed=seed,
                                lengths=[tokens] + [max(1, tokens - 2)] * (batch - 1))
    return x, t, states, mask


@pytest.fixture(scope="module")
def rope_model():
    return tiny()


@pytest.fixture(scope="module")
def exported(rope_model, tmp_path_factory):
    """The tiny RoPE model exported to each format: {format: folder}."""
    root = tmp_path_factory.mktemp("exported")
    out = {"onnx": export_model(rope_model, config_of(rope_model), root / "onnx", to="onnx")}
    try:
        needs("openvino")
    except pytest.skip.Exception:
        return out
    out["openvino"] = export_model(rope_model, config_of(rope_model), root / "ov", to="openvino")
    return out


# -- the graph computes the model ----------------------------------------------------------------

@pytest.mark.parametrize("engine,fmt", [("onnxruntime", "onnx"), ("openvino", "onnx"), ("openvino", "openvino")])
def test_exported_graph_gives_the_torch_output(rope_model, exported, engine, fmt):
    """Dynamic batch, text length and (RoPE) image size: every shape the torch model takes."""
    needs(engine)
    model, _ = load_exported(exported[fmt], engine)
    assert isinstance(model, ExportedModel) and model.engine_name == engine
    for batch, size, tokens in [(1, 32, 5), (3, 32, 9), (2, 48, 4), (2, 16, 7)]:
        x, t, states, mask = inputs(rope_model, batch, size, tokens, seed=batch + size)
        with torch.no_grad():
            want = rope_model(x, t, states, mask)
        got = model(x, t, states, mask)
        assert got.shape == want.shape
        assert (got - want).abs().max() < 1e-4, (batch, size, tokens)
    # a scalar t and no mask, as the DiT accepts them
    x, t, states, _ = inputs(rope_model, 2, 32)
    with torch.no_grad():
        want = rope_model(x, t[:1], states)
    assert (model(x, t[:1], states) - want).abs().max() < 1e-4


@pytest.mark.parametrize("engine", ENGINES)
def test_sincos_model_exports_at_a_fixed_size_and_refuses_others(tmp_path, engine):
    """PixArt's sin-cos table is fixed per size: the export says so and the runtime refuses other sizes."""
    needs(engine)
    cfg = dict(PIXART, width=32, depth=2, heads=2, patch_size=8, sample_size=32, text_dim=16)
    model = tiny(**cfg)
    folder = export_model(model, config_of(model), tmp_path / "pix", to="onnx")
    info = json.loads((folder / "config.json").read_text())["export"]
    assert info["dynamic_size"] is False and info["size"] == 32
    graph, _ = load_exported(folder, engine)
    x, t, states, mask = inputs(model, 2, 32)
    with torch.no_grad():
        want = model(x, t, states, mask)
    assert (graph(x, t, states, mask) - want).abs().max() < 1e-4
    x, t, states, mask = inputs(model, 2, 48)
    with pytest.raises(ValueError, match="takes 32x32 images.*--size 48"):
        graph(x, t, states, mask)


@pytest.mark.parametrize("engine", ENGINES)
def test_conditioned_model_exports_with_its_condition_input(tmp_path, engine):
    """A model with conditioning channels (inpainting, upscaling) has a `cond` input, repeated to the batch."""
    needs(engine)
    model = tiny(cond_channels=4)
    folder = export_model(model, config_of(model), tmp_path / "cond", to="onnx")
    assert "cond" in json.loads((folder / "config.json").read_text())["export"]["inputs"]
    graph, _ = load_exported(folder, engine)
    x, t, states, mask = inputs(model, 2, 32)
    cond = torch.randn(1, 4, 32, 32)
    with torch.no_grad():
        want = model(x, t, states, mask, cond=cond)
    assert (graph(x, t, states, mask, cond=cond) - want).abs().max() < 1e-4
    with pytest.raises(ValueError, match="conditioning image"):
        graph(x, t, states, mask)


@pytest.mark.parametrize("engine", ENGINES)
def test_int8_is_close_but_not_the_fp32_graph(rope_model, exported, engine):
    """int8 (ORT dynamic quantization / NNCF weight compression) changes the output a little."""
    needs(engine)
    model, _ = load_exported(exported["onnx"], engine)
    q = model.at_precision("int8")
    assert q._run is model.at_precision("int8")._run and q.precision == "int8"  # compiled once
    x, t, states, mask = inputs(rope_model, 2, 32)
    with torch.no_grad():
        want = rope_model(x, t, states, mask)
    err = (q(x, t, states, mask) - want).abs()
    assert 0 < err.max() < 0.1 * want.abs().max()


def test_bf16_is_refused_where_it_has_no_kernels(exported):
    model, _ = load_exported(exported["onnx"], "onnxruntime")
    with pytest.raises(ValueError, match="no bf16 kernels.*openvino"):
        model.at_precision("bf16")
    needs("openvino")
    ov_model, _ = load_exported(exported["onnx"], "openvino")
    if openvino_has_bf16():
        assert ov_model.at_precision("bf16").precision == "bf16"
    else:
        with pytest.raises(ValueError, match="native bf16"):
            ov_model.at_precision("bf16")


# -- pipelines -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_folder(tmp_path_factory.mktemp("engines"), "model")


@pytest.mark.parametrize("engine", ENGINES)
def test_pipeline_images_match_torch_within_one_level(model_dir, engine):
    """The same sampler, guidance and noise around the graph: images within 1/255 of torch fp32."""
    needs(engine)
    prompts = ["a red circle", "two blue squares"]
    want = ditkit.load(model_dir).generate(prompts, seed=3)
    pipe = ditkit.load(model_dir, engine=engine)
    assert pipe.engine_name == engine and isinstance(pipe.model, ExportedModel)
    got = pipe.generate(prompts, seed=3)
    for a, b in zip(want, got):
        assert np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() <= 1
    # the editing tasks take the same velocity
    varied = pipe.vary(want[0], strength=0.5, seed=1)
    assert varied[0].size == want[0].size


def test_pipeline_features_that_need_blocks_are_refused(model_dir, tmp_path):
    pipe = ditkit.load(model_dir, engine="onnxruntime")
    with pytest.raises(ValueError, match="feature caching.*onnxruntime engine.*--engine torch"):
        pipe.generate("a red circle", cache="first-block:0.2")
    with pytest.raises(ValueError, match="torch.compile.*--engine torch"):
        pipe.compile()
    with pytest.raises(ValueError, match="LoRA adapters.*--engine torch"):
        pipe.load_lora(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="cache calibration"):
        pipe.calibrate_cache(steps=2)
    with pytest.raises(ValueError, match="precision 'bf16'.*onnxruntime"):
        pipe.generate("a red circle", precision="bf16")
    with pytest.raises(ValueError, match="unknown engine 'tensorrt'.*torch, onnxruntime, openvino"):
        ditkit.load(model_dir, engine="tensorrt")


def test_exported_folder_loads_like_a_model_folder(model_dir, tmp_path):
    folder = export_model(*_loaded(model_dir), tmp_path / "exp", to="onnx")
    pipe = ditkit.load(folder)  # the format's engine by default
    assert pipe.engine_name == "onnxruntime" and pipe.defaults.steps == 2
    assert len(pipe.generate("a red circle", seed=0)) == 1
    with pytest.raises(ValueError, match="holds an exported graph, not torch weights"):
        ditkit.load(folder, engine="torch")


def _loaded(folder):
    from ditkit.core.checkpoint import load_model, read_model_config

    model, _ = load_model(folder)
    return model, read_model_config(folder)


def test_missing_or_corrupt_graph_names_the_file(model_dir, tmp_path):
    folder = export_model(*_loaded(model_dir), tmp_path / "exp", to="onnx")
    graph = folder / "velocity.onnx"
    good = graph.read_bytes()
    graph.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match=f"{graph}.*does not match the sha256"):
        ditkit.load(folder)
    cfg = json.loads((folder / "config.json").read_text())
    del cfg["export"]["sha256"]  # no checksum to catch it: the engine's own read fails, named
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=f"exported graph {graph} is corrupt or unreadable by onnxruntime"):
        ditkit.load(folder)
    graph.unlink()
    with pytest.raises(ValueError, match=f"exported graph {graph} is missing"):
        ditkit.load(folder)


def test_export_refuses_what_it_cannot_export(tmp_path):
    from conftest import save_tiny_video_model
    from ditkit.core.checkpoint import load_model

    video, _ = load_model(save_tiny_video_model(tmp_path / "video"))
    with pytest.raises(ValueError, match="video model"):
        export_model(video, {}, tmp_path / "v", to="onnx")
    model = tiny()
    with pytest.raises(ValueError, match="unknown export format 'tflite'"):
        export_model(model, config_of(model), tmp_path / "x", to="tflite")
    (tmp_path / "there").mkdir()
    with pytest.raises(ValueError, match="already exists"):
        export_model(model, config_of(model), tmp_path / "there", to="onnx")
    assert not any(p.name.startswith(".x") for p in tmp_path.iterdir())  # no partial folder left


# -- the command line ----------------------------------------------------------------------------

def test_cli_export_then_generate_and_edit(model_dir, tmp_path, capsys):
    code, out, err = run_cli(["export", model_dir, "--to", "onnx", "-o", tmp_path / "exp"], capsys)
    assert code == 0, err
    info = json.loads(out)
    assert info["graph"] == "velocity.onnx" and info["max_abs_diff"] < 1e-3 and info["dynamic_size"] is True
    code, _, err = run_cli(["generate", "a red circle", "--model", tmp_path / "exp", "-o", tmp_path / "a.png"], capsys)
    assert code == 0, err and (tmp_path / "a.png").is_file()
    code, _, err = run_cli(["vary", tmp_path / "a.png", "--model", model_dir, "--engine", "onnxruntime",
                            "--precision", "int8", "-o", tmp_path / "b.png"], capsys)
    assert code == 0, err and (tmp_path / "b.png").is_file()


def test_cli_errors_are_one_line(model_dir, tmp_path, capsys):
    (tmp_path / "exp").mkdir()
    assert_one_line_error(*run_cli(["export", model_dir, "--to", "onnx", "-o", tmp_path / "exp"], capsys)[::2],
                          "already exists")
    out = tmp_path / "c.png"
    assert_one_line_error(*run_cli(["generate", "x", "--model", model_dir, "--engine", "onnxruntime", "--cache",
                                    "first-block:0.1", "-o", out], capsys)[::2], "--engine torch")
    assert_one_line_error(*run_cli(["generate", "x", "--model", model_dir, "--engine", "onnxruntime", "--precision",
                                    "bf16", "-o", out], capsys)[::2], "bf16")
    assert not out.exists()


@pytest.mark.parametrize("engine", ENGINES)
def test_cli_openvino_export_and_engine(model_dir, tmp_path, capsys, engine):
    needs(engine)
    fmt = "openvino" if engine == "openvino" else "onnx"
    code, out, err = run_cli(["export", model_dir, "--to", fmt, "-o", tmp_path / "exp"], capsys)
    assert code == 0, err
    code, out, err = run_cli(["generate", "a red circle", "--model", tmp_path / "exp", "--precision", "int8",
                              "-o", tmp_path / "a.png"], capsys)
    assert code == 0, err
    assert "Weight Compression" not in out + err  # NNCF's progress bar is kept off the console


# -- the server ----------------------------------------------------------------------------------

def test_server_generates_with_an_engine_and_refuses_control(model_dir):
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    from fastapi.testclient import TestClient

    from ditkit.serve.app import create_app
    from ditkit.serve.settings import ServeSettings

    app = create_app({"tiny": ditkit.load(model_dir, engine="onnxruntime")}, ServeSettings())
    try:
        client = TestClient(app)
        (entry,) = client.get("/v1/models").json()["data"]
        assert entry["engine"] == "onnxruntime" and entry["controls"] == []
        r = client.post("/v1/images/generations", json={"prompt": "a red circle", "model": "tiny", "size": "32x32"})
        assert r.status_code == 200, r.text
        assert len(r.json()["data"]) == 1
        r = client.post("/v1/jobs", json={"task": "generate", "prompt": "a red circle", "model": "tiny",
                                          "control": [{"kind": "edges", "image": "x"}]})
        assert r.status_code == 400 and r.json()["error"]["param"] == "control" and "--engine torch" in r.text
    finally:
        app.state.service.close()
