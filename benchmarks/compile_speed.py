"""torch.compile against eager for shapes-64 sampling (issue 4, item 4):

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/compile_speed.py --threads 2

Seconds per image at batch 1 and 16 (median of 3, default sampling: Euler 25, CFG 4),
eager first, then compiled (the one-off compile time is reported separately)."""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import ditkit
from ditkit.api import generate_tensor


def timed(pipe, batch: int, repeats: int) -> float:
    prompts = (["a red circle to the left of a blue square", "three green triangles"] * batch)[:batch]
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        generate_tensor(pipe.model, pipe.text_encoder, prompts, pipe.defaults, r, batch_size=batch)
        times.append((time.perf_counter() - t0) / batch)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = ditkit.load("shapes-64")
    rows = {}
    for batch in (1, 16):
        timed(pipe, batch, 1)
        rows[f"eager b{batch}"] = timed(pipe, batch, args.repeats)
    t0 = time.perf_counter()
    pipe.compile()
    for batch in (1, 16):
        timed(pipe, batch, 1)  # compiles (a graph per batch shape)
    compile_s = time.perf_counter() - t0
    for batch in (1, 16):
        rows[f"compiled b{batch}"] = timed(pipe, batch, args.repeats)
    print(json.dumps({"seconds_per_image": rows, "compile_and_first_runs_s": compile_s}))
    for batch in (1, 16):
        e, c = rows[f"eager b{batch}"], rows[f"compiled b{batch}"]
        print(f"| {batch} | {e:.3f} | {c:.3f} | {e / c:.2f}x |")


if __name__ == "__main__":
    main()
