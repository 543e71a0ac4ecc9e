"""The whole pruning recipe for a ditkit model folder: choose K blocks, remove them (or
replace them by linear stand-ins), recover, save a smaller self-describing checkpoint."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

import torch

from ditkit.accel.prune.recovery import DEFAULT_RECOVERY, recovery_tune, teacher_trajectories
from ditkit.accel.prune.selection import (PRUNE_SELECTORS, benchmark_screen, block_scores, check_k, check_selector,
                                          removable_order)
from ditkit.analysis.calibration import default_calibration_prompts
from ditkit.analysis.standins import fit_linear_maps
from ditkit.analysis.surgery import check_remove, remove_blocks
from ditkit.core.checkpoint import load_model, read_model_config, resolve_model, save_model
from ditkit.core.encoders import get_text_encoder


def prune_model(model: str | Path, remove: int, by: str = "influence", replace_linear: bool = False,
                tune_steps: int = 500, out_dir: str | Path | None = None, prompts: Sequence[str] | None = None,
                lr: float = 5e-5, batch_size: int = 16, precision: str = "bf16", device: str = "cpu",
                callback: Callable[[int, int], None] | None = None, recovery: dict | None = None,
                blocks: Sequence[int] | None = None, screen_callback: Callable[[int, int], None] | None = None,
                screen_per_category: int = 10) -> dict:
    """Remove `remove` blocks of a model folder / embedded model chosen by `by`, recover with
    `tune_steps` distillation steps, and save the result to out_dir (config.json +
    model.safetensors, recording what was removed). Returns a summary dict.

    recovery: recovery_tune options (guidance, feature_weight, times, lr_decay, ema_decay), plus
    trajectory_images: N to draw half of every batch from the teacher's own CFG paths for N
    training captions, and trajectory_above: T to keep only their states with t >= T
    (teacher_trajectories).

    by "benchmark": choose the blocks jointly by the model's own benchmark on its tuning
    seed (benchmark_screen with screen_per_category prompts per category; screen_callback(done,
    total) reports its evaluations).

    blocks: remove exactly these block indices instead (`remove` must then be their number
    or None). On shapes-64 a pair chosen by ShapesEval with linear stand-ins beat the pair
    that single-block ablation picks (docs/benchmarks.md, "Which blocks to remove")."""
    folder = resolve_model(model)
    teacher, cfg = load_model(folder, device)
    teacher = teacher.eval()
    encoder = get_text_encoder(cfg.get("text_encoder", "minilm"), device=torch.device(device))
    defaults = cfg["sample"]
    depth = len(teacher.blocks)
    if blocks is not None:
        blocks = check_remove(teacher, blocks)
        if remove is not None and remove != len(blocks):
            raise ValueError(f"remove={remove} does not match the {len(blocks)} blocks given ({blocks})")
        remove, by = len(blocks), "given"
    check_k(remove, depth)
    if blocks is None:
        check_selector(by, PRUNE_SELECTORS)
    if tune_steps < 0:
        raise ValueError(f"tune steps must be >= 0, got {tune_steps}")
    if prompts is not None and not list(prompts):
        raise ValueError("the calibration prompts are empty")
    data = cfg.get("data") or {}
    dataset, size = data.get("dataset"), int(data.get("size", defaults.size))
    if dataset is None:
        raise ValueError("this model does not record its training data (config.json 'data'); "
                         "pruning needs it for calibration and recovery")
    prompts = list(prompts) if prompts is not None else default_calibration_prompts(dataset)
    t0 = time.time()
    all_maps = None  # the stand-ins of every block, when the screen fits them
    if blocks is not None:
        scores, chosen = {}, blocks
    elif remove == 0:
        scores, chosen = {}, []
    elif by == "benchmark":
        all_maps = fit_linear_maps(teacher, encoder, range(depth), dataset, size) if replace_linear else None
        screen = benchmark_screen(teacher, encoder, remove, dataset, size, defaults, all_maps,
                                  per_category=screen_per_category, callback=screen_callback)
        scores, chosen = {"benchmark": screen}, screen["chosen"]
    else:
        scores = block_scores(teacher, encoder, by, dataset, size, prompts)
        chosen = sorted(removable_order(scores, by)[:remove])
    if not (replace_linear and chosen):
        maps = None
    elif all_maps is not None:  # each block's fit is independent of the others: reuse the screen's
        maps = {i: all_maps[i] for i in chosen}
    else:
        maps = fit_linear_maps(teacher, encoder, chosen, dataset, size)
    student = remove_blocks(teacher, chosen, maps)
    score_seconds = time.time() - t0
    t1 = time.time()
    kept = [i for i in range(depth) if i not in chosen or maps]  # the teacher block behind each student block
    options = {**DEFAULT_RECOVERY, **(recovery or {})}
    if options.get("guidance") == "model":
        options["guidance"] = defaults.guidance
    images = options.pop("trajectory_images", 0)
    above = options.pop("trajectory_above", 0.0)
    paths = None
    if images and chosen and tune_steps:  # recorded at the model's own sampling settings
        paths = teacher_trajectories(teacher, encoder, dataset, size, images, defaults.guidance,
                                     defaults.steps, shift=defaults.shift, above=above)
    log = recovery_tune(student, teacher, encoder, dataset, size, tune_steps, lr=lr,
                        batch_size=batch_size, precision=precision, callback=callback, kept=kept,
                        trajectories=paths, **options) if chosen else []
    if images:
        options.update(trajectory_images=images, trajectory_above=above)
    tune_seconds = time.time() - t1
    summary = {"source": str(folder), "removed_blocks": chosen, "by": by, "replace_linear": bool(replace_linear),
               "depth_before": depth, "depth_after": len(student.blocks),
               "parameters_before": sum(p.numel() for p in teacher.parameters()),
               "parameters_after": sum(p.numel() for p in student.parameters()),
               "tune_steps": tune_steps if chosen else 0, "tune_seconds": tune_seconds, "recovery": options if chosen else {},
               "score_seconds": score_seconds, "scores": scores, "tune_log": log}
    if out_dir is not None:
        src = read_model_config(folder)
        extra = {k: v for k, v in src.items() if k not in ("model", "sample", "text_encoder", "format")}
        extra["pruning"] = {k: summary[k] for k in ("source", "removed_blocks", "by", "replace_linear",
                                                    "depth_before", "tune_steps")}
        save_model(out_dir, student, sample=defaults, text_encoder=cfg.get("text_encoder", "minilm"), extra=extra)
        summary["out_dir"] = str(out_dir)
    summary["model"] = student
    return summary
