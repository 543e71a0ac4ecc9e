"""Distributed training on 2 CPU processes (gloo): DDP and FSDP2 take the same steps as one
process with the whole global batch, a 2-rank run stopped and resumed equals an uninterrupted
one, and its checkpoint resumes on 1 process and under the other mode (sharded state loaded
into another sharding). The ranks run in torch.multiprocessing spawn workers, each calling
`train` with torchrun's environment, and once through the real `torchrun -m ditkit train`.

Why 1e-5 and not bit-equality between world sizes: a forward over a batch of 2 and one over 4
round differently (another matmul blocking), and DDP's all-reduce sums in another order;
runs on the same world size and mode are compared exactly."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from ditkit.core.checkpoint import MODEL_FILE, STATE_FILE
from ditkit.core.config import Config, load_config
from ditkit.core.model import DiT
from ditkit.training.loop import TrainingLoop, TrainSettings
from ditkit.training.sharded_state import POINTER
from ditkit.training.train import step_batch, train

STEPS, STOP = 4, 2
# A 2-block width-32 DiT on 32 px shapes; global batch 4 (2 per rank); EMA, warmup, clipping
# and caption dropout on, so every part of a step is compared.
CONFIG = f"""
model: {{in_channels: 3, out_channels: 3, patch_size: 8, width: 32, depth: 2, heads: 2, mlp_ratio: 2.0,
        text_dim: 384, attention: softmax, stem_channels: 4, sample_size: 32}}
data: {{dataset: shapes, size: 32}}
train: {{steps: {STEPS}, batch_size: 4, lr: 1.0e-3, warmup_steps: 2, grad_clip: 1.0, ema_decay: 0.9,
        cfg_dropout: 0.25, precision: fp32, checkpoint_every: 2, log_every: 1, eval_every: 0, seed: 0}}
sample: {{sampler: euler, steps: 2, guidance: 2.0, size: 32}}
text_encoder: minilm
"""
TOL = 1e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_worker(rank: int, world: int, jobs: list[tuple[str, list[str], dict, int]]) -> None:
    """One rank: for each job (config path, --set overrides, train kwargs, port) call train with
    the environment torchrun would give it."""
    torch.set_num_threads(1)
    for config, overrides, kwargs, port in jobs:
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        train(load_config(config, overrides), progress=False, **kwargs)


def _spawn(world: int, jobs: list[tuple[str, list[str], dict]]) -> None:
    mp.spawn(_rank_worker, args=(world, [(*job, _free_port()) for job in jobs]), nprocs=world, join=True)


def _losses(out: Path) -> list[tuple[int, float, float]]:
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if line.strip()]
    return [(r["step"], r["loss"], r["grad_norm"]) for r in rows if "loss" in r]


def _state(out: Path, cfg: Config) -> tuple[int, dict[str, torch.Tensor]]:
    """The run's training state (one-process file or sharded, any world size) loaded into one
    plain process: {"model.K", "ema.K", "opt.I.NAME"} and the step."""
    model = DiT(cfg.model)
    loop = TrainingLoop(model, TrainSettings(steps=STEPS, lr=1e-3, ema_decay=0.9))
    step = loop.resume(out)
    tensors = {f"model.{k}": v for k, v in loop.model.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in loop.ema.state_dict().items()})
    for i, st in loop.optimizer.state_dict()["state"].items():
        tensors.update({f"opt.{i}.{k}": v for k, v in st.items() if torch.is_tensor(v)})
    return step, tensors


def _assert_close(a: dict, b: dict, tol: float, what: str) -> None:
    assert a.keys() == b.keys() and a, what
    worst = max((float((a[k].float() - b[k].float()).abs().max()), k) for k in a)
    assert worst[0] <= tol, f"{what}: {worst[1]} differs by {worst[0]:.3g} (> {tol})"


def _assert_same_run(a: Path, b: Path, cfg: Config, tol: float) -> None:
    """Same log (losses, grad norms), training state and exported model, to `tol` (0: exactly)."""
    la, lb = _losses(a), _losses(b)
    assert [r[0] for r in la] == [r[0] for r in lb] == list(range(1, STEPS + 1))
    for ra, rb in zip(la, lb):
        assert abs(ra[1] - rb[1]) <= tol and abs(ra[2] - rb[2]) <= max(tol, 1e-5) * max(1.0, ra[2]), (a, ra, rb)
    (sa, ta), (sb, tb) = _state(a, cfg), _state(b, cfg)
    assert sa == sb == STEPS
    _assert_close(ta, tb, tol, f"training state {a.name} vs {b.name}")
    _assert_close(load_file(str(a / "model" / MODEL_FILE)), load_file(str(b / "model" / MODEL_FILE)), tol,
                  f"model folder {a.name} vs {b.name}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process with the global batch (whole, and stopped at STOP then resumed by FSDP2 on 2
    ranks); FSDP2 on 2 ranks (whole, and stopped at STOP then resumed); DDP on 2 ranks; the FSDP
    checkpoint at STOP resumed by `torchrun -m ditkit train` (DDP), by one plain process and by
    one process in a process group of its own."""
    root = tmp_path_factory.mktemp("dist")
    config = root / "tiny.yaml"
    config.write_text(CONFIG)
    cfg = load_config(str(config), [f"train.output_dir={root / 'one'}"])
    train(cfg, progress=False)
    train(load_config(str(config), [f"train.output_dir={root / 'fsdp_from_one'}"]), progress=False, stop_after=STOP)

    def job(name: str, *sets: str, **kwargs) -> tuple[str, list[str], dict]:
        return str(config), [f"train.output_dir={root / name}", *sets], kwargs

    _spawn(2, [job("fsdp", "train.parallel=fsdp"), job("fsdp_stopped", "train.parallel=fsdp", stop_after=STOP)])
    stopped = root / "fsdp_stopped"
    assert json.loads((stopped / POINTER).read_text())["step"] == STOP
    assert not (stopped / STATE_FILE).exists() and (stopped / "model" / MODEL_FILE).exists()
    for name in ("ddp_from_fsdp", "one_from_fsdp", "world1_from_fsdp"):
        shutil.copytree(stopped, root / name)
    _spawn(2, [job("fsdp_stopped", "train.parallel=fsdp", resume=True), job("ddp", "train.parallel=ddp"),
               job("fsdp_from_one", "train.parallel=fsdp", resume=True)])

    # The real entry point: train.parallel none under torchrun runs as DDP; it resumes the FSDP state.
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port",
                           str(_free_port()), "-m", "ditkit", "train", str(config), "--no-progress", "--resume",
                           "--set", f"train.output_dir={root / 'ddp_from_fsdp'}"],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(printed) == 1 and json.loads(printed[0])["step"] == STEPS, proc.stdout  # rank 0 alone prints

    train(load_config(str(config), [f"train.output_dir={root / 'one_from_fsdp'}"]), resume=True, progress=False)
    # One process with a process group of its own (train.parallel ddp without torchrun).
    train(load_config(str(config), [f"train.output_dir={root / 'world1_from_fsdp'}", "train.parallel=ddp"]),
          resume=True, progress=False)
    return root, cfg


def test_ddp_on_two_ranks_takes_the_steps_of_one_process_with_the_global_batch(runs):
    root, cfg = runs
    _assert_same_run(root / "ddp", root / "one", cfg, TOL)
    files = sorted(p.name for p in (root / "ddp").iterdir())
    assert files == ["config.yaml", "log.jsonl", "loss.png", "model", "train_state-00000004", POINTER], files


def test_fsdp_on_two_ranks_takes_the_steps_of_one_process_with_the_global_batch(runs):
    root, cfg = runs
    _assert_same_run(root / "fsdp", root / "one", cfg, TOL)


def test_a_stopped_fsdp_run_resumed_on_two_ranks_equals_the_uninterrupted_run_exactly(runs):
    root, cfg = runs
    _assert_same_run(root / "fsdp_stopped", root / "fsdp", cfg, 0.0)
    # the stopped run's state folder was replaced by the final one, nothing partial is left
    assert sorted(p.name for p in (root / "fsdp_stopped").iterdir() if "train_state" in p.name) == \
        ["train_state-00000004", POINTER]


def test_checkpoints_resume_on_another_world_size_and_mode(runs):
    """2-rank FSDP state -> one process, torchrun DDP, a world of one; a one-process state -> 2-rank FSDP."""
    root, cfg = runs
    for name in ("one_from_fsdp", "ddp_from_fsdp", "world1_from_fsdp", "fsdp_from_one"):
        _assert_same_run(root / name, root / "one", cfg, TOL)
    # One rank in a process group computes exactly what one plain process does.
    (_, plain), (_, world1) = _state(root / "one_from_fsdp", cfg), _state(root / "world1_from_fsdp", cfg)
    _assert_close(plain, world1, 0.0, "one plain process vs a world of one")
    assert _losses(root / "one_from_fsdp") == _losses(root / "world1_from_fsdp")
    # the plain process wrote the one-process state and dropped the sharded one
    assert (root / "one_from_fsdp" / STATE_FILE).exists() and not (root / "one_from_fsdp" / POINTER).exists()
    assert not list((root / "one_from_fsdp").glob("train_state-*"))
    # and the other way round: the distributed run replaced the one-process state by its shards
    assert (root / "fsdp_from_one" / POINTER).exists() and not (root / "fsdp_from_one" / STATE_FILE).exists()


@pytest.mark.parametrize("config, sets", [
    ("configs/shapes-64.yaml", ["train.pure_noise_fraction=0.3", "train.cfg_dropout=0.5"]),
    ("configs/digits-32.yaml", []),
    ("configs/shapes-64-inpaint.yaml", []),   # masks drawn in sequence over the global batch
    ("configs/shapes-upscale.yaml", []),      # odd steps at twice the size
    ("configs/shapes-64.yaml", ["train.stf_refs=2", "train.stf_min_t=0.3"]),  # references seeded per sample
])
def test_rank_slices_of_a_step_make_up_the_one_process_batch(config, sets):
    """Images, captions after dropout, noise, times, conditions and stable targets of ranks 0..3
    concatenate to the one-process batch exactly, for every training task."""
    root = Path(__file__).resolve().parents[1]
    cfg = load_config(str(root / config), [*sets, "train.batch_size=8", "data.size=32"])
    for step in (0, 3):
        whole = step_batch(cfg, step)
        parts = [step_batch(cfg, step, rank, 4) for rank in range(4)]
        assert all(len(p["captions"]) == 2 for p in parts)
        assert sum((p["captions"] for p in parts), []) == whole["captions"]
        for key in ("x0", "eps", "t", "cond", "x0_estimate"):
            if whole[key] is None:
                assert all(p[key] is None for p in parts), key
            else:
                assert torch.equal(torch.cat([p[key] for p in parts]), whole[key]), key


def test_unknown_parallel_mode_is_a_one_line_error(tmp_path, capsys):
    from ditkit.cli.main import main

    config = tmp_path / "tiny.yaml"
    config.write_text(CONFIG)
    with pytest.raises(ValueError, match="unknown train.parallel 'ddpp'; allowed: none, ddp, fsdp"):
        load_config(str(config), ["train.parallel=ddpp"])
    code = main(["train", str(config), "--set", "train.parallel=ddpp", "--set", f"train.output_dir={tmp_path / 'x'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "train.parallel" in err[0], err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("world, batch", [(3, 4), (8, 4)])
def test_a_world_that_does_not_split_the_global_batch_is_a_one_line_error(tmp_path, capsys, monkeypatch, world, batch):
    """Checked before the process group forms, so every rank fails at once instead of waiting."""
    from ditkit.cli.main import main

    config = tmp_path / "tiny.yaml"
    config.write_text(CONFIG)
    for key, value in (("RANK", "0"), ("WORLD_SIZE", str(world)), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(key, value)
    code = main(["train", str(config), "--set", f"train.batch_size={batch}", "--set",
                 f"train.output_dir={tmp_path / 'x'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert f"train.batch_size {batch} (the global batch) must be a multiple of the world size {world}" in err[0]
    assert not (tmp_path / "x").exists()
