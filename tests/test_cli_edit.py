"""The editing verbs from the command line: they write their image, and bad input is one
line on stderr with exit 2 and no output file."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ditkit.cli.main import main
from conftest import box_mask as _box_mask, scene_image as _scene, tiny_folder as _tiny_folder


def run(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-edit")
    _scene(32).save(root / "scene.png")
    _scene(32, 5).save(root / "other.png")
    _box_mask(32, 32, (4, 4, 16, 16)).save(root / "mask.png")
    Image.new("L", (32, 32), 0).save(root / "black.png")
    (root / "notes.png").write_text("hello")
    return {"root": root, "t2i": _tiny_folder(root, "t2i"), "inp": _tiny_folder(root, "inp", 4),
            "up": _tiny_folder(root, "up", 3)}


def test_every_verb_writes_its_image(files, tmp_path, capsys):
    r = files["root"]
    cases = {
        "vary": ["vary", r / "scene.png", "--prompt", "a red circle", "--strength", "0.5", "--num", "2"],
        "edit": ["edit", r / "scene.png", "--source-prompt", "a red circle", "--prompt", "a blue circle"],
        "inpaint": ["inpaint", r / "scene.png", "a red circle", "--mask", r / "mask.png", "--method", "blend"],
        "outpaint": ["outpaint", r / "scene.png", "a red circle", "--right", "16"],
        "fuse": ["fuse", r / "scene.png", r / "other.png", "--alpha", "0.4"],
    }
    for name, args in cases.items():
        out = tmp_path / f"{name}.png"
        code, stdout, err = run(args + ["--model", files["t2i"], "-o", out], capsys)
        assert code == 0, (name, err)
        written = [out] if name != "vary" else [tmp_path / "vary_0.png", tmp_path / "vary_1.png"]
        assert all(p.is_file() for p in written), name
    code, _, err = run(["inpaint", r / "scene.png", "a red circle", "--mask", r / "mask.png", "--model", files["inp"],
                        "-o", tmp_path / "inp_model.png"], capsys)
    assert code == 0, err
    keep = np.asarray(Image.open(r / "mask.png")) < 128
    assert (np.asarray(Image.open(tmp_path / "inp_model.png"))[keep] == np.asarray(Image.open(r / "scene.png"))[keep]).all()
    code, _, err = run(["upscale", r / "scene.png", "--model", files["up"], "-o", tmp_path / "up.png"], capsys)
    assert code == 0, err
    assert Image.open(tmp_path / "up.png").size == (64, 64)
    assert Image.open(tmp_path / "outpaint.png").size == (48, 32)


@pytest.mark.parametrize("args, needle", [
    (["vary", "{root}/scene.png", "--strength", "1.5"], "strength must be in [0, 1]"),
    (["vary", "{root}/notes.png"], "is not an image"),
    (["vary", "{root}/missing.png"], "does not exist"),
    (["inpaint", "{root}/scene.png", "a red circle", "--mask", "{root}/black.png"], "all black"),
    (["inpaint", "{root}/scene.png", "a red circle", "--mask", "{root}/mask.png", "--method", "model"],
     "no inpainting model"),
    (["outpaint", "{root}/scene.png", "a red circle", "--left", "-3"], ">= 0"),
    (["outpaint", "{root}/scene.png", "a red circle", "--top", "40"], "at most double"),
    (["fuse", "{root}/scene.png", "{root}/other.png", "--alpha", "-1"], "alpha"),
    (["upscale", "{root}/scene.png"], "upscaling model"),
])
def test_bad_input_is_one_line_exit_2_and_no_file(files, tmp_path, capsys, args, needle):
    out = tmp_path / "out.png"
    args = [a.format(root=files["root"]) for a in args] + ["--model", files["t2i"], "-o", out]
    code, _, err = run(args, capsys)
    assert code == 2
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.iterdir())


def test_eval_edit_writes_results_and_refuses_unknown_tasks(files, tmp_path, capsys):
    out = tmp_path / "ev"
    code, stdout, err = run(["eval", "edit", "--tasks", "vary,fuse,inpaint,outpaint", "--num", "1", "--model", files["t2i"],
                             "--out-dir", out], capsys)
    assert code == 0, err
    import json

    res = json.loads((out / "results.json").read_text())
    assert set(res["vary"]) == {"0.3", "0.9"} and "pixels/join" in res["fuse"]
    assert 0 <= res["vary"]["0.3"]["kept_rate"] <= 1 and (out / "report.md").is_file()
    code, _, err = run(["eval", "edit", "--tasks", "colorize", "--model", files["t2i"]], capsys)
    assert code == 2 and "unknown edit tasks" in err
