"""Guidance against fidelity on the digits benchmark: judge accuracy and FWD ratio for a few
guidance scales and guidance intervals, to choose a model's default sampling on a tuning
seed (the reported figures use seed 0).

    python benchmarks/digits_guidance.py --model digits-32 --seed 1 --per-digit 20

FWD ratio = FWD(generated, real test) / FWD(as many real training images, real test).
"""

from __future__ import annotations

import argparse
import json
import warnings

import numpy as np

import ditkit
from ditkit.data import digits
from ditkit.evaluation.digits_judge import digit_accuracy
from ditkit.evaluation.fwd import fwd

from common import apply_threads

SETTINGS = [(1.0, (0.0, 1.0)), (1.5, (0.0, 1.0)), (2.0, (0.0, 1.0)), (3.0, (0.0, 1.0)), (3.0, (0.1, 0.8)),
            (4.0, (0.1, 0.7))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="digits-32")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--per-digit", type=int, default=20)
    p.add_argument("--threads", type=int)
    args = p.parse_args()
    apply_threads(args)
    warnings.simplefilter("ignore")  # FWD warns that 200 images < a packet's feature dimension at level 4
    train, test = digits.load_split("train").images, digits.load_split("test").images
    prompts = digits.benchmark_prompts(args.per_digit)
    n = len(prompts)
    base = fwd(train[np.random.default_rng(0).choice(len(train), n, replace=False)], test)
    pipe = ditkit.load(args.model)
    print("| guidance | interval | accuracy | FWD | FWD ratio |\n|---:|---|---:|---:|---:|")
    for g, interval in SETTINGS:
        images = pipe.generate(prompts, guidance=g, guidance_interval=interval, seed=args.seed, batch_size=50)
        acc = digit_accuracy(images, prompts)["accuracy"]
        d = fwd(np.stack([np.asarray(im) for im in images]), test)
        print(f"| {g} | {list(interval)} | {acc:.3f} | {d:.5f} | {d / base:.2f} |", flush=True)
    print(json.dumps({"baseline_fwd": base, "images": n}))


if __name__ == "__main__":
    main()
