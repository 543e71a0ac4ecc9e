"""Where a model puts the two objects of ShapesEval's position prompts: for each image whose
two named objects are both detected, the component of their offset along the asked relation
(docs/shapes-world.md's position rule: > 0.5 holds, < -0.5 is the opposite relation, between is "beside").
A model that ignores the relation word spreads these evenly over [-1, 1].

    OMP_NUM_THREADS=2 .venv/bin/python research/position_errors.py --model shapes-64 --num 50 --threads 2
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import torch

import ditkit
from ditkit.data import shapes
from ditkit.evaluation.shapes_detector import detect
from ditkit.evaluation.shapes_scoring import best_relation, matches


def relation_components(images, captions) -> tuple[list[float], int]:
    """Components along the asked relation (one per image with both objects), and how many lacked one."""
    comps, missing = [], 0
    for image, caption in zip(images, captions):
        parsed = shapes.parse_caption(caption)
        dets = detect(image)
        firsts, seconds = (matches(dets, clause) for clause in parsed["clauses"])
        if not firsts or not seconds:
            missing += 1
            continue
        # The best pair, as the evaluator takes it; -inf (every pair on top of each other) has no direction.
        best = best_relation(dets, parsed)
        comps.append(best if math.isfinite(best) else 0.0)
    return comps, missing


def category_images(doc: str, category: str) -> tuple[argparse.Namespace, list[str], list]:
    """The command line (--model --num --seed --batch --threads), ShapesEval's --num prompts
    of one category (benchmark seed --seed) and the model's images, image i from noise
    seed --seed + i."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--model", default="shapes-64")
    p.add_argument("--num", type=int, default=50, help=f"{category} prompts (ShapesEval's, seed --seed)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=25)
    p.add_argument("--threads", type=int)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = ditkit.load(args.model)
    captions = [c for cat, c in shapes.benchmark_prompts(args.num, seed=args.seed) if cat == category]
    images = []
    for i in range(0, len(captions), args.batch):
        images += pipe.generate(captions[i:i + args.batch], seed=args.seed + i)
    return args, captions, images


def main() -> None:
    args, captions, images = category_images(__doc__, "position")
    comps, missing = relation_components(images, captions)
    c = np.array(comps)
    row = {"model": args.model, "prompts": len(captions), "objects_missing": missing,
           "holds": int((c > 0.5).sum()), "beside": int(((c >= -0.5) & (c <= 0.5)).sum()),
           "opposite": int((c < -0.5).sum()),
           "holds_given_objects": round(float((c > 0.5).mean()), 3) if len(c) else None,
           "component_quartiles": [round(float(q), 2) for q in np.quantile(c, [0.25, 0.5, 0.75])] if len(c) else []}
    print(json.dumps(row))


if __name__ == "__main__":
    main()
