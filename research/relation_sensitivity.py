"""Does a model read the relation word of a position caption? Two measurements on the
same real scenes and noise, so a few hundred images give a clear answer:

1. The flow loss on generated position scenes (the training data) at several times t, with
   the true caption, with the relation replaced by its opposite ("left of" <-> "right of",
   "above" <-> "below"), with the two clauses swapped (the same layout said the other way
   round: an equally true caption) and with the empty caption. A model that uses the
   relation scores the true caption better than the opposite one at high t, where the
   layout is still undecided; a model that ignores it scores them the same.
2. The layout of the first step's x0 prediction (t = 1, guidance as in the model's
   defaults) for "a red circle RELATION a blue square" over many noise seeds: the mean
   offset of the red mass from the blue mass. It must follow the relation for the sampler
   to place the objects by the caption; it cannot change with the relation if the model
   ignores the word.
3. What the relation is worth: the loss an ideal model saves at t = 1 by knowing it. There
   the best prediction is the mean image of all scenes a caption allows, so the saving is
   the mean squared distance of each relation's mean image (scenes drawn by the generator
   for "a red circle RELATION a blue square") from the mean over the four relations.

    OMP_NUM_THREADS=2 .venv/bin/python research/relation_sensitivity.py --model shapes-64 --threads 2
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

import ditkit
from ditkit.data import shapes
from ditkit.core.images import to_tensor

OPPOSITE = shapes.OPPOSITE_RELATION


def red_blue(relation: str) -> str:
    """The probe caption of measurements 2 and 3."""
    return f"a red circle {relation} a blue square"


def split_relation(caption: str) -> tuple[str, str, str]:
    """(first clause, relation, second clause) of a position caption."""
    for relation in OPPOSITE:
        if f" {relation} " in caption:
            first, second = caption.split(f" {relation} ")
            return first, relation, second
    raise ValueError(f"not a position caption: {caption!r}")


def opposite_relation(caption: str) -> str:
    first, relation, second = split_relation(caption)
    return f"{first} {OPPOSITE[relation]} {second}"


def swapped_clauses(caption: str) -> str:
    first, relation, second = split_relation(caption)
    return f"{second} {OPPOSITE[relation]} {first}"


def caption_losses(model, encoder, scenes, times, seed: int) -> list[dict]:
    """Per t: the mean flow loss under each caption variant, on the same x_t."""
    x0 = torch.cat([to_tensor(shapes.render(s.objects, 64)) for s in scenes])
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    captions = [s.caption for s in scenes]
    variants = {"true": captions, "opposite_relation": [opposite_relation(c) for c in captions],
                "swapped_clauses": [swapped_clauses(c) for c in captions], "empty": [""] * len(captions)}
    contexts = {k: encoder.encode(v, "cpu") for k, v in variants.items()}
    rows = []
    for t in times:
        xt = (1 - t) * x0 + t * eps
        tt = torch.full((len(scenes),), float(t))
        row = {"t": t}
        for name, (ctx, mask) in contexts.items():
            with torch.no_grad():
                v = model(xt, tt, ctx, mask)
            row[name] = round(float(((v - (eps - x0)) ** 2).mean()), 5)
        rows.append(row)
    return rows


def color_centroid(x0: torch.Tensor, color: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, the (x, y) centroid of a soft mask of pixels near a palette color."""
    rgb = torch.tensor(shapes.PALETTE[color]).float() / 127.5 - 1
    weight = torch.exp(-((x0 - rgb[None, :, None, None]) ** 2).sum(1) / 0.5)  # (N, H, W)
    coords = torch.arange(x0.shape[-1]).float()
    total = weight.sum((-1, -2)) + 1e-8
    return (weight.sum(-2) * coords).sum(-1) / total, (weight.sum(-1) * coords).sum(-1) / total


def first_step_layout(model, encoder, guidance: float, n: int, seed: int) -> list[dict]:
    """Mean red-minus-blue centroid offset (pixels) of the t=1 x0 prediction, per relation."""
    noise = torch.randn(n, model.config.in_channels, 64, 64, generator=torch.Generator().manual_seed(seed))
    uncond, umask = encoder.encode([""] * n, "cpu")
    t = torch.ones(n)
    rows = []
    for relation in shapes.RELATIONS:
        cond, cmask = encoder.encode([red_blue(relation)] * n, "cpu")
        with torch.no_grad():
            vc, vu = model(noise, t, cond, cmask), model(noise, t, uncond, umask)
        x0 = noise - (vu + guidance * (vc - vu))  # x0 = x_1 - 1 * v
        (rx, ry), (bx, by) = color_centroid(x0, "red"), color_centroid(x0, "blue")
        rows.append({"relation": relation, "red_minus_blue_dx": round(float((rx - bx).mean()), 2),
                     "red_minus_blue_dy": round(float((ry - by).mean()), 2)})
    return rows


def relation_value(n: int, seed: int) -> float:
    """Per-element MSE an ideal t = 1 predictor saves by knowing the relation (see 3. above)."""
    rng = np.random.default_rng(seed)
    means = []
    for relation in shapes.RELATIONS:
        total = sum(np.asarray(shapes.render(shapes.scene_for_caption(red_blue(relation), rng, 64).objects, 64),
                               dtype=np.float64)
                    for _ in range(n))
        means.append(total / n / 127.5 - 1)
    overall = sum(means) / len(means)
    return float(np.mean([((m - overall) ** 2).mean() for m in means]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="shapes-64")
    p.add_argument("--scenes", type=int, default=128, help="position scenes for the loss comparison")
    p.add_argument("--seeds", type=int, default=64, help="noise seeds for the first-step layout")
    p.add_argument("--times", default="1.0,0.95,0.9,0.85,0.7,0.5")
    p.add_argument("--oracle-scenes", type=int, default=1500, help="scenes per relation for the ideal saving")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = ditkit.load(args.model)
    model, encoder = pipe.model.eval(), pipe.text_encoder
    rng = np.random.default_rng(args.seed)
    scenes = [shapes.sample_scene(rng, 64, "position") for _ in range(args.scenes)]
    times = [float(t) for t in args.times.split(",")]
    result = {"model": args.model, "scenes": args.scenes,
              "losses": caption_losses(model, encoder, scenes, times, args.seed + 1),
              "first_step": first_step_layout(model, encoder, pipe.config["sample"].guidance, args.seeds,
                                              args.seed + 2),
              "ideal_saving_at_t1": round(relation_value(args.oracle_scenes, args.seed + 3), 5)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
