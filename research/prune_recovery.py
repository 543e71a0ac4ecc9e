"""Pruning recovery recipes compared (issue: linearity analysis and pruning): remove K blocks of
shapes-64 chosen by measured ablation, recover with one recipe of ditkit.accel.prune.recovery_tune,
and score ShapesEval on the same prompts and seeds as the unpruned model.

    python research/prune_recovery.py --k 2 --steps 0                       # no recovery
    python research/prune_recovery.py --k 2 --times uniform --decay --lr 3e-4
    python research/prune_recovery.py --k 2 --batch 8 --guidance 4 --times uniform --decay --lr 3e-4
    python research/prune_recovery.py --k 2 --feature 1 --times uniform --decay

Each run prints one JSON line and appends it to --log (default runs/prune_recovery.jsonl).
The unpruned model's score and the ablation order are computed once and cached in --cache.
--save DIR keeps the recovered model folder.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch

import ditkit
from ditkit.core.checkpoint import save_model
from ditkit.evaluation.evaluate import shapes_eval
from ditkit.accel.prune import (RECOVERY_TIMES, block_scores, default_calibration_prompts, fit_linear_maps, recovery_tune,
                          removable_order, remove_blocks, teacher_trajectories)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="shapes-64")
    p.add_argument("--k", type=int, default=2, help="blocks to remove (chosen by measured ablation)")
    p.add_argument("--blocks", help="remove exactly these blocks (comma-separated; overrides --k), e.g. a pair "
                                    "chosen by research/prune_pairs.py")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--guidance", type=float, default=0.0, help="> 1: distil the guided velocity at this scale")
    p.add_argument("--feature", type=float, default=0.0, help="weight of block-output matching")
    p.add_argument("--times", default="logit-normal", choices=RECOVERY_TIMES)
    p.add_argument("--decay", action="store_true", help="linear learning-rate decay to zero")
    p.add_argument("--ema", type=float, default=0.0)
    p.add_argument("--linear", action="store_true", help="replace the removed blocks by fitted linear maps")
    p.add_argument("--gradual", action="store_true",
                   help="remove the blocks one at a time (in --blocks order, or least harmful first), each "
                        "followed by steps/K of the recovery, instead of all at once; the steps add up to --steps")
    p.add_argument("--train-blocks", help="tune only these blocks (comma-separated, the student's numbering; "
                                          "everything else frozen), e.g. the stand-ins and their neighbours")
    p.add_argument("--on-trajectory", type=int, default=0, metavar="IMAGES",
                   help="record the teacher's guided Euler paths for this many training captions and draw "
                        "half of every batch from their states (0: off)")
    p.add_argument("--trajectory-below", type=float, default=1.0, metavar="T",
                   help="keep only the recorded trajectory states with t < T (e.g. 0.8: after the layout phase)")
    p.add_argument("--trajectory-above", type=float, default=0.0, metavar="T",
                   help="keep only the recorded trajectory states with t >= T (e.g. 0.8: the layout phase)")
    p.add_argument("--on-policy", action="store_true",
                   help="record the --on-trajectory paths from the pruned student itself (at the start and "
                        "every --refresh steps) instead of the teacher; the target stays the teacher's velocity")
    p.add_argument("--refresh", type=int, default=0, metavar="STEPS",
                   help="with --on-policy: re-record the student's paths every STEPS steps (0: once)")
    p.add_argument("--tune-seed", type=int, default=0, help="the recovery's data and noise seed")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--per-category", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache", default="runs/prune_recovery_cache.json")
    p.add_argument("--log", default="runs/prune_recovery.jsonl")
    p.add_argument("--save")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    pipe = ditkit.load(args.model)
    teacher, enc, sample = pipe.model.eval(), pipe.text_encoder, pipe.defaults
    data = pipe.config["data"]
    cache_path = Path(args.cache)
    key = f"{args.model}|{args.per_category}|{args.seed}"
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    if key not in cache:
        ref = shapes_eval(teacher, enc, sample, args.per_category, args.seed)
        ablation = block_scores(teacher, enc, "ablation", data["dataset"], data["size"],
                                default_calibration_prompts(data["dataset"]))["ablation"]
        cache[key] = {"overall": ref["overall"], "categories": ref["categories"], "ablation": ablation}
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        cache_path.write_text(json.dumps(cache, indent=2))
    ref = cache[key]
    if args.blocks:
        order = [int(b) for b in args.blocks.split(",")]
    else:
        order = removable_order({"ablation": ref["ablation"]}, "ablation")[:args.k]
    chosen = sorted(order)
    t0 = time.time()
    def record(model, seed: int = 0) -> dict:
        paths = teacher_trajectories(model, enc, data["dataset"], data["size"], args.on_trajectory, sample.guidance,
                                     sample.steps, seed=seed, shift=sample.shift, above=args.trajectory_above)
        if args.trajectory_below < 1.0:
            keep = paths["t"] < args.trajectory_below
            paths = {"x": paths["x"][keep], "t": paths["t"][keep],
                     "captions": [c for c, k in zip(paths["captions"], keep.tolist()) if k]}
        return paths

    if args.on_policy and not args.on_trajectory:
        p.error("--on-policy needs --on-trajectory N")
    recordings = itertools.count()  # each refresh draws fresh captions and noise
    paths = (None if not args.on_trajectory else
             (lambda student: record(student, next(recordings))) if args.on_policy else record(teacher))

    def progress(i: int, n: int) -> None:
        if i % 50 == 0:
            print(f"step {i}/{n} {time.time() - t0:.0f} s", file=sys.stderr, flush=True)

    def tune(student, steps: int, kept) -> list[dict]:
        if args.train_blocks:  # AdamW skips parameters that get no gradient
            trainable = {int(b) for b in args.train_blocks.split(",")}
            for name, param in student.named_parameters():
                parts = name.split(".")
                param.requires_grad_(parts[0] == "blocks" and int(parts[1]) in trainable)
        return recovery_tune(student, teacher, enc, data["dataset"], data["size"], steps, lr=args.lr,
                             batch_size=args.batch, precision=args.precision, kept=kept, guidance=args.guidance,
                             feature_weight=args.feature, times=args.times, lr_decay=args.decay,
                             ema_decay=args.ema, callback=progress, trajectories=paths,
                             refresh_every=args.refresh, seed=args.tune_seed)

    # Gradual removal (as gradual pruning schedules do): each phase removes one more block
    # from the model the previous phase recovered, so each recovery has one block's loss
    # to make up rather than all of them at once.
    phases = [[b] for b in order] if args.gradual else [order]
    student, removed, log = teacher, [], []
    for i, phase in enumerate(phases):
        # the phase's blocks in the current student's numbering (skipped blocks shift the rest down)
        here = [b - sum(r < b for r in removed if not args.linear) for b in phase]
        maps = fit_linear_maps(student, enc, here, data["dataset"], data["size"]) if args.linear and here else None
        student = remove_blocks(student, here, maps)
        removed += phase
        kept = [j for j in range(len(teacher.blocks)) if j not in removed or args.linear]
        steps = args.steps // len(phases) + (i < args.steps % len(phases))
        log += tune(student, steps, kept) if here else []
    tune_seconds = time.time() - t0
    res = shapes_eval(student.eval(), enc, sample, args.per_category, args.seed)
    row = {"recipe": {k: v for k, v in vars(args).items() if k not in ("cache", "log", "save", "threads")},
           "removed_blocks": chosen, "tune_seconds": round(tune_seconds), "shapes": res["overall"],
           "categories": res["categories"], "unpruned": ref["overall"], "delta": round(res["overall"] - ref["overall"], 4),
           "final_loss": log[-1] if log else None}
    print(json.dumps(row), flush=True)
    Path(args.log).parent.mkdir(parents=True, exist_ok=True)
    with open(args.log, "a") as f:
        f.write(json.dumps(row) + "\n")
    if args.save:
        # the source's other fields (data, trained_steps) carried over, as `ditkit prune` does
        extra = {k: v for k, v in pipe.config.items() if k not in ("model", "sample", "text_encoder", "format")}
        save_model(args.save, student, sample=sample, text_encoder=pipe.config.get("text_encoder", "minilm"),
                   extra={**extra, "pruning": {"source": args.model, "removed_blocks": chosen,
                                                    "by": "given" if args.blocks else "ablation",
                                                    "replace_linear": bool(args.linear), "depth_before": len(teacher.blocks),
                                                    "tune_steps": args.steps}})


if __name__ == "__main__":
    main()
