"""core/files.py: atomic writes leave either the whole new file or the old one, never a partial
file or a stray temporary; remove_orphan_temps clears only our own temporaries."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

from ditkit.core.files import (LineLog, atomic_folder, atomic_save_image, atomic_write, atomic_write_json, atomic_write_text,
                               is_orphan_temp, remove_orphan_temps)


def test_writers_produce_the_content_and_no_temporary(tmp_path):
    atomic_write_text(tmp_path / "a.md", "héllo\n")
    atomic_write_json(tmp_path / "b.json", {"x": [1, 2]})
    image = Image.new("RGB", (4, 3), (10, 20, 30))
    atomic_save_image(tmp_path / "c.png", image)
    atomic_save_image(tmp_path / "d.jpg", image, quality=95)
    assert (tmp_path / "a.md").read_text(encoding="utf-8") == "héllo\n"
    assert json.loads((tmp_path / "b.json").read_text()) == {"x": [1, 2]}
    with Image.open(tmp_path / "c.png") as png:
        assert png.format == "PNG" and png.getpixel((0, 0)) == (10, 20, 30)
    with Image.open(tmp_path / "d.jpg") as jpg:
        assert jpg.format == "JPEG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.md", "b.json", "c.png", "d.jpg"]


@pytest.mark.parametrize("error", [RuntimeError("writer failed"), KeyboardInterrupt()])
def test_a_failing_writer_leaves_no_file_and_no_temporary(tmp_path, error):
    seen = []

    def half_then_fail(tmp):
        seen.append(tmp)
        with open(tmp, "wb") as f:
            f.write(b"half a file")
        raise error

    with pytest.raises(type(error)):
        atomic_write(tmp_path / "out.png", half_then_fail)
    assert list(tmp_path.iterdir()) == []
    assert is_orphan_temp(seen[0].rsplit("/", 1)[-1])  # the name the remover looks for


def test_a_failing_writer_keeps_the_old_file(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")
    with pytest.raises(TypeError):
        atomic_write_json(target, {"not json": object()})
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_temporary_names_keep_the_extension_and_carry_the_marker(tmp_path):
    names = []
    atomic_write(tmp_path / "0001.png", lambda tmp: names.append(tmp) or Image.new("L", (2, 2)).save(tmp))
    atomic_write(tmp_path / "model.safetensors", lambda tmp: names.append(tmp) or open(tmp, "wb").close(),
                 suffix=".tmp")
    png, model = (n.rsplit("/", 1)[-1] for n in names)
    assert png.startswith(".0001.png.ditkit-") and png.endswith(".tmp.png")
    assert model.startswith(".model.safetensors.ditkit-") and model.endswith(".tmp")
    assert is_orphan_temp(png) and is_orphan_temp(model)


def test_remove_orphan_temps_removes_ours_and_keeps_everything_else(tmp_path):
    ours = [".0003.png.ditkit-ab_c1234.tmp.png", ".model.safetensors.ditkit-zz99yy88.tmp",
            ".results.json.ditkit-k2m3n4p5.tmp"]
    users = [".0003.png.abc12345.tmp",  # an old-style or foreign temp name: not ours to delete
             ".notes.tmp", ".0003.png.ditkit-short.tmp.png", "0003.png.ditkit-ab_c1234.tmp.png",
             ".hidden.ditkit-ABCDEFGH.tmp", "0001.png", "my.ditkit-ab_c1234.tmp.txt"]
    for name in ours + users:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    nested = tmp_path / "sub" / ".0001.png.ditkit-ab_c1234.tmp.png"
    nested.write_bytes(b"x")
    folder_named_like_ours = tmp_path / ".x.png.ditkit-aaaaaaaa.tmp.png"
    folder_named_like_ours.mkdir()

    removed = remove_orphan_temps(tmp_path)

    assert sorted(p.name for p in removed) == sorted(ours)
    left = {p.name for p in tmp_path.iterdir()}
    assert left == set(users) | {"sub", folder_named_like_ours.name}
    assert nested.exists()  # not recursive
    assert remove_orphan_temps(tmp_path) == []
    assert remove_orphan_temps(tmp_path / "missing") == []


def test_an_orphan_from_a_killed_write_is_recognised(tmp_path):
    """A process killed between writing its temp file and renaming it leaves the temp file;
    the remover finds exactly that file and nothing else."""
    (tmp_path / "0001.png").write_bytes(b"a finished image")
    code = ("import os, sys; from ditkit.core.files import atomic_write\n"
            "def die(tmp):\n"
            "    open(tmp, 'wb').write(b'half an image')\n"
            "    os._exit(9)  # no cleanup runs, as with kill -9\n"
            "atomic_write(sys.argv[1], die)\n")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "0000.png")])
    assert done.returncode == 9
    orphans = [p for p in tmp_path.iterdir() if p.name != "0001.png"]
    assert len(orphans) == 1 and not (tmp_path / "0000.png").exists()
    assert remove_orphan_temps(tmp_path) == orphans
    assert [p.name for p in tmp_path.iterdir()] == ["0001.png"]


def test_a_line_log_holds_only_whole_lines(tmp_path):
    path = tmp_path / "log.jsonl"
    with LineLog(path) as log:
        log.write('{"step": 1}\n{"ste')
        assert path.read_text() == '{"step": 1}\n'  # the half line waits for its newline
        log.write('p": 2}\n')
        log.flush()
        assert path.read_text() == '{"step": 1}\n{"step": 2}\n'
        log.write('{"step": 3}')
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"step": k} for k in (1, 2, 3)]
    with LineLog(path, fresh=False) as log:  # a resumed run appends
        log.write('{"step": 4}\n')
    assert len(path.read_text().splitlines()) == 4
    with LineLog(path) as log:  # a new run starts empty
        log.write("x\n")
    assert path.read_text() == "x\n"


def test_writing_into_a_missing_folder_names_the_target(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.*does not exist") as e:
        atomic_write_text(tmp_path / "missing" / "s.json", "{}")
    assert "ditkit-" not in str(e.value)


def test_an_atomic_folder_is_complete_or_absent(tmp_path):
    out = tmp_path / "model"
    stale = tmp_path / ".model.ditkit-partial"  # a killed earlier run's half-built folder
    stale.mkdir()
    (stale / "half.bin").write_bytes(b"x")
    with pytest.raises(RuntimeError):
        with atomic_folder(out) as tmp:
            assert tmp == stale and not tmp.exists()  # the stale one was removed first
            tmp.mkdir()
            (tmp / "config.json").write_text("{}")
            raise RuntimeError("conversion failed")
    assert list(tmp_path.iterdir()) == []
    with atomic_folder(out) as tmp:
        tmp.mkdir()
        (tmp / "config.json").write_text("{}")
    assert [p.name for p in tmp_path.iterdir()] == ["model"] and (out / "config.json").read_text() == "{}"
