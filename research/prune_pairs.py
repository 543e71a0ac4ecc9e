"""Joint ablation of block pairs: the validation flow-matching loss increase when two blocks
are skipped together (single-block ablation scores can miss how removals interact).

    OMP_NUM_THREADS=2 .venv/bin/python research/prune_pairs.py --threads 2
    OMP_NUM_THREADS=2 .venv/bin/python research/prune_pairs.py --threads 2 --linear --shapes 10 --seed 1

--linear puts the paper's fitted linear stand-ins (ditkit prune --replace-linear) in place
of the two blocks instead of skipping them. --shapes N also scores ShapesEval (N prompts
per category, --seed) for every pair before any recovery, the measure the pruning target
is set in. --with I,J screens the sets made of those blocks plus one more instead of the
pairs (a greedy step towards removing more blocks), e.g. --with 1,7 for 37.5%.
"""

from __future__ import annotations

import argparse
import itertools
import json

import torch

import ditkit
from ditkit.evaluation.evaluate import shapes_eval
from ditkit.accel.prune import fit_linear_maps, remove_blocks, validation_loss


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="shapes-64")
    p.add_argument("--threads", type=int)
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--linear", action="store_true", help="fitted linear stand-ins instead of skipping")
    p.add_argument("--shapes", type=int, default=0, help="ShapesEval prompts per category for each pair (0: off)")
    p.add_argument("--seed", type=int, default=1, help="ShapesEval seed (1: the tuning seed)")
    p.add_argument("--with", dest="fixed", help="screen these blocks (comma-separated) plus each other block")
    p.add_argument("--out", help="write every pair's results here as JSON")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = ditkit.load(args.model)
    model, enc, data = pipe.model.eval(), pipe.text_encoder, pipe.config["data"]
    depth = len(model.blocks)
    maps = fit_linear_maps(model, enc, range(depth), data["dataset"], data["size"]) if args.linear else {}
    base = validation_loss(model, enc, data["dataset"], data["size"])
    rows = {}
    if args.fixed:
        fixed = tuple(int(b) for b in args.fixed.split(","))
        sets = [tuple(sorted(fixed + (b,))) for b in range(depth) if b not in fixed]
    else:
        sets = list(itertools.combinations(range(depth), 2))
    for pair in sets:
        pruned = remove_blocks(model, pair, {i: maps[i] for i in pair} if maps else None).eval()
        row = {"loss_increase": validation_loss(pruned, enc, data["dataset"], data["size"]) - base}
        if args.shapes:
            row["shapes"] = shapes_eval(pruned, enc, pipe.defaults, args.shapes, args.seed)["overall"]
        rows[pair] = row
        print(pair, json.dumps(row), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"base_loss": base, "linear": args.linear, "shapes_per_category": args.shapes,
                       "seed": args.seed, "pairs": {",".join(map(str, k)): r for k, r in rows.items()}}, f, indent=1)
    kind = "replaced by linear maps" if args.linear else "skipped"
    print(f"base validation loss {base:.4f}\n\n| blocks {kind} | loss increase |"
          + (" ShapesEval |" if args.shapes else "") + "\n|---|---:|" + ("---:|" if args.shapes else ""))
    for pair, row in sorted(rows.items(), key=lambda kv: kv[1]["loss_increase"])[:args.top]:
        print(f"| {pair} | {row['loss_increase']:+.4f} |" + (f" {row['shapes']:.3f} |" if args.shapes else ""))


if __name__ == "__main__":
    main()
