"""How much of a block's update a token-wise affine stand-in can explain, and whether richer
affine stand-ins would explain more (issue: linearity analysis and pruning).

    OMP_NUM_THREADS=1 .venv/bin/python research/standin_r2.py --blocks 1,4,5,7 --threads 1

For each block, fits Y ≈ F(X) W + b by least squares on held-out forward-noised data (the
inputs of ditkit.accel.prune.fit_linear_maps, twice as many batches) and reports R² of the block's
update Y - X on other held-out data, for these feature sets F:
- x: the shipped stand-in (the block input token alone);
- x, 4 time bins: a separate map for each quarter of t in [0, 1] (the blocks are
  time-modulated through adaLN; if that mattered, per-bin maps would explain more);
- x + token mean: the mean of the image's input tokens too (the cheapest cross-token term
  that attention could stand in for);
- x + position: a learned bias per token position;
- x + token mean + caption: also the caption's mean-pooled text embedding;
- all: x + token mean + caption + position.
Prints a markdown table.
"""

from __future__ import annotations

import argparse

import torch

import ditkit
from ditkit.core.flow import interpolate
from ditkit.accel.prune import block_io_rows, fixed_batches, solve_affine

FEATURES = ("x", "x, 4 time bins", "x + token mean", "x + position", "x + token mean + caption", "all")


def batches(enc, data, seed: int, n: int):
    """(model inputs, per-image t, per-image mean-pooled caption embedding) of n held-out batches."""
    inputs, ts, caps = [], [], []
    for x0, eps, t, ctx, mask in fixed_batches(enc, data["dataset"], data["size"], n, 32, seed, torch.device("cpu")):
        inputs.append((interpolate(x0, eps, t), t, ctx, mask))
        keep = mask.float().unsqueeze(-1) if mask is not None else torch.ones(ctx.shape[:2] + (1,))
        ts.append(t)
        caps.append((ctx * keep).sum(1) / keep.sum(1).clamp_min(1))
    return inputs, torch.cat(ts), torch.cat(caps)


def features(x: torch.Tensor, caps: torch.Tensor, kind: str) -> torch.Tensor:
    tokens = x.shape[0] // len(caps)
    parts = [x]
    if "mean" in kind or kind == "all":
        parts.append(x.view(len(caps), tokens, -1).mean(1).repeat_interleave(tokens, 0))
    if "caption" in kind or kind == "all":
        parts.append(caps.repeat_interleave(tokens, 0))
    if "position" in kind or kind == "all":
        parts.append(torch.eye(tokens).repeat(len(caps), 1))
    return torch.cat(parts, 1)


def update_r2(fx, fy, ft, vx, vy, vt, fcaps, vcaps, kind: str) -> float:
    update = vy - vx
    total = (update - update.mean(0)).pow(2).sum()
    if kind == "x, 4 time bins":
        err = 0.0
        for lo, hi in ((0, .25), (.25, .5), (.5, .75), (.75, 1.01)):
            f, v = (ft >= lo) & (ft < hi), (vt >= lo) & (vt < hi)
            a, b = solve_affine(fx[f], fy[f])
            err += (vx[v] @ a + b - vy[v]).pow(2).sum()
    else:
        a, b = solve_affine(features(fx, fcaps, kind), fy)
        err = (features(vx, vcaps, kind) @ a + b - vy).pow(2).sum()
    return float(1 - err / total)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="shapes-64")
    p.add_argument("--blocks", default="1,4,5,7")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    pipe = ditkit.load(a.model)
    model, enc, data = pipe.model.eval(), pipe.text_encoder, pipe.config["data"]
    blocks = [int(b) for b in a.blocks.split(",")]
    fit, fit_t, fit_caps = batches(enc, data, 80_001, 8)
    val, val_t, val_caps = batches(enc, data, 90_001, 2)
    fx, fy = block_io_rows(model, fit, blocks)
    vx, vy = block_io_rows(model, val, blocks)
    tokens = fx[blocks[0]].shape[0] // len(fit_t)
    ft, vt = fit_t.repeat_interleave(tokens), val_t.repeat_interleave(tokens)
    print(f"R² of the block update Y - X on held-out data ({len(val_t)} images x {tokens} tokens)\n")
    print("| block | " + " | ".join(FEATURES) + " |")
    print("|---|" + "---:|" * len(FEATURES))
    for i in blocks:
        r2 = [update_r2(fx[i], fy[i], ft, vx[i], vy[i], vt, fit_caps, val_caps, k) for k in FEATURES]
        print(f"| {i} | " + " | ".join(f"{r:.3f}" for r in r2) + " |", flush=True)


if __name__ == "__main__":
    main()
