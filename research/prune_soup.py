"""Average the weights of several recoveries of the same pruned model (a uniform model soup,
Wortsman et al., ICML 2022) and score the average on ShapesEval.

    OMP_NUM_THREADS=1 .venv/bin/python research/prune_soup.py shapes-64-pruned runs/p17-trajhi-ts1 --threads 1

The models must share one architecture (the same blocks removed or replaced); they differ
only in their recovery data. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json

import torch

import ditkit
from ditkit.evaluation.evaluate import shapes_eval


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help="embedded model names or folders, at least two")
    p.add_argument("--per-category", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    if len(args.models) < 2:
        p.error("give at least two models to average")
    torch.set_num_threads(args.threads)
    pipes = [ditkit.load(m) for m in args.models]
    states = [pipe.model.state_dict() for pipe in pipes]
    if any(s.keys() != states[0].keys() or any(s[k].shape != states[0][k].shape for k in s) for s in states):
        p.error("the models differ in architecture; a soup needs the same blocks removed in each")
    soup = {k: sum(s[k].float() for s in states) / len(states) for k in states[0]}
    first = pipes[0]
    first.model.load_state_dict(soup)
    res = shapes_eval(first.model.eval(), first.text_encoder, first.defaults, args.per_category, args.seed)
    print(json.dumps({"models": args.models, "shapes": res["overall"], "categories": res["categories"]}))


if __name__ == "__main__":
    main()
