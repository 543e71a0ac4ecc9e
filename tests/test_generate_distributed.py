"""`torchrun --nproc_per_node=N -m ditkit generate --prompts-file F --out-dir D` splits the run
over N processes (slice k of whole batches -> rank k % N) and leaves exactly the folder one
process leaves: the same file names and the same bytes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from ditkit.cli.generate import generate_to_folder, images_of_rank, slice_images
from ditkit.cli.ranks import Ranks, rank_device, torchrun_ranks

from conftest import assert_one_line_error, run_cli

SRC = Path(__file__).resolve().parents[1] / "src"


def write_prompts(path: Path, n: int) -> Path:
    path.write_text("".join(f"a red circle number {i}\n" for i in range(n)))
    return path


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_torchrun_two_processes_write_the_bytes_of_one(tiny_model_dir, tmp_path, capsys):
    # 37 prompts x 1 image: slices of 16, 16 and 5 images; rank 0 writes slices 0 and 2, rank 1 slice 1
    prompts = write_prompts(tmp_path / "prompts.txt", 37)
    one = tmp_path / "one"
    code, stdout, err = run_cli(["generate", "--prompts-file", prompts, "--out-dir", one, "--model", tiny_model_dir,
                                 "--seed", 7], capsys)  # conftest runs torch on one thread, as torchrun does
    assert code == 0, err
    two = tmp_path / "two"
    two.mkdir()
    for i in range(45):  # an earlier, longer run: --overwrite removes it before any rank writes
        Image.new("RGB", (32, 32)).save(two / f"{i:04d}.png")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SRC)}
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "ditkit", "generate", "--prompts-file", str(prompts), "--out-dir", str(two),
                        "--model", str(tiny_model_dir), "--seed", "7", "--overwrite"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    expected = folder_bytes(one)
    assert sorted(expected) == [f"{i:04d}.png" for i in range(37)]
    assert folder_bytes(two) == expected
    assert p.stdout.count("wrote") == 1 and f"wrote 37 images to {two} (2 processes)" in p.stdout
    assert f"generate (rank 0 of 2): 21/21 images written to {two}" in p.stderr
    assert f"generate (rank 1 of 2): 16/16 images written to {two}" in p.stderr


class FakePipe:
    """Pipeline.generate's interface; each image encodes (seed of its first row + row, prompt) so
    a wrong seed, prompt or batch shows in the written files, and every call is recorded."""

    def __init__(self):
        self.calls = []

    def generate(self, prompts, seed, batch_size, callback, best_of=1, **kwargs):
        self.calls.append((list(prompts), seed, batch_size, best_of))
        for done in range(1, len(prompts) * best_of + 1):
            callback({"done": done * 2, "steps": 2})
        return [Image.new("RGB", (4, 4), ((seed + i) % 256, len(p), (seed + i) // 256)) for i, p in enumerate(prompts)]


@pytest.mark.parametrize("world", [2, 3, 5])
@pytest.mark.parametrize("num_images,best_of", [(1, 1), (3, 1), (2, 3)])
def test_the_ranks_together_make_the_one_process_calls(tmp_path, world, num_images, best_of):
    prompts = [f"prompt {'x' * i}" for i in range(23)]
    kwargs = {"seed": 11, **({"best_of": best_of, "verifier": "shapes"} if best_of > 1 else {})}
    single, one = FakePipe(), tmp_path / "one"
    one.mkdir()
    total = generate_to_folder(single, prompts, one, num_images, kwargs)
    assert total == len(prompts) * num_images
    many = tmp_path / "many"
    many.mkdir()
    calls, counts = [], []
    for rank in range(world):
        pipe, sampled, written = FakePipe(), [], []
        n = generate_to_folder(pipe, prompts, many, num_images, kwargs, sampled.append, written.append, rank, world)
        assert n == images_of_rank(total, best_of, rank, world) == (written[-1] if written else 0)
        assert not sampled or sampled[-1] == n * best_of  # a rank's progress counts its own candidates
        calls += pipe.calls
        counts.append(n)
    assert sum(counts) == total
    assert sorted(calls, key=lambda c: c[1]) == single.calls  # the same batches, prompts and seeds
    assert folder_bytes(many) == folder_bytes(one)


def test_slices_are_whole_batches():
    for best_of in (1, 2, 3, 16, 24):
        assert slice_images(best_of) * best_of % 16 == 0
    assert [images_of_rank(37, 1, r, 2) for r in range(2)] == [21, 16]
    assert [images_of_rank(5, 1, r, 4) for r in range(4)] == [5, 0, 0, 0]  # more ranks than slices: idle ranks


def test_ranks_from_torchruns_environment():
    assert torchrun_ranks({}) == Ranks(0, 1, 0)
    r = torchrun_ranks({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (r.rank, r.world, r.local_rank, r.main) == (3, 4, 1, False)
    for env in ({"RANK": "4", "WORLD_SIZE": "4"}, {"RANK": "0", "WORLD_SIZE": "0"}, {"RANK": "x", "WORLD_SIZE": "2"}):
        with pytest.raises(ValueError, match="RANK|WORLD_SIZE"):
            torchrun_ranks(env)
    assert rank_device("cuda", r) == "cuda:1" and rank_device("cuda:0", r) == "cuda:0"
    assert rank_device("cpu", r) == "cpu" and rank_device("cuda", Ranks()) == "cuda"


def test_one_prompt_under_torchrun_is_refused(tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, _, err = run_cli(["generate", "a red circle", "-o", tmp_path / "a.png", "--model", tiny_model_dir], capsys)
    assert_one_line_error(code, err, "--prompts-file", "without torchrun")
    assert not (tmp_path / "a.png").exists()
