"""Inference-time scaling with a verifier: best-of-N (SANA 1.5, Xie et al. 2025, Sec. 4;
Ma et al. 2025, "Inference-time scaling for diffusion models beyond scaling denoising steps").

Generate N candidates per prompt from different initial noises, score each
with a verifier, keep the best. A verifier is any callable (image, prompt) ->
float, higher is better; `shapes` and `digits` are built in.

Candidate k of prompt j starts from the noise of seed + j + k * CANDIDATE_STRIDE,
so candidate 0 is exactly the image plain generation gives, and the first N
candidates of a larger run are the candidates of a smaller one: a sweep over
N = 1, 2, 4, ... generates max(N) candidates once and reads off every prefix.
"""

from __future__ import annotations

import importlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from ditkit.core.config import SampleConfig
from ditkit.core.files import atomic_save_image
from ditkit.core.images import to_pil
from ditkit.core.reports import line_plot, markdown_table, write_json, write_report
from ditkit.data import digits, shapes
from ditkit.engine import ProgressCallback, generate_tensor
from ditkit.evaluation.digits_judge import classifier, digit_accuracy
from ditkit.evaluation.outputs import image_grid
from ditkit.evaluation.shapes_scoring import evaluate, score_graded

Verifier = Callable[[Image.Image, str], float]
CANDIDATE_STRIDE = 100_003  # a prime larger than any prompt list, so candidate seeds never collide
VERIFIERS = ("shapes", "digits")


def _shapes_verifier(image: Image.Image, prompt: str) -> float:
    # The graded clause score: 1.0 exactly when the detector finds the image
    # correct, partial credit otherwise, so ties between wrong candidates break sensibly.
    return score_graded(image, prompt)


def _digits_verifier(image: Image.Image, prompt: str) -> float:
    want = digits.parse_digit(prompt)
    return float(classifier(image.size[0]).proba([image])[0, want])


def get_verifier(verifier: str | Verifier) -> Verifier:
    """A verifier by name ("shapes", "digits"), by import path ("package.module:function",
    so the CLI can use any Python callable) or a callable (image, prompt) -> float."""
    if callable(verifier):
        return verifier
    if verifier == "shapes":
        return _shapes_verifier
    if verifier == "digits":
        return _digits_verifier
    if isinstance(verifier, str) and ":" in verifier:

        module, _, name = verifier.partition(":")
        try:
            fn = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"cannot import verifier {verifier!r}: {e}") from None
        if not callable(fn):
            raise ValueError(f"verifier {verifier!r} is not callable")
        return fn
    raise ValueError(f"unknown verifier {verifier!r}; allowed: {', '.join(VERIFIERS)}, "
                     "'module:function' or a callable (image, prompt) -> float")


def default_verifier(model_config: dict) -> str:
    """The built-in verifier for the data a model was trained on."""
    dataset = (model_config.get("data") or {}).get("dataset")
    if dataset in VERIFIERS:
        return dataset
    raise ValueError(f"no built-in verifier for this model (trained on {dataset!r}); "
                     f"choose one with --verifier: {', '.join(VERIFIERS)} or 'module:function'")


def candidate_seeds(n_prompts: int, n: int, seed: int) -> list[int]:
    """Seeds of all candidates, prompt-major: index j * n + k is candidate k of prompt j."""
    return [seed + j + k * CANDIDATE_STRIDE for j in range(n_prompts) for k in range(n)]


@dataclass
class BestOfN:
    """images[j]: the chosen image of prompt j; scores (P, N): every candidate's score;
    chosen (P,): the index of the chosen candidate; candidates: all images, prompt-major."""
    images: list[Image.Image]
    scores: np.ndarray
    chosen: np.ndarray
    candidates: list[Image.Image]

    def best_of(self, n: int) -> tuple[list[Image.Image], np.ndarray]:
        """The choice best-of-n would have made using only the first n candidates."""
        if not 1 <= n <= self.scores.shape[1]:
            raise ValueError(f"n must be in 1..{self.scores.shape[1]}, got {n}")
        pick = self.scores[:, :n].argmax(1)  # argmax keeps the first of tied candidates
        total = self.scores.shape[1]
        return [self.candidates[j * total + k] for j, k in enumerate(pick)], pick


def score_candidates(candidates: Sequence[Image.Image], prompts: Sequence[str], n: int,
                     verifier: str | Verifier) -> BestOfN:
    """Score prompt-major candidates (len(prompts) * n images) and pick the best per prompt."""
    fn = get_verifier(verifier)
    if len(candidates) != len(prompts) * n:
        raise ValueError(f"expected {len(prompts) * n} candidates ({len(prompts)} prompts x {n}), got {len(candidates)}")
    name = verifier_name(verifier)
    scores = np.array([_score(fn, name, im, prompts[i // n]) for i, im in enumerate(candidates)]).reshape(len(prompts), n)
    chosen = scores.argmax(1)
    images = [candidates[j * n + k] for j, k in enumerate(chosen)]
    return BestOfN(images, scores, chosen, list(candidates))


def verifier_name(verifier: str | Verifier) -> str:
    """How errors name a verifier: its name or import path, or a callable's qualified name."""
    if isinstance(verifier, str):
        return verifier
    return f"{getattr(verifier, '__module__', '?')}:{getattr(verifier, '__qualname__', type(verifier).__name__)}"


def _score(fn: Verifier, name: str, image: Image.Image, prompt: str) -> float:
    """One verifier score as a finite float; a verifier that raises or returns anything else is
    a ValueError naming it (it is user code: `--verifier module:function`)."""
    try:
        value = fn(image, prompt)
    except Exception as e:  # any failure inside user code is reported as the verifier's, not ditkit's
        raise ValueError(f"verifier {name!r} failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}; "
                         "a verifier is a callable (image, prompt) -> float") from e
    try:  # numbers, numpy scalars and one-element tensors; never text or a truth value
        score = None if isinstance(value, (str, bytes, bool, np.bool_)) else float(value)
    except (TypeError, ValueError, RuntimeError):
        score = None
    if score is None:
        raise ValueError(f"verifier {name!r} returned {value!r} (type {type(value).__name__}); "
                         "a verifier must return a finite number")
    if not np.isfinite(score):
        raise ValueError(f"verifier {name!r} returned a non-finite score {score}; it must return a finite number")
    return score


def check_best_of(n: int) -> None:
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ValueError(f"best-of N must be an integer >= 1, got {n!r}")


# --------------------------------------------------------------------------
# Scaling curves: a benchmark's score against N
# --------------------------------------------------------------------------


def best_of_sweep(model: torch.nn.Module, encoder, sample: SampleConfig, prompts: list[str], ns: list[int],
                  verifier, judge: Callable[[list[Image.Image], list[str]], dict], seed: int = 0,
                  precision: str = "fp32", batch_size: int = 32,
                  callback: ProgressCallback | None = None) -> dict:
    """Inference-time scaling curve: for each N in ns, the judge's result when each prompt
    keeps the best of its first N candidates by the verifier.

    max(ns) candidates per prompt are generated once (candidate k of prompt j from seed
    + j + k * CANDIDATE_STRIDE; candidate 0 is the plain image), so the rows share
    candidates and cost is reported as images generated per prompt (= N).
    Returns {"rows": [{"best_of", "result", "images_per_prompt"}], "seconds_per_image",
    "chosen_images" (best of max N), "scores" (P, max N)}."""
    if not ns:
        raise ValueError("give at least one N")
    for n in ns:
        check_best_of(n)
    get_verifier(verifier)
    n_max = max(ns)
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    try:
        flat = [p for p in prompts for _ in range(n_max)]
        x = generate_tensor(model, encoder, flat, sample, candidate_seeds(len(prompts), n_max, seed),
                            precision=precision, batch_size=batch_size, callback=callback)
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - t0
    best = score_candidates(to_pil(x), prompts, n_max, verifier)
    rows = []
    for n in sorted(set(ns)):
        images, _ = best.best_of(n)
        rows.append({"best_of": n, "images_per_prompt": n, "result": judge(images, prompts)})
    return {"rows": rows, "seconds_per_image": seconds / len(flat), "chosen_images": best.images,
            "scores": best.scores.tolist()}


def shapes_best_of_eval(model: torch.nn.Module, encoder, sample: SampleConfig, ns: list[int],
                        per_category: int = 25, seed: int = 0, verifier="shapes", **kwargs) -> dict:
    """ShapesEval against best-of-N (SANA 1.5's inference-time scaling) for each N in ns."""
    if per_category < 1:
        raise ValueError(f"per_category must be >= 1, got {per_category}")
    pairs = shapes.benchmark_prompts(per_category, seed)
    categories = [c for c, _ in pairs]
    prompts = [p for _, p in pairs]
    out = best_of_sweep(model, encoder, sample, prompts, ns, verifier,
                        lambda ims, ps: evaluate(ims, ps, categories), seed=seed, **kwargs)
    out["prompts"] = list(zip(categories, prompts))
    out["settings"] = {"sampler": sample.sampler, "steps": sample.steps, "guidance": sample.guidance,
                       "shift": sample.shift, "size": sample.size, "prior_until": sample.prior_until,
                       "prior_model": sample.prior_model,
                       "per_category": per_category, "seed": seed,
                       "verifier": verifier if isinstance(verifier, str) else getattr(verifier, "__name__", "callable")}
    return out


def digits_best_of_eval(model: torch.nn.Module, encoder, sample: SampleConfig, ns: list[int],
                        per_digit: int = 50, seed: int = 0, verifier="digits", **kwargs) -> dict:
    """The digits judge's accuracy against best-of-N for each N in ns (per_digit prompts per digit)."""
    prompts = digits.benchmark_prompts(per_digit)
    out = best_of_sweep(model, encoder, sample, prompts, ns, verifier, digit_accuracy, seed=seed, **kwargs)
    out["settings"] = {"sampler": sample.sampler, "steps": sample.steps, "guidance": sample.guidance,
                       "per_digit": per_digit, "seed": seed, "verifier": verifier}
    return out


def save_best_of_outputs(result: dict, out_dir: str | Path, title: str, command: str) -> None:
    """results.json (one row per N), scaling.png, grid.png (best of max N), report.md."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = result["rows"]
    ns = [r["best_of"] for r in rows]
    first = rows[0]["result"]
    if "categories" in first:
        series = {"overall": [r["result"]["overall"] for r in rows]}
        for cat in first["categories"]:
            series[cat] = [r["result"]["categories"][cat] for r in rows]
        header = ["N", "images per prompt", "overall", *first["categories"]]
        table = [[r["best_of"], r["best_of"], r["result"]["overall"], *r["result"]["categories"].values()] for r in rows]
    else:
        series = {"accuracy": [r["result"]["accuracy"] for r in rows]}
        header = ["N", "images per prompt", "accuracy"]
        table = [[r["best_of"], r["best_of"], r["result"]["accuracy"]] for r in rows]
    line_plot(out / "scaling.png", ns, series, title, "N (candidates per prompt)", logx=True)
    atomic_save_image(out / "grid.png", image_grid(result["chosen_images"]))
    summary = {k: v for k, v in result.items() if k not in ("chosen_images", "prompts")}
    write_json(out / "results.json", summary)
    cost = (f"Sampling cost: {result['seconds_per_image']:.3f} s per candidate image, so best-of-N costs N times "
            f"the plain generation ({rows[-1]['best_of']} candidates per prompt were generated once; each N reads the "
            "first N).")
    write_report(out / "report.md", title, command, [
        ("Settings", "```json\n" + json.dumps(result["settings"], indent=2) + "\n```"),
        ("Scores", markdown_table(header, table) + "\n\n" + cost),
        ("Plots", f"![scaling](scaling.png)\n\nBest-of-{rows[-1]['best_of']} images: ![grid](grid.png)"),
    ])
