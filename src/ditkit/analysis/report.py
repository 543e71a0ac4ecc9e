"""`ditkit analyze` as one library call: measure every block of a model (linearity,
influence, norm ratio over time bins; ditkit.analysis.linearity), measure the truth
(what removing each block costs; ditkit.analysis.ablation) and write the report.

    from ditkit.analysis.report import analyze_model
    summary = analyze_model("shapes-64", "runs/analyze", num_timesteps=8)

The output folder gets analysis.json, profile.png, heatmap_<score>.png, and with the
ablation truth ablation.json and ablation.png, then report.md; see docs/analysis.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from ditkit.analysis.ablation import ablation_truth, plot_ablation, removal_costs
from ditkit.analysis.calibration import default_calibration_prompts
from ditkit.analysis.linearity import SCORES, analyze_dit, analyze_diffusers_folder, save_analysis
from ditkit.core.checkpoint import load_model, resolve_model
from ditkit.core.encoders import get_text_encoder
from ditkit.core.precision import resolve_device
from ditkit.core.reports import markdown_table, write_json, write_report
from ditkit.data import DATASETS
from ditkit.interop.diffusers_folder import is_diffusers_folder


def analyze_model(model: str | Path, out_dir: str | Path, prompts: Sequence[str] | None = None,
                  num_timesteps: int = 8, ablation: bool = True, ablation_eval: int = 0, device: str = "cpu",
                  command: str | None = None) -> dict:
    """Analyse the blocks of `model` and write the report into out_dir (created if missing).

    model: an embedded model name or a ditkit model folder, or a diffusers transformer folder
    (save_pretrained layout; scored on data-free calibration inputs, no ablation truth).
    prompts: calibration prompts (default: 16 of the dataset's benchmark prompts; a model
    without a recorded dataset needs them). num_timesteps: time bins (Euler steps).
    ablation: also measure each block's removal cost (ditkit models of shapes or digits);
    ablation_eval: with it, the ShapesEval drop on this many prompts per category (0: off).
    command: the command line the report names as its origin (default: this call).

    Returns the summary `ditkit analyze` prints: {"output", "blocks", "mean": {score: [per
    block]}} and, with the ablation truth, "rank_correlations"."""
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
    if ablation_eval < 0:
        raise ValueError(f"ablation_eval (ShapesEval prompts per category) must be >= 0, got {ablation_eval}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output {str(out_dir)!r} is a file; the analysis writes into a folder")
    if not out.parent.exists():
        raise ValueError(f"parent folder of output {str(out.parent)!r} does not exist")
    if is_diffusers_folder(model):
        result, truth = analyze_diffusers_folder(model, num_timesteps), None
    else:
        result, truth = _measure_dit(model, prompts, num_timesteps, ablation, ablation_eval, device)
    if command is None:
        command = (f"analyze_model({str(model)!r}, {str(out_dir)!r}, num_timesteps={num_timesteps}, "
                   f"ablation={ablation}, ablation_eval={ablation_eval})")
    write_analysis_report(result, truth, out, f"Block analysis of {model}", command)
    summary = {"output": str(out), "blocks": result["blocks"], "mean": result["mean"]}
    if truth:
        summary["rank_correlations"] = truth["rank_correlations"]
    return summary


def _measure_dit(model: str | Path, prompts: Sequence[str] | None, num_timesteps: int, ablation: bool,
                 ablation_eval: int, device: str) -> tuple[dict, dict | None]:
    """analyze_dit along the model's own sampling trajectories, and (with `ablation`) the ablation truth."""
    device = resolve_device(device)  # before any loading: a bad or missing device is a clear error
    dit, config = load_model(resolve_model(model), device)
    data = config.get("data") or {}
    dataset = data.get("dataset")
    if prompts is None:  # the built-in datasets (ditkit.data) have benchmark prompts and held-out batches
        if dataset not in DATASETS:
            raise ValueError("this model records no dataset (config.json 'data'), so it has no default calibration "
                             "prompts; give them (--prompts FILE, or prompts=[...])")
        prompts = default_calibration_prompts(dataset)
    if ablation and dataset not in DATASETS:  # checked before the analysis, not after it
        raise ValueError("ablation truth needs the model's training data (shapes or digits, in config.json 'data'); "
                         "turn it off (--no-ablation, or ablation=False)")
    encoder = get_text_encoder(config.get("text_encoder", "minilm"), device=device)
    sample = config["sample"]
    result = analyze_dit(dit, encoder, prompts, num_timesteps, sample=sample)
    truth = None
    if ablation:
        truth = ablation_truth(dit, encoder, dataset, int(data.get("size", 64)), result["mean"], ablation_eval, sample)
    return result, truth


def write_analysis_report(result: Mapping[str, Any], truth: Mapping[str, Any] | None, out_dir: str | Path,
                          title: str, command: str) -> None:
    """Write a block analysis (analyze_dit / analyze_diffusers) and its ablation truth
    (ablation_truth, or None) into out_dir: analysis.json and its plots (save_analysis),
    ablation.json and ablation.png, then report.md with the tables."""
    out = Path(out_dir)
    out.mkdir(exist_ok=True)
    save_analysis(result, out)
    means = result["mean"]
    rows = [[i, *[means[s][i] for s in SCORES]] for i in range(result["blocks"])]
    sections = [("Per-block scores (mean over time bins)", markdown_table(["block", *SCORES], rows)
                 + "\n\n![profile](profile.png)"
                 + ("\n\n![linearity over depth and time](heatmap_linearity.png) "
                    "![influence over depth and time](heatmap_influence.png)" if result.get("timesteps") else ""))]
    if truth:
        write_json(out / "ablation.json", dict(truth))
        costs = removal_costs(truth["effects"])
        plot_ablation(means, costs, out / "ablation.png")
        corr = truth["rank_correlations"]
        crow = [[s, *[f"{corr[s][c]['spearman']:+.2f} (p={corr[s][c]['p_value']:.2f})" for c in costs]]
                for s in SCORES]
        sections.append(("Ablation truth", markdown_table(["block", *costs],
                                                          [[i, *[v[i] for v in costs.values()]]
                                                           for i in range(result["blocks"])])
                         + "\n\nSpearman rank correlation of each score with the measured removal cost "
                           "(influence and norm ratio should correlate positively, linearity negatively):\n\n"
                         + markdown_table(["score", *costs], crow) + "\n\n![ablation](ablation.png)"))
    write_report(out / "report.md", title, command, sections)
