"""Block pruning table (issue: linearity analysis and pruning): remove 0, 12.5, 25, 37.5
and 50% of a model's blocks, chosen by one selector, recover each with a short
velocity-distillation fine-tune, and report parameters, seconds per image and
ShapesEval before and after recovery, all on the same prompts and seeds.

    python benchmarks/prune_table.py --model shapes-64 --by ablation --tune-steps 500 --per-category 50 \
        --save-k 2 --save-dir runs/shapes-64-pruned

Prints one JSON line per row and a Markdown table; --save-k K saves that row's tuned
model (config.json + model.safetensors with the pruning record) to --save-dir.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import ditkit
from ditkit.core.checkpoint import read_model_config, save_model
from ditkit.evaluation.evaluate import shapes_eval
from ditkit.engine import generate_tensor
from ditkit.accel.prune import block_scores, default_calibration_prompts, recovery_tune, remove_blocks, removable_order

from common import apply_threads


def seconds_per_image(model, encoder, sample, batch: int = 16, repeats: int = 2) -> float:
    prompts = ["a red circle to the left of a blue square"] * batch
    generate_tensor(model, encoder, prompts[:2], sample, 0)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        generate_tensor(model, encoder, prompts, sample, 0, batch_size=batch)
        best = min(best, (time.perf_counter() - t0) / batch)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="shapes-64")
    p.add_argument("--by", default="ablation", choices=["influence", "linearity", "ablation"])
    p.add_argument("--fractions", default="0,0.125,0.25,0.375,0.5")
    p.add_argument("--tune-steps", type=int, default=500)
    p.add_argument("--per-category", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int)
    p.add_argument("--save-k", type=int)
    p.add_argument("--save-dir")
    args = p.parse_args()
    apply_threads(args)
    pipe = ditkit.load(args.model)
    teacher, enc, sample = pipe.model.eval(), pipe.text_encoder, pipe.defaults
    data = pipe.config["data"]
    depth = len(teacher.blocks)
    t0 = time.time()
    scores = block_scores(teacher, enc, args.by, data["dataset"], data["size"],
                          default_calibration_prompts(data["dataset"]))
    order = removable_order(scores, args.by)
    print(json.dumps({"by": args.by, "scores": scores, "order": order, "score_seconds": time.time() - t0}), flush=True)
    rows = []
    for frac in [float(f) for f in args.fractions.split(",")]:
        k = round(frac * depth)
        chosen = sorted(order[:k])
        student = remove_blocks(teacher, chosen).eval()
        before = shapes_eval(student, enc, sample, args.per_category, args.seed)
        row = {"fraction": frac, "removed": k, "blocks": chosen,
               "parameters": sum(q.numel() for q in student.parameters()),
               "sec_per_image_b16": seconds_per_image(student, enc, sample),
               "shapes_before": before["overall"], "categories_before": before["categories"]}
        if k:
            t1 = time.time()
            log = recovery_tune(student, teacher, enc, data["dataset"], data["size"], args.tune_steps)
            row["tune_seconds"] = time.time() - t1
            row["tune_steps"] = args.tune_steps
            row["final_distill_loss"] = log[-1]["distill_loss"] if log else None
            after = shapes_eval(student, enc, sample, args.per_category, args.seed)
            row["shapes_after"], row["categories_after"] = after["overall"], after["categories"]
        else:
            row.update(tune_seconds=0.0, tune_steps=0, shapes_after=before["overall"],
                       categories_after=before["categories"])
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.save_k is not None and k == args.save_k and args.save_dir:
            src = read_model_config(Path(pipe.source))
            extra = {kk: v for kk, v in src.items() if kk not in ("model", "sample", "text_encoder", "format")}
            extra["pruning"] = {"source": args.model, "removed_blocks": chosen, "by": args.by,
                                "replace_linear": False, "depth_before": depth, "tune_steps": row["tune_steps"]}
            save_model(args.save_dir, student, sample=sample, text_encoder=pipe.config.get("text_encoder", "minilm"),
                       extra=extra)
    base = rows[0]
    print(f"\nselector: {args.by}; blocks in removal order: {order}\n")
    print("| removed | blocks | parameters | s/image (b16) | speedup | ShapesEval before tune | after tune | "
          "vs unpruned | tune steps | tune wall time |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['removed']}/{depth} ({100 * r['fraction']:.1f}%) | {r['blocks']} | {r['parameters']:,} | "
              f"{r['sec_per_image_b16']:.3f} | {base['sec_per_image_b16'] / r['sec_per_image_b16']:.2f}x | "
              f"{r['shapes_before']:.3f} | {r['shapes_after']:.3f} | {r['shapes_after'] - base['shapes_after']:+.3f} | "
              f"{r['tune_steps']} | {r['tune_seconds']:.0f} s |")


if __name__ == "__main__":
    main()
