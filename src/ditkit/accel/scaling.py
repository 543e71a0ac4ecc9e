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

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from PIL import Image

Verifier = Callable[[Image.Image, str], float]
CANDIDATE_STRIDE = 100_003  # a prime larger than any prompt list, so candidate seeds never collide
VERIFIERS = ("shapes", "digits")


def _shapes_verifier(image: Image.Image, prompt: str) -> float:
    from ditkit.data import shapes

    # The graded clause score: 1.0 exactly when the detector finds the image
    # correct, partial credit otherwise, so ties between wrong candidates break sensibly.
    return shapes.score_graded(image, prompt)


def _digits_verifier(image: Image.Image, prompt: str) -> float:
    from ditkit.data import digits

    want = digits.parse_digit(prompt)
    return float(digits.classifier(image.size[0]).proba([image])[0, want])


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
        import importlib

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
    scores = np.array([float(fn(im, prompts[i // n])) for i, im in enumerate(candidates)]).reshape(len(prompts), n)
    if not np.isfinite(scores).all():
        raise ValueError("the verifier returned a non-finite score")
    chosen = scores.argmax(1)
    images = [candidates[j * n + k] for j, k in enumerate(chosen)]
    return BestOfN(images, scores, chosen, list(candidates))


def check_best_of(n: int) -> None:
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ValueError(f"best-of N must be an integer >= 1, got {n!r}")
