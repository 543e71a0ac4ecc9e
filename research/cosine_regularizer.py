"""Does the layer-linearity regularizer (train.cosine_reg; Razzhigaev et al., ACL 2024)
help on the shapes world? For training runs that differ only in its weight: the validation
flow-matching loss, ShapesEval, and the mean per-block scores of `ditkit analyze`
(linearity, linearity with the residual removed, influence), in one table.

    for w in 0 0.05 -0.05; do ditkit train configs/shapes-64.yaml --set model.width=128 --set model.depth=6 \\
        --set train.steps=2500 --set train.warmup_steps=200 --set train.cooldown_steps=600 \\
        --set train.eval_every=0 --set train.precision=fp32 --set train.cosine_reg=$w \\
        --set train.output_dir=runs/cosreg-$w; done
    OMP_NUM_THREADS=2 .venv/bin/python research/cosine_regularizer.py runs/cosreg-0 runs/cosreg-0.05 runs/cosreg--0.05 --threads 2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

import ditkit
from ditkit.analysis.linearity import analyze_dit
from ditkit.evaluation.evaluate import shapes_eval
from ditkit.accel.prune import default_calibration_prompts, validation_loss

SCORES = ("linearity", "linearity_residual_removed", "influence")


def run_row(run: Path, per_category: int) -> dict:
    cfg = json.loads((run / "config.yaml").read_text())  # the trainer writes it as JSON
    pipe = ditkit.load(str(run / "model"))
    model, enc, data = pipe.model.eval(), pipe.text_encoder, pipe.config["data"]
    scores = analyze_dit(model, enc, default_calibration_prompts("shapes"), 8, sample=pipe.defaults)
    row = {"run": str(run), "cosine_reg": cfg["train"].get("cosine_reg", 0.0),
           "steps": pipe.config.get("trained_steps"),
           "val_loss": validation_loss(model, enc, data["dataset"], data["size"])}
    row.update({s: float(np.mean(scores["mean"][s])) for s in SCORES})
    row["per_block_linearity"] = [round(v, 3) for v in scores["mean"]["linearity"]]
    ev = shapes_eval(model, enc, pipe.defaults, per_category, seed=0)
    row["shapes_eval"] = ev["overall"]
    row["categories"] = ev["categories"]
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="training run folders (each with config.yaml and model/)")
    p.add_argument("--per-category", type=int, default=25)
    p.add_argument("--threads", type=int)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [run_row(run, args.per_category) for run in args.runs]
    cats = list(rows[0]["categories"])
    print("| cosine_reg | steps | val loss | linearity | lin. residual removed | influence | ShapesEval | "
          + " | ".join(cats) + " |")
    print("|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(cats))
    for r in rows:
        print(f"| {r['cosine_reg']:g} | {r['steps']} | {r['val_loss']:.4f} | {r['linearity']:.3f} | "
              f"{r['linearity_residual_removed']:.3f} | {r['influence']:.3f} | {r['shapes_eval']:.2f} | "
              + " | ".join(f"{r['categories'][c]:.2f}" for c in cats) + " |")
    print()
    for r in rows:
        print(f"cosine_reg {r['cosine_reg']:g}: per-block linearity {r['per_block_linearity']}")


if __name__ == "__main__":
    main()
