"""The loss curve of a training run (RUN/loss.png), with its periodic evaluations."""

from __future__ import annotations

import json
from pathlib import Path

from ditkit.core.files import atomic_write


def plot_loss_curve(log_path: Path, out_png: Path) -> None:
    import matplotlib  # why here: optional and slow to import; only checkpoints draw the curve

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # why here: after matplotlib.use("Agg")

    rows = [json.loads(x) for x in log_path.read_text().splitlines() if x.strip()]
    losses = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    metric = "digits_accuracy" if any("digits_accuracy" in r for r in rows) else "shapes_eval"
    evals = [(r["step"], r[metric]) for r in rows if metric in r]
    if not losses:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(*zip(*losses), lw=0.8, label="train loss")
    ax.set_xlabel("step"), ax.set_ylabel("flow-matching loss"), ax.set_yscale("log")
    if evals:
        ax2 = ax.twinx()
        label = "digit accuracy" if metric == "digits_accuracy" else "ShapesEval overall"
        ax2.plot(*zip(*evals), "o-", color="tab:red", label=label)
        ax2.set_ylabel(label), ax2.set_ylim(0, 1)
    ax.set_title(log_path.parent.name)
    fig.tight_layout()
    try:
        atomic_write(out_png, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    finally:
        plt.close(fig)
