"""One table of bad inputs (issue 26), over the CLI and the Python API.

Every CLI case must exit 2 with ONE "ditkit: error:" line on stderr that names the problem
(the case's keywords), no traceback, and must leave no file behind. Every API case must
raise the named exception type with a one-line message holding the keywords. Nearly all
fail in validation, before any sampling; the few that must sample (a model with NaN
weights, a verifier that fails) use a 1-block 32 px model at 1-2 steps.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error, run_cli, scene_image
from PIL import Image
from safetensors.torch import load_file, save_file

import ditkit
from ditkit.core.config import Config, DiTConfig, SampleConfig, TrainConfig, load_config
from ditkit.engine.request import GenerationRequest
from ditkit.evaluation.fwd import FWDStats


def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG that claims width x height but holds one row: opening it costs nothing, decoding
    it would allocate the full image (a decompression bomb in miniature)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * (width + 1)))
                     + chunk(b"IEND", b""))
    return path


def model_copy(src: Path, dst: Path, config_edit=None, weights_edit=None) -> Path:
    shutil.copytree(src, dst)
    if config_edit is not None:
        cfg = json.loads((dst / "config.json").read_text())
        config_edit(cfg)
        (dst / "config.json").write_text(json.dumps(cfg))
    if weights_edit is not None:
        save_file({k: weights_edit(v) for k, v in load_file(str(dst / "model.safetensors")).items()},
                  str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


TINY_TRAIN_YAML = """\
model: {width: 32, depth: 1, heads: 2, patch_size: 8, stem_channels: 4, sample_size: 32}
data: {dataset: shapes, size: 32}
train: {output_dir: OUTPUT, steps: 1, batch_size: 1, precision: fp32, checkpoint_every: 1, log_every: 1}
sample: {steps: 1, size: 32}
"""


@pytest.fixture(scope="module")
def root(tiny_model_dir, tmp_path_factory) -> Path:
    """Every file the cases need: a tiny model and broken copies of it, images, configs."""
    r = tmp_path_factory.mktemp("bad")
    model_copy(tiny_model_dir, r / "model")
    model_copy(tiny_model_dir, r / "nan_model", weights_edit=lambda v: torch_full_nan(v))
    model_copy(tiny_model_dir, r / "str_model", config_edit=lambda c: c.update(model="x"))
    (r / "pickled_te").mkdir()
    (r / "pickled_te" / "config.json").write_text("{}")
    (r / "pickled_te" / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    model_copy(tiny_model_dir, r / "pickled_te_model", config_edit=lambda c: c.update(text_encoder=str(r / "pickled_te")))
    scene_image(32).save(r / "scene.png")
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(r / "mask.png")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(r / "black.png")
    png_header(r / "bomb.png", 20000, 20000)   # over PIL's own bomb limit
    png_header(r / "big.png", 5000, 5000)      # under PIL's, over ours (4096 x 4096)
    (r / "notimage.png").write_text("hello")
    (r / "garbage.npz").write_bytes(b"this is not an npz archive\n" * 4)
    (r / "bad.yaml").write_text("train:\n  lr: [1, 2\n  steps: 3\n")
    (r / "train.yaml").write_text(TINY_TRAIN_YAML.replace("OUTPUT", str(r / "out" / "run")))
    (r / "resume.yaml").write_text(TINY_TRAIN_YAML.replace("OUTPUT", str(r / "out" / "never-ran")))
    (r / "prompts.txt").write_text("a red circle\n")
    (r / "adir").mkdir()
    (r / "afile.txt").write_text("x")
    (r / "old").mkdir()
    for k in range(4):  # an earlier, longer batch run
        scene_image(32, k).save(r / "old" / f"{k:04d}.png")
    (r / "out").mkdir()  # where every case would write: it must stay empty
    return r


def torch_full_nan(v):
    return v.clone().fill_(float("nan")) if v.is_floating_point() else v


def tree(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


# (id, argv with {root} for the fixture folder and {model} for the tiny model, keywords of the error line)
GEN = ["generate", "a red circle", "-o", "{root}/out/x.png", "--model", "{model}", "--steps", "1"]
VARY = ["vary", "{root}/scene.png", "-o", "{root}/out/x.png", "--model", "{model}", "--steps", "1"]
INPAINT = ["inpaint", "{root}/scene.png", "a red circle", "--mask", "{root}/mask.png", "-o", "{root}/out/x.png",
           "--model", "{model}", "--steps", "1", "--method", "blend"]
OUTPAINT = ["outpaint", "{root}/scene.png", "a red circle", "-o", "{root}/out/x.png", "--model", "{model}",
            "--steps", "1", "--method", "blend"]
FUSE = ["fuse", "{root}/scene.png", "{root}/scene.png", "-o", "{root}/out/x.png", "--model", "{model}", "--steps", "1"]
TRAIN = ["train", "{root}/train.yaml", "--no-progress"]

CLI_CASES = [
    # -- generate: numbers
    ("guidance-nan", GEN + ["--guidance", "nan"], ["--guidance", "finite"]),
    ("guidance-inf", GEN + ["--guidance", "inf"], ["--guidance", "finite"]),
    ("guidance-negative", GEN + ["--guidance", "-1"], ["--guidance", ">= 0"]),
    ("steps-zero", GEN + ["--steps", "0"], ["--steps", ">= 1"]),
    ("steps-too-many", GEN + ["--steps", "5000"], ["steps", "1..1000"]),
    ("steps-text", GEN + ["--steps", "abc"], ["--steps", "integer"]),
    ("seed-beyond-64-bits", GEN + ["--seed", str(2 ** 64)], ["seed", "2**63"]),
    ("seed-negative", GEN + ["--seed", "-1"], ["seed", "2**63"]),
    ("seed-fraction", GEN + ["--seed", "1.5"], ["--seed", "1.5"]),
    ("shift-zero", GEN + ["--shift", "0"], ["--shift", "> 0"]),
    ("shift-nan", GEN + ["--shift", "nan"], ["shift", "finite"]),
    ("shift-inf", GEN + ["--shift", "inf"], ["shift", "finite"]),
    ("size-off-patch", GEN + ["--size", "30"], ["--size", "patch size"]),
    ("size-huge", GEN + ["--size", "4096"], ["--size", "1024"]),
    ("interval-reversed", GEN + ["--guidance-interval", "0.8,0.2"], ["--guidance-interval"]),
    ("interval-nan", GEN + ["--guidance-interval", "nan,1"], ["--guidance-interval"]),
    ("prior-until-zero", GEN + ["--prior-until", "0"], ["--prior-until"]),
    ("prior-until-nan", GEN + ["--prior-until", "nan"], ["--prior-until"]),
    ("num-images-zero", GEN + ["--num-images", "0"], ["--num-images"]),
    ("num-images-huge", GEN + ["--num-images", "100000"], ["num_images", "10000"]),
    ("best-of-zero", GEN + ["--best-of", "0"], ["--best-of"]),
    # -- generate: names, devices, files
    ("device-tpu", GEN + ["--device", "tpu"], ["'tpu'", "cuda:N"]),
    ("device-garbled", GEN + ["--device", "cuda:x"], ["'cuda:x'", "allowed"]),
    ("device-missing-gpu", GEN + ["--device", "cuda:99"], ["cuda:99"]),
    ("precision-unknown", GEN + ["--precision", "fp64"], ["precision", "fp32"]),
    ("sampler-unknown", GEN + ["--sampler", "ddim"], ["sampler", "euler"]),
    ("cache-nan", GEN + ["--cache", "first-block:nan"], ["first-block"]),
    ("verifier-os-system", GEN + ["--best-of", "2", "--verifier", "os:system"], ["verifier 'os:system'", "failed"]),
    ("verifier-unimportable", GEN + ["--best-of", "2", "--verifier", "no_such_module_x:f"], ["verifier"]),
    ("prompts-file-is-folder", ["generate", "--prompts-file", "{root}/adir", "--out-dir", "{root}/out/batch",
                                "--model", "{model}"], ["prompts file", "folder"]),
    ("prompts-file-missing", ["generate", "--prompts-file", "{root}/nope.txt", "--out-dir", "{root}/out/batch",
                              "--model", "{model}"], ["prompts file", "does not exist"]),
    ("output-not-an-image", ["generate", "x", "-o", "{root}/out/x.txt", "--model", "{model}"], ["image extension"]),
    ("output-folder-missing", ["generate", "x", "-o", "{root}/out/nodir/x.png", "--model", "{model}"],
     ["does not exist"]),
    ("model-unknown", ["generate", "x", "-o", "{root}/out/x.png", "--model", "no-such-model"], ["unknown model"]),
    ("model-nan-weights", ["generate", "x", "-o", "{root}/out/x.png", "--model", "{root}/nan_model", "--steps", "1"],
     ["nan_model", "non-finite"]),
    ("model-config-not-a-mapping", ["generate", "x", "-o", "{root}/out/x.png", "--model", "{root}/str_model"],
     ["'model' must be a mapping", "DiTConfig"]),
    ("no-prompt", ["generate", "-o", "{root}/out/x.png", "--model", "{model}"], ["PROMPT"]),
    # -- editing tasks
    ("vary-bomb", ["vary", "{root}/bomb.png", "-o", "{root}/out/x.png", "--model", "{model}"], ["too large"]),
    ("vary-over-pixel-limit", ["vary", "{root}/big.png", "-o", "{root}/out/x.png", "--model", "{model}"],
     ["5000x5000", "4096x4096"]),
    ("vary-strength-nan", VARY + ["--strength", "nan"], ["strength", "finite"]),
    ("vary-strength-above-1", VARY + ["--strength", "1.5"], ["strength", "[0, 1]"]),
    ("vary-num-zero", VARY + ["--num", "0"], ["--num"]),
    ("vary-missing-image", ["vary", "{root}/nope.png", "-o", "{root}/out/x.png", "--model", "{model}"],
     ["does not exist"]),
    ("vary-not-an-image", ["vary", "{root}/notimage.png", "-o", "{root}/out/x.png", "--model", "{model}"],
     ["not an image"]),
    ("vary-device-tpu", VARY + ["--device", "tpu"], ["'tpu'", "allowed"]),
    ("vary-seed-beyond-64-bits", VARY + ["--seed", str(2 ** 64)], ["seed", "2**63"]),
    ("inpaint-resample-endless", INPAINT + ["--resample", "100000"], ["resample", "0..20"]),
    ("inpaint-resample-negative", INPAINT + ["--resample", "-1"], ["resample"]),
    ("inpaint-black-mask", ["inpaint", "{root}/scene.png", "x", "--mask", "{root}/black.png", "-o",
                            "{root}/out/x.png", "--model", "{model}"], ["all black"]),
    ("outpaint-negative", OUTPAINT + ["--left", "-5"], ["left", ">= 0"]),
    ("outpaint-over-double", OUTPAINT + ["--right", "1000"], ["at most double"]),
    ("outpaint-nothing", OUTPAINT, ["at least one"]),
    ("fuse-alpha-nan", FUSE + ["--alpha", "nan"], ["alpha", "finite"]),
    ("fuse-alpha-above-1", FUSE + ["--alpha", "2"], ["alpha", "[0, 1]"]),
    ("edit-strength-zero", ["edit", "{root}/scene.png", "--source-prompt", "a", "--prompt", "b", "-o",
                            "{root}/out/x.png", "--model", "{model}"] + ["--strength", "0"], ["strength"]),
    ("upscale-wrong-model", ["upscale", "{root}/scene.png", "-o", "{root}/out/x.png", "--model", "{model}"],
     ["upscaling model"]),
    # -- evaluation, training, configs
    ("fwd-garbage-npz", ["eval", "fwd", "{root}/garbage.npz", "{root}/garbage.npz"],
     ["not a ditkit FWD statistics file", "mu"]),
    ("yaml-syntax", ["train", "{root}/bad.yaml"], ["not valid YAML", "line 3, column"]),
    ("train-lr-nan", TRAIN + ["--set", "train.lr=.nan"], ["train.lr", "finite"]),
    ("train-steps-fraction", TRAIN + ["--set", "train.steps=2.5"], ["train.steps"]),
    ("train-device-tpu", TRAIN + ["--set", "train.device=tpu"], ["train.device", "'tpu'"]),
    ("train-seed-negative", TRAIN + ["--set", "train.seed=-1"], ["train.seed", "2**63"]),
    ("train-device-missing-gpu", TRAIN + ["--set", "train.device=cuda:99"], ["train.device", "cuda:99"]),
    ("prune-device-tpu", ["prune", "{model}", "--remove", "1", "-o", "{root}/out/pruned", "--device", "tpu"],
     ["'tpu'", "allowed"]),
    ("train-model-not-a-mapping", TRAIN + ["--set", "model=x"], ["'model' must be a mapping"]),
    # -- fixed by other engineers of issue 26 (kept here so the table covers the whole issue)
    ("text-encoder-pickled", ["generate", "x", "-o", "{root}/out/x.png", "--model", "{root}/pickled_te_model",
                              "--steps", "1"], ["pickled", "safetensors"]),
    ("train-config-is-folder", ["train", "{root}/adir"], ["folder"]),
    ("train-resume-without-run", ["train", "{root}/resume.yaml", "--resume", "--no-progress"], ["resume"]),
    ("analyze-output-is-file", ["analyze", "{model}", "-o", "{root}/afile.txt", "--timesteps", "1",
                                "--no-ablation"], ["output", "file"]),
    ("cache-calibrate-output-folder-missing", ["cache-calibrate", "{model}", "--steps", "2", "-o",
                                               "{root}/out/nodir/s.json"], ["does not exist"]),
    ("batch-into-old-folder", ["generate", "--prompts-file", "{root}/prompts.txt", "--out-dir", "{root}/old",
                               "--model", "{model}", "--steps", "1"], ["--overwrite"]),
]


@pytest.mark.parametrize("argv, keywords", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input(root, argv, keywords, capsys):
    before = tree(root)
    code, _, err = run_cli([a.format(root=root, model=root / "model") for a in argv], capsys)
    assert_one_line_error(code, err, *keywords)
    assert tree(root) == before, "a failed command left or changed files"


# A few through a real process: the exit code and stderr a shell sees.
@pytest.mark.parametrize("argv, keyword", [(["--guidance", "nan"], "--guidance"), (["--device", "tpu"], "tpu")])
def test_cli_bad_input_in_a_process(root, argv, keyword):
    before = tree(root)
    argv = [a.format(root=root, model=root / "model") for a in GEN + argv]
    p = subprocess.run([sys.executable, "-m", "ditkit", *argv], capture_output=True, text=True)
    assert p.returncode == 2, p.stderr
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("ditkit: error:") and keyword in p.stderr, p.stderr
    assert tree(root) == before


def _raise(e):
    raise e


# (id, call(pipe, root), exception type, keywords of the message)
API_CASES = [
    ("prompt-none", lambda p, r: p.generate(None), ValueError, ["string or a list of strings", "NoneType"]),
    ("prompt-int", lambda p, r: p.generate(5), ValueError, ["string or a list of strings", "int"]),
    ("prompt-list-with-int", lambda p, r: p.generate(["a", 3]), ValueError, ["list of strings", "3"]),
    ("prompt-empty-list", lambda p, r: p.generate([]), ValueError, ["no prompts"]),
    ("steps-fraction", lambda p, r: p.generate("a", steps=2.7), ValueError, ["steps", "integer", "2.7"]),
    ("steps-text", lambda p, r: p.generate("a", steps="abc"), ValueError, ["steps", "integer", "'abc'"]),
    ("steps-bool", lambda p, r: p.generate("a", steps=True), ValueError, ["steps", "integer"]),
    ("steps-too-many", lambda p, r: p.generate("a", steps=10 ** 6), ValueError, ["steps", "1..1000"]),
    ("seed-fraction", lambda p, r: p.generate("a", seed=1.5), ValueError, ["seed", "2**63", "1.5"]),
    ("seed-beyond-64-bits", lambda p, r: p.generate("a", seed=2 ** 64), ValueError, ["seed", "2**63"]),
    ("seed-negative", lambda p, r: p.generate("a", seed=-1), ValueError, ["seed", "2**63"]),
    ("seed-text", lambda p, r: p.generate("a", seed="0"), ValueError, ["seed", "2**63"]),
    ("seed-last-image-overflows", lambda p, r: p.generate("a", seed=2 ** 63 - 1, num_images=2), ValueError,
     ["last image's seed", "2**63"]),
    ("batch-size-zero", lambda p, r: p.generate("a", batch_size=0), ValueError, ["batch_size", "1..1024"]),
    ("batch-size-fraction", lambda p, r: p.generate("a", batch_size=2.5), ValueError, ["batch_size", "integer"]),
    ("guidance-nan", lambda p, r: p.generate("a", guidance=float("nan")), ValueError, ["guidance", "finite"]),
    ("guidance-inf", lambda p, r: p.generate("a", guidance=float("inf")), ValueError, ["guidance", "finite"]),
    ("guidance-text", lambda p, r: p.generate("a", guidance="4"), ValueError, ["guidance", "'4'"]),
    ("shift-zero", lambda p, r: p.generate("a", shift=0), ValueError, ["shift", "> 0"]),
    ("shift-nan", lambda p, r: p.generate("a", shift=float("nan")), ValueError, ["shift", "finite"]),
    ("size-fraction", lambda p, r: p.generate("a", size=32.5), ValueError, ["size", "integer"]),
    ("num-images-zero", lambda p, r: p.generate("a", num_images=0), ValueError, ["num_images"]),
    ("num-images-fraction", lambda p, r: p.generate("a", num_images=1.5), ValueError, ["num_images", "integer"]),
    ("best-of-zero", lambda p, r: p.generate("a", best_of=0, verifier="shapes"), ValueError, ["best_of"]),
    ("interval-reversed", lambda p, r: p.generate("a", guidance_interval=(0.9, 0.1)), ValueError,
     ["guidance interval", "lo <= hi"]),
    ("interval-not-a-pair", lambda p, r: p.generate("a", guidance_interval=5), ValueError, ["guidance interval", "pair"]),
    ("prior-until-zero", lambda p, r: p.generate("a", prior_until=0), ValueError, ["prior_until", "(0, 1]"]),
    ("verifier-nan", lambda p, r: p.generate("a", steps=1, best_of=2, verifier=lambda im, pr: float("nan")),
     ValueError, ["verifier", "non-finite"]),
    ("verifier-text", lambda p, r: p.generate("a", steps=1, best_of=2, verifier=lambda im, pr: "good"),
     ValueError, ["verifier", "'good'", "finite number"]),
    ("verifier-raises", lambda p, r: p.generate("a", steps=1, best_of=2,
                                                  verifier=lambda im, pr: _raise(KeyError("boom"))),
     ValueError, ["verifier", "failed", "KeyError"]),
    ("device-tpu", lambda p, r: ditkit.load(r / "model", device="tpu"), ValueError, ["'tpu'", "cuda:N"]),
    ("nan-weights", lambda p, r: ditkit.load(r / "nan_model").generate("a", steps=1), ValueError,
     ["nan_model", "non-finite"]),
    ("model-config-not-a-mapping", lambda p, r: ditkit.load(r / "str_model"), ValueError,
     ["'model' must be a mapping"]),
    ("vary-bomb", lambda p, r: p.vary(r / "bomb.png"), ValueError, ["bomb.png", "too large"]),
    ("vary-over-pixel-limit", lambda p, r: p.vary(r / "big.png"), ValueError, ["5000x5000", "4096x4096"]),
    ("vary-array-over-pixel-limit", lambda p, r: p.vary(np.zeros((5000, 5000), np.uint8)), ValueError,
     ["5000x5000", "too large"]),
    ("vary-strength-nan", lambda p, r: p.vary(r / "scene.png", strength=float("nan")), ValueError,
     ["strength", "finite"]),
    ("vary-num-images-zero", lambda p, r: p.vary(r / "scene.png", num_images=0), ValueError, ["num_images"]),
    ("inpaint-resample-endless", lambda p, r: p.inpaint(r / "scene.png", r / "mask.png", resample=100000),
     ValueError, ["resample", "0..20"]),
    ("inpaint-resample-fraction", lambda p, r: p.inpaint(r / "scene.png", r / "mask.png", resample=2.5),
     ValueError, ["resample", "integer"]),
    ("outpaint-amount-text", lambda p, r: p.outpaint(r / "scene.png", left="abc"), ValueError, ["left", "integer"]),
    ("fuse-alpha-nan", lambda p, r: p.fuse(r / "scene.png", r / "scene.png", alpha=float("nan")), ValueError,
     ["alpha", "finite"]),
    ("fuse-alpha-text", lambda p, r: p.fuse(r / "scene.png", r / "scene.png", alpha="x"), ValueError, ["alpha"]),
    ("request-steps-zero", lambda p, r: GenerationRequest(("a",), 0, steps=0), ValueError, ["steps", "1..1000"]),
    ("request-prompts-none", lambda p, r: GenerationRequest(None, 0), ValueError, ["string or a list of strings"]),
    ("fwd-garbage-npz", lambda p, r: FWDStats.load(r / "garbage.npz"), ValueError,
     ["not a ditkit FWD statistics file", "sigma"]),
    ("yaml-syntax", lambda p, r: load_config(r / "bad.yaml"), ValueError, ["line 3, column"]),
    ("config-lr-nan", lambda p, r: Config.from_dict({"train": {"lr": float("nan")}}), ValueError,
     ["train.lr", "finite"]),
    ("config-model-not-a-mapping", lambda p, r: Config.from_dict({"model": "x"}), ValueError,
     ["'model' must be a mapping"]),
    ("dit-width-fraction", lambda p, r: DiTConfig(width=32.5), ValueError, ["model.width", "integer"]),
    ("sample-steps-zero", lambda p, r: SampleConfig(steps=0), ValueError, ["steps", "1..1000"]),
    ("train-seed-beyond-64-bits", lambda p, r: TrainConfig(seed=2 ** 64), ValueError, ["train.seed", "2**63"]),
]


@pytest.fixture(scope="module")
def pipe(root):
    return ditkit.load(root / "model")


@pytest.mark.parametrize("call, error, keywords", [c[1:] for c in API_CASES], ids=[c[0] for c in API_CASES])
def test_api_bad_input(pipe, root, call, error, keywords):
    before = tree(root)
    with pytest.raises(error) as info:
        call(pipe, root)
    message = str(info.value)
    assert "\n" not in message, message
    for k in keywords:
        assert k in message, (k, message)
    assert tree(root) == before


def test_the_table_is_large_enough():
    assert len(CLI_CASES) + len(API_CASES) >= 60
    assert len({c[0] for c in CLI_CASES}) == len(CLI_CASES) and len({c[0] for c in API_CASES}) == len(API_CASES)
