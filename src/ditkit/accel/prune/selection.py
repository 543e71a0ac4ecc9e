"""Which blocks to remove: per-block scores (influence and linearity from
ditkit.analysis.linearity, measured ablation from ditkit.analysis.ablation) and a greedy
joint screen by the dataset's own benchmark.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from ditkit.analysis.ablation import ablation_losses
from ditkit.analysis.calibration import validation_loss
from ditkit.analysis.linearity import analyze_dit
from ditkit.analysis.surgery import remove_blocks
from ditkit.core.model import DiT
from ditkit.evaluation.evaluate import digits_eval, shapes_eval

SELECTORS = ("influence", "linearity", "ablation")  # one score per block
# "benchmark" scores whole sets of removed blocks (benchmark_screen): on shapes-64 the
# per-block scores missed the best pair (docs/benchmarks.md, "Which blocks to remove").
PRUNE_SELECTORS = SELECTORS + ("benchmark",)


def check_selector(by: str, allowed: Sequence[str] = SELECTORS) -> None:
    if by not in allowed:
        raise ValueError(f"unknown selector {by!r}; allowed: {', '.join(allowed)}")


def check_k(k: int, depth: int) -> None:
    """ValueError unless K (the number of blocks to remove) is an integer with 0 <= K < depth."""
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 0 <= k < depth:
        raise ValueError(f"K (blocks to remove) must be an integer with 0 <= K < depth = {depth}, got {k!r}")


# ----------------------------------------------------------------------------
# per-block scores
# ----------------------------------------------------------------------------


def removable_order(scores: dict, by: str) -> list[int]:
    """Block indices from most to least removable under a selector.

    scores: {"influence": [...], "linearity": [...], "ablation": [...]} per block (only
    the one named by `by` is needed). Low influence, high linearity and low ablation
    loss increase mean removable."""
    check_selector(by)
    s = np.asarray(scores[by], dtype=np.float64)
    order = np.argsort(-s if by == "linearity" else s, kind="stable")
    return [int(i) for i in order]


def block_scores(model: DiT, encoder, by: str, dataset: str, size: int, prompts: Sequence[str],
                 num_timesteps: int = 8, precision: str = "fp32") -> dict:
    """The per-block score a selector needs: from ditkit.analysis.linearity (influence, linearity),
    or measured ablation losses."""
    check_selector(by)
    if by == "ablation":
        return {"ablation": ablation_losses(model, encoder, dataset, size, precision=precision)["increase"]}
    res = analyze_dit(model, encoder, list(prompts), num_timesteps=num_timesteps)
    return {"influence": res["mean"]["influence"], "linearity": res["mean"]["linearity"]}


# ----------------------------------------------------------------------------
# the benchmark screen
# ----------------------------------------------------------------------------


def benchmark_score(model: DiT, encoder, dataset: str, sample, per_category: int, seed: int) -> float:
    """The dataset's own benchmark at the model's sampling settings: ShapesEval overall for
    shapes, judge accuracy for digits."""
    _check_benchmark(dataset)
    if dataset == "shapes":
        return float(shapes_eval(model, encoder, sample, per_category, seed)["overall"])
    return float(digits_eval(model, encoder, sample, per_category, seed)["accuracy"])


def _check_benchmark(dataset: str) -> None:
    if dataset not in ("shapes", "digits"):
        raise ValueError(f"no benchmark for dataset {dataset!r} (shapes and digits have one); "
                         "choose blocks with --by influence, linearity or ablation")


def benchmark_screen(model: DiT, encoder, remove: int, dataset: str, size: int, sample,
                     linear_maps: dict | None = None, per_category: int = 10, seed: int = 1,
                     callback: Callable[[int, int], None] | None = None) -> dict:
    """Choose `remove` blocks by the benchmark itself, jointly: greedily add the block whose
    removal together with those already chosen (replaced by `linear_maps` stand-ins where
    given, else skipped) keeps the benchmark highest, before any recovery; ties go to the
    lower validation-loss increase. Per-block scores judge each block alone and by loss:
    on shapes-64 neither found blocks 1 and 7, which a screen of all 28 pairs by ShapesEval
    did, and the loss increase of the 28 pairs did not predict their ShapesEval (Spearman
    +0.23; docs/benchmarks.md, "Which blocks to remove"). The greedy search costs
    depth + (depth - 1) + ... evaluations instead of all subsets.

    seed 1 is ShapesEval's tuning seed: the reported seed 0 stays unseen.
    Returns {"chosen": sorted blocks, "rounds": [{block: {"benchmark", "loss_increase"}}]}."""
    depth = len(model.blocks)
    check_k(remove, depth)
    _check_benchmark(dataset)  # before any work
    if per_category < 1:
        raise ValueError(f"benchmark prompts per category must be >= 1, got {per_category}")
    base = validation_loss(model, encoder, dataset, size)
    chosen: list[int] = []
    rounds = []
    total = sum(depth - r for r in range(remove))
    done = 0
    for _ in range(remove):
        tried = {}
        for b in range(depth):
            if b in chosen:
                continue
            trial = sorted(chosen + [b])
            pruned = remove_blocks(model, trial, {i: linear_maps[i] for i in trial} if linear_maps else None).eval()
            tried[b] = {"benchmark": benchmark_score(pruned, encoder, dataset, sample, per_category, seed),
                        "loss_increase": validation_loss(pruned, encoder, dataset, size) - base}
            done += 1
            if callback:
                callback(done, total)
        best = max(tried, key=lambda b: (tried[b]["benchmark"], -tried[b]["loss_increase"]))
        chosen.append(best)
        rounds.append(tried)
    return {"chosen": sorted(chosen), "rounds": rounds, "per_category": per_category, "seed": seed}
