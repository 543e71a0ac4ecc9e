"""Block pruning of diffusers transformers (PixArtTransformer2DModel, SD3Transformer2DModel)
saved in a local folder, with the same selectors as ditkit models; scoring, ablation and
recovery are data-free (no training data travels with a bare transformer)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from ditkit.accel.prune.selection import SELECTORS, check_k, check_selector, removable_order
from ditkit.analysis.linearity import analyze_diffusers, find_blocks
from ditkit.interop.diffusers_folder import calibration_inputs, load_diffusers_transformer
from ditkit.training.loop import TrainingLoop, TrainSettings


def remove_diffusers_blocks(transformer: nn.Module, remove: Sequence[int]) -> nn.Module:
    """A copy of a diffusers transformer without the given `transformer_blocks`; its config's
    num_layers is updated so save_pretrained / from_pretrained round-trip."""
    blocks = find_blocks(transformer)
    depth = len(blocks)
    idx = sorted({int(i) for i in remove})
    if any(not 0 <= i < depth for i in idx) or len(idx) >= depth:
        raise ValueError(f"block indices must be distinct, in 0..{depth - 1}, and leave at least one block; got {list(remove)}")
    new = copy.deepcopy(transformer)
    new.transformer_blocks = nn.ModuleList(b for i, b in enumerate(new.transformer_blocks) if i not in idx)
    new.register_to_config(num_layers=len(new.transformer_blocks))
    return new


def _diffusers_out(transformer: nn.Module, inputs: dict, t: torch.Tensor) -> torch.Tensor:
    return transformer(**{**inputs, "timestep": t}, return_dict=False)[0]


def diffusers_ablation(transformer: nn.Module, inputs: dict) -> list[float]:
    """Data-free ablation: mean squared change of the model output over the calibration
    time bins when each block alone is skipped."""
    blocks = find_blocks(transformer)
    batch = inputs["hidden_states"].shape[0]
    ts = [torch.full((batch,), float(t)) for t in inputs["timestep"]]
    with torch.no_grad():
        ref = [_diffusers_out(transformer, inputs, t) for t in ts]
        costs = []
        for i in range(len(blocks)):
            keep = transformer.transformer_blocks
            transformer.transformer_blocks = nn.ModuleList(b for j, b in enumerate(keep) if j != i)
            try:
                costs.append(float(sum(torch.mean((_diffusers_out(transformer, inputs, t) - r) ** 2)
                                       for t, r in zip(ts, ref)) / len(ts)))
            finally:
                transformer.transformer_blocks = keep
    return costs


def prune_diffusers(path: str | Path, remove: int, by: str = "influence", tune_steps: int = 100,
                    out_dir: str | Path | None = None, lr: float = 1e-4, seed: int = 0,
                    callback: Callable[[int, int], None] | None = None) -> dict:
    """Prune a diffusers transformer folder (save_pretrained layout) with the same selectors.

    No training data travels with a bare transformer, so scoring, ablation and recovery are
    data-free: Gaussian latents and text states over the time bins
    (interop.diffusers_folder.calibration_inputs), and recovery distils the unpruned model's
    output at random times on fresh Gaussian inputs. With real latents and prompt
    embeddings, call analyze_diffusers / remove_diffusers_blocks directly."""
    teacher = load_diffusers_transformer(path)
    depth = len(find_blocks(teacher))
    check_k(remove, depth)
    check_selector(by, SELECTORS)
    if tune_steps < 0:
        raise ValueError(f"tune steps must be >= 0, got {tune_steps}")
    inputs = calibration_inputs(teacher, seed=seed)
    if by == "ablation":
        scores = {"ablation": diffusers_ablation(teacher, inputs)}
    else:
        scores = {k: v for k, v in analyze_diffusers(teacher, inputs)["mean"].items() if k in ("influence", "linearity")}
    chosen = sorted(removable_order(scores, by)[:remove]) if remove else []
    student = remove_diffusers_blocks(teacher, chosen)
    student.train()
    steps = tune_steps if chosen else 0
    loop = TrainingLoop(student, TrainSettings(steps=steps, lr=lr))  # constant rate, no clipping, no EMA
    # one stream of times over the run (no resume here, so the loop's per-step seeding is not needed)
    g = torch.Generator().manual_seed(seed + 1)
    log = []

    def loss_fn(step: int) -> torch.Tensor:
        fresh = calibration_inputs(teacher, num_timesteps=1, seed=seed + 1000 + step)
        t = torch.rand(fresh["hidden_states"].shape[0], generator=g) * 1000
        with torch.no_grad():
            target = _diffusers_out(teacher, fresh, t)
        return torch.mean((_diffusers_out(loop.net, fresh, t) - target) ** 2)

    def on_step(done: int, loss: float, stats: dict) -> None:
        log.append({"step": done, "distill_loss": loss})
        if callback:
            callback(done, tune_steps)

    loop.run(loss_fn, on_step=on_step)
    student.eval()
    summary = {"source": str(path), "removed_blocks": chosen, "by": by, "depth_before": depth,
               "depth_after": len(student.transformer_blocks),
               "parameters_before": sum(p.numel() for p in teacher.parameters()),
               "parameters_after": sum(p.numel() for p in student.parameters()),
               "tune_steps": steps, "scores": scores, "tune_log": log[-5:]}
    if out_dir is not None:
        student.save_pretrained(str(out_dir))
        summary["out_dir"] = str(out_dir)
    summary["model"] = student
    return summary
