"""Ways to fit the linear stand-ins of `ditkit prune --replace-linear`, scored before any recovery
(issue: linearity analysis and pruning).

    OMP_NUM_THREADS=1 .venv/bin/python research/standin_fits.py --variant {noised,noised_u,traj,noised_seq} --threads 1

Variants (each a least-squares token-wise affine map per block, as ditkit.accel.prune.fit_linear_maps):
- noised: the shipped fit (forward-noised held-out data, captioned, logit-normal times);
- noised_u: the same inputs run with and without their captions (the sampler's CFG batch);
- traj: the states of shapes-64's own CFG-guided Euler paths for --images training captions,
  with and without captions;
- noised_seq: noised_u's inputs, blocks fitted in order, each on the inputs of the model whose
  earlier blocks are already replaced, against the original's outputs (so a stand-in also
  corrects the error upstream of it).
Prints one JSON line (validation loss, ShapesEval per --seeds SEED:PER_CATEGORY) and appends it
to --log (default runs/standin_fit.jsonl).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import ditkit
from ditkit.evaluation.evaluate import shapes_eval
from ditkit.core.flow import interpolate
from ditkit.accel.prune import (block_io_rows, fit_linear_maps, fixed_batches, remove_blocks, solve_affine,
                                teacher_trajectories, validation_loss)


def noised_inputs(enc, data, uncond, batches=4):
    """fit_linear_maps's held-out forward-noised batches (same seed), optionally also without captions."""
    out = []
    for x0, eps, t, ctx, mask in fixed_batches(enc, data["dataset"], data["size"], batches, 32, 80_001, torch.device("cpu")):
        xt = interpolate(x0, eps, t)
        out.append((xt, t, ctx, mask))
        if uncond:
            c0, m0 = enc.encode([""] * len(xt), torch.device("cpu"))
            out.append((xt, t, c0, m0))
    return out


def traj_inputs(teacher, enc, data, sample, images, above=0.0):
    """States of the teacher's guided sampling paths, each with and without its caption."""
    paths = teacher_trajectories(teacher, enc, data["dataset"], data["size"], images, sample.guidance, sample.steps,
                                 seed=7, shift=sample.shift, above=above)
    out = []
    n = len(paths["t"])
    for s in range(0, n, 64):
        xt, t, caps = paths["x"][s:s + 64], paths["t"][s:s + 64], paths["captions"][s:s + 64]
        c, m = enc.encode(list(caps), torch.device("cpu"))
        out.append((xt, t, c, m))
        c0, m0 = enc.encode([""] * len(caps), torch.device("cpu"))
        out.append((xt, t, c0, m0))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--blocks", default="1,7")
    p.add_argument("--variant", required=True, choices=("noised", "noised_u", "traj", "noised_seq"))
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seeds", default="1:25,0:50")
    p.add_argument("--log", default="runs/standin_fit.jsonl", help="JSON lines file the result is appended to")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    pipe = ditkit.load("shapes-64")
    teacher, enc, sample, data = pipe.model.eval(), pipe.text_encoder, pipe.defaults, pipe.config["data"]
    blocks = [int(b) for b in a.blocks.split(",")]
    t0 = time.time()
    v = a.variant
    if v == "noised":
        maps = fit_linear_maps(teacher, enc, blocks, data["dataset"], data["size"])
    else:
        parts = []
        if "noised" in v:
            parts += noised_inputs(enc, data, uncond=True, batches=4)
        if "traj" in v:
            parts += traj_inputs(teacher, enc, data, sample, a.images, above=0.0)
        maps = {}
        if "seq" in v:
            for i in blocks:  # in order: each fitted on the student with the earlier ones replaced
                student = remove_blocks(teacher, list(maps), dict(maps)).eval() if maps else teacher
                xs, _ = block_io_rows(student, parts, [i])
                _, ys = block_io_rows(teacher, parts, [i])
                maps[i] = solve_affine(xs[i], ys[i])
        else:
            xs, ys = block_io_rows(teacher, parts, blocks)
            maps = {i: solve_affine(xs[i], ys[i]) for i in blocks}
    fit_s = time.time() - t0
    pruned = remove_blocks(teacher, blocks, maps).eval()
    row = {"blocks": blocks, "variant": v, "images": a.images, "fit_s": round(fit_s),
           "val_loss": validation_loss(pruned, enc, data["dataset"], data["size"])}
    for spec in a.seeds.split(","):
        seed, per = (int(s) for s in spec.split(":"))
        r = shapes_eval(pruned, enc, sample, per, seed)
        row[f"seed{seed}"] = r["overall"]
        row[f"seed{seed}_cat"] = r["categories"]
        print(json.dumps(row), file=sys.stderr, flush=True)
    print(json.dumps(row), flush=True)
    Path("runs").mkdir(exist_ok=True)
    with open(a.log, "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
