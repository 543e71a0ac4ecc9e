"""Ablation truth: what each block does, measured by removing it. Per block, the validation
flow-matching loss increase when it alone is skipped (and, on a shapes model, the ShapesEval
drop), and how well each cheap score (ditkit.analysis.linearity) ranks the blocks by that
measured cost.

Cosine-style block influence is reported to be a weak proxy for the loss caused by
removal (Razzhigaev et al. 2024; Gromov et al. 2024 on layer pruning), so instead of
trusting any score, the cost is measured on the user's model.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ditkit.analysis.calibration import validation_loss
from ditkit.analysis.surgery import skipping
from ditkit.core.model import DiT
from ditkit.core.reports import pyplot, save_figure
from ditkit.evaluation.evaluate import shapes_eval

# The sign with which a score should correlate with removal cost if it predicts it:
# a block that changes its tokens a lot (influence, norm ratio) should be costly to
# remove; a block that is nearly linear should be cheap.
EXPECTED_SIGN = {"influence": 1, "norm_ratio": 1, "linearity": -1, "linearity_residual_removed": -1}


def ablation_losses(model: DiT, encoder, dataset: str, size: int, batches: int = 4, batch_size: int = 32,
                    precision: str = "fp32") -> dict:
    """The measured effect of removing each block alone: validation loss with it skipped,
    minus the full model's. Returns {"base": float, "loss": [per block], "increase": [per block]}."""
    base = validation_loss(model, encoder, dataset, size, batches, batch_size, precision=precision)
    losses = []
    for i in range(len(model.blocks)):
        with skipping(model, [i]):
            losses.append(validation_loss(model, encoder, dataset, size, batches, batch_size, precision=precision))
    return {"base": base, "loss": losses, "increase": [x - base for x in losses]}


def ablation_effects(model: DiT, encoder, dataset: str, size: int, per_category: int = 0, sample=None,
                     seed: int = 0, batches: int = 4) -> dict:
    """Per block: validation flow-matching loss increase when it alone is skipped; with
    per_category > 0 on a shapes model, also the ShapesEval drop (same prompts and seeds)."""
    out = {"loss": ablation_losses(model, encoder, dataset, size, batches=batches)}
    if per_category > 0:
        if dataset != "shapes":
            raise ValueError(f"ShapesEval ablation needs a shapes model; this one was trained on {dataset!r}")
        base = shapes_eval(model, encoder, sample, per_category, seed)["overall"]
        scores = []
        for i in range(len(model.blocks)):
            with skipping(model, [i]):
                scores.append(shapes_eval(model, encoder, sample, per_category, seed)["overall"])
        out["shapes"] = {"base": base, "score": scores, "drop": [base - s for s in scores],
                         "per_category": per_category}
    return out


def removal_costs(effects: dict) -> dict[str, list[float]]:
    """{cost name: [per block]} of ablation_effects' result, the columns the report shows:
    "loss increase", and "ShapesEval drop" when it was measured."""
    costs = {"loss increase": effects["loss"]["increase"]}
    if "shapes" in effects:
        costs["ShapesEval drop"] = effects["shapes"]["drop"]
    return costs


def ablation_truth(model: DiT, encoder, dataset: str, size: int, score_means: dict[str, Sequence[float]],
                   per_category: int = 0, sample=None) -> dict:
    """ablation_effects, and how well each score ranks the blocks by those removal costs:
    {"effects": ablation_effects(...), "rank_correlations": rank_correlations(score_means, costs)}.
    score_means: {score: [per block]}, e.g. analyze_dit(...)["mean"]."""
    effects = ablation_effects(model, encoder, dataset, size, per_category, sample)
    return {"effects": effects, "rank_correlations": rank_correlations(score_means, removal_costs(effects))}


def rank_correlations(score_means: dict[str, Sequence[float]], effects: dict[str, Sequence[float]]) -> dict:
    """{score: {effect: {"spearman", "p_value", "agreement"}}}; agreement = spearman times the
    score's expected sign, so 1 means the score ranks blocks exactly by removal cost."""
    from scipy.stats import spearmanr  # scipy.stats takes ~1 s to import; only `ditkit analyze` needs it

    out = {}
    for name, values in score_means.items():
        out[name] = {}
        for effect, cost in effects.items():
            if len(values) != len(cost):
                raise ValueError(f"{name} has {len(values)} blocks but {effect} has {len(cost)}")
            if len(values) < 3 or np.ptp(values) == 0 or np.ptp(cost) == 0:
                rho, p = float("nan"), float("nan")
            else:
                res = spearmanr(values, cost)
                rho, p = float(res.statistic), float(res.pvalue)
            out[name][effect] = {"spearman": rho, "p_value": p, "agreement": rho * EXPECTED_SIGN.get(name, 1)}
    return out


def plot_ablation(score_means: dict[str, Sequence[float]], effects: dict[str, Sequence[float]], path) -> None:
    """One panel per score: score against each block's removal cost, blocks labelled."""
    plt = pyplot()
    names = list(score_means)
    effect_name, cost = next(iter(effects.items()))
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.2))
    for ax, name in zip(np.atleast_1d(axes), names):
        ax.scatter(score_means[name], cost)
        for i, (x, y) in enumerate(zip(score_means[name], cost)):
            ax.annotate(str(i), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(name), ax.set_ylabel(f"removal cost ({effect_name})")
    fig.tight_layout()
    save_figure(fig, path)
