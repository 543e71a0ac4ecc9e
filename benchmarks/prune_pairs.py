"""Joint ablation of block pairs: the validation flow-matching loss increase when two blocks
are skipped together (single-block ablation scores can miss how removals interact).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/prune_pairs.py --threads 2
"""

from __future__ import annotations

import argparse
import itertools

import torch

import ditkit
from ditkit.prune import skipping, validation_loss


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="shapes-64")
    p.add_argument("--threads", type=int)
    p.add_argument("--top", type=int, default=10)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = ditkit.load(args.model)
    model, enc, data = pipe.model.eval(), pipe.text_encoder, pipe.config["data"]
    base = validation_loss(model, enc, data["dataset"], data["size"])
    increase = {}
    for pair in itertools.combinations(range(len(model.blocks)), 2):
        with skipping(model, list(pair)):
            increase[pair] = validation_loss(model, enc, data["dataset"], data["size"]) - base
    print(f"base validation loss {base:.4f}\n\n| blocks skipped | loss increase |\n|---|---:|")
    for pair, inc in sorted(increase.items(), key=lambda kv: kv[1])[:args.top]:
        print(f"| {pair} | {inc:+.4f} |")


if __name__ == "__main__":
    main()
