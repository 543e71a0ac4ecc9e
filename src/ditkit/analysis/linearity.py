"""How linear is each block? Per-block scores of a transformer's residual stream.

Two analyses, for any model with a list of blocks (a ditkit DiT, a diffusers
PixArt or SD3 transformer) and for the layers of a Hugging Face text encoder:

- Linearity (Razzhigaev et al., "Your Transformer is Secretly Linear", ACL
  2024, Sec. 3): how well one linear map takes a block's input token
  embeddings X to its output Y. Both are centred and scaled to unit Frobenius
  norm, so the score 1 - ||X A - Y||_F^2 is the R^2 of the best linear fit.
  The paper finds it close to 1 between consecutive layers, and much lower
  once the residual is removed (the fit X -> Y - X, their Fig. 1).
- Block importance (SANA 1.5, Xie et al. 2025, Sec. 2.3, after ShortGPT, Men
  et al. 2024): 1 - mean cosine similarity of each token before and after the
  block. A block that barely turns its tokens is a candidate for pruning.
  The norm ratio ||Y - X|| / ||X|| (the size of the block's residual update
  against the stream) is reported next to it.

    from ditkit.analysis.linearity import analyze_dit, save_analysis
    pipe = ditkit.load("shapes-64")
    result = analyze_dit(pipe.model, pipe.text_encoder, ["a red circle", "two blue squares"])
    save_analysis(result, "out/analysis")  # analysis.json, profile.png, heatmap_<score>.png

Token matrices X, Y are (N, D): all tokens of all images (or sentences) of one
time bin stacked, so a score describes the block at that time, not one image.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ditkit.core.config import SampleConfig
from ditkit.core.encoders import get_text_encoder
from ditkit.core.reports import pyplot, save_figure, write_json
from ditkit.core.sampling import sample_euler, timesteps
from ditkit.engine.generate import initial_noise
from ditkit.engine.request import GenerationRequest
from ditkit.engine.velocity import prompt_velocity
from ditkit.interop.diffusers_folder import calibration_inputs, load_diffusers_transformer

SCORES = ("linearity", "linearity_residual_removed", "influence", "norm_ratio")
SCORE_LABELS = {
    "linearity": "linearity",
    "linearity_residual_removed": "linearity, residual removed",
    "influence": "block influence (1 - cos)",
    "norm_ratio": "update norm / stream norm",
}

BlockIO = list[list[tuple[torch.Tensor, torch.Tensor]]]  # [block][call] -> (input, output)


# ----------------------------------------------------------------------------
# scores on token matrices
# ----------------------------------------------------------------------------

def _token_matrices(x: torch.Tensor, y: torch.Tensor, same_width: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Check two (N, D) token matrices and return them in float64 on the CPU
    (LAPACK's rank-revealing least squares runs only there)."""
    if x.ndim != 2 or y.ndim != 2:
        raise ValueError(f"expected token matrices of shape (N_tokens, D), got {tuple(x.shape)} and {tuple(y.shape)}; "
                         "flatten batch and tokens first")
    if x.shape[0] != y.shape[0] or (same_width and x.shape != y.shape):
        need = "the same shape" if same_width else "the same number of tokens (rows)"
        raise ValueError(f"input and output token matrices must have {need}, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[0] == 0:
        raise ValueError("no tokens to score (N_tokens = 0)")
    return x.detach().to("cpu", torch.float64), y.detach().to("cpu", torch.float64)


def _center_and_normalize(m: torch.Tensor) -> torch.Tensor:
    """Subtract each feature's mean and scale to unit Frobenius norm (Razzhigaev et al. Sec. 3).
    A constant matrix stays zero: it carries nothing to fit."""
    m = m - m.mean(dim=0, keepdim=True)
    norm = torch.linalg.matrix_norm(m)
    return m / norm if norm > 0 else m


def linearity_score(x: torch.Tensor, y: torch.Tensor) -> float:
    """Procrustes-style linearity of the map from X (N, D_in) to Y (N, D_out), in [0, 1].

    Razzhigaev et al. 2024, Sec. 3: X~, Y~ centred and normalised, A = pinv(X~) Y~,
    score = 1 - ||X~ A - Y~||_F^2. Since ||Y~||_F = 1 this is the R^2 of the least-squares
    fit, invariant to scaling X or Y, to adding a constant vector to either, and to any
    invertible linear change of X's basis. 1 means Y is exactly an affine function of X.

    The fit has D_in free coefficients per output feature: with N - 1 <= D_in distinct
    tokens it matches any Y and the score is trivially 1, and above that it is biased
    upward by about D_in / N (the R^2 of a fit to pure noise). Score many more tokens
    than features; the analyze_* functions warn below 4 tokens per feature.
    """
    x, y = _token_matrices(x, y, same_width=False)
    x, y = _center_and_normalize(x), _center_and_normalize(y)
    # gelsd (SVD-based) tolerates rank deficiency: duplicate tokens, dead features.
    a = torch.linalg.lstsq(x, y, driver="gelsd").solution
    residual = torch.linalg.matrix_norm(x @ a - y) ** 2
    return float((1.0 - residual).clamp(0.0, 1.0))


def residual_removed_linearity(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linearity of X -> Y - X: the block's own update without the identity path of the
    residual connection (Razzhigaev et al. 2024, Fig. 1, "without residual")."""
    x, y = _token_matrices(x, y)
    return linearity_score(x, y - x)


def block_influence(x: torch.Tensor, y: torch.Tensor) -> float:
    """1 - mean over tokens of cos(X_i, Y_i), in [0, 2]: 0 when the block leaves every token's
    direction unchanged (SANA 1.5 block importance; ShortGPT's Block Influence, Men et al. 2024, Eq. 1)."""
    x, y = _token_matrices(x, y)
    return float(1.0 - torch.nn.functional.cosine_similarity(x, y, dim=1, eps=1e-12).mean())


def update_norm_ratio(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean over tokens of ||Y_i - X_i|| / ||X_i||: the residual update's size against the stream's."""
    x, y = _token_matrices(x, y)
    return float(((y - x).norm(dim=1) / x.norm(dim=1).clamp_min(1e-12)).mean())


def block_scores(x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """All four scores of one (input, output) pair of (N, D) token matrices, keyed as in SCORES."""
    x, y = _token_matrices(x, y)
    return {"linearity": linearity_score(x, y), "linearity_residual_removed": residual_removed_linearity(x, y),
            "influence": block_influence(x, y), "norm_ratio": update_norm_ratio(x, y)}


# ----------------------------------------------------------------------------
# blocks and their inputs/outputs
# ----------------------------------------------------------------------------

def find_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's list of transformer blocks: `blocks` (ditkit's DiT) or `transformer_blocks`
    (diffusers' PixArtTransformer2DModel, SD3Transformer2DModel; for FLUX the dual-stream ones only)."""
    for name in ("blocks", "transformer_blocks"):
        blocks = getattr(model, name, None)
        if isinstance(blocks, nn.ModuleList) and len(blocks) > 0:
            return blocks
    raise ValueError(f"model has no `blocks` or `transformer_blocks` list; got {type(model).__name__}. "
                     "Allowed: a ditkit DiT, or a diffusers transformer such as PixArtTransformer2DModel "
                     "or SD3Transformer2DModel")


def block_input_states(args: tuple, kwargs: Mapping[str, Any]) -> torch.Tensor:
    """The residual stream entering a block: its first positional argument (ditkit's DiTBlock,
    diffusers' BasicTransformerBlock as PixArt calls it) or the keyword `hidden_states`
    (diffusers' JointTransformerBlock as SD3 calls it)."""
    x = args[0] if args else kwargs.get("hidden_states")
    if not isinstance(x, torch.Tensor):
        raise ValueError("block input not found: expected a tensor as the first positional argument "
                         f"or the keyword `hidden_states`, got args of types {[type(a).__name__ for a in args]} "
                         f"and keywords {sorted(kwargs)}")
    return x


def block_output_states(output: Any, x: torch.Tensor) -> torch.Tensor:
    """The residual stream leaving a block, given its input x.

    Rule: a tensor output is the stream itself (ditkit's DiTBlock, diffusers'
    BasicTransformerBlock in PixArt). A tuple output is diffusers' MMDiT convention
    `(encoder_hidden_states, hidden_states)` (SD3's JointTransformerBlock and FLUX's
    blocks end with `return encoder_hidden_states, hidden_states`): the image stream is
    the last element. The text stream is left out: it is None after SD3's last block
    (context_pre_only) and is not the stream the next block's image tokens read.
    The result must have the input's shape, so a block of another convention fails loudly.
    """
    y = output[-1] if isinstance(output, (tuple, list)) and len(output) > 0 else output
    if not isinstance(y, torch.Tensor) or y.shape != x.shape:
        got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"block output {got} is not the residual stream of the input's shape {tuple(x.shape)}; "
                         "allowed: a tensor, or a tuple (encoder_hidden_states, hidden_states) as in diffusers' "
                         "MMDiT blocks")
    return y


@contextmanager
def block_io_hooks(model: nn.Module, on_io: Callable[[int, torch.Tensor, torch.Tensor], None]) -> Iterator[nn.ModuleList]:
    """Call on_io(block_index, input, output) after every block forward while the context is open.

    input and output are the block's residual stream (block_input_states /
    block_output_states), detached, float32, on the CPU. The input is copied by a
    pre-hook before the block runs, so a block that updates its input in place
    cannot change what is recorded. Hooks are removed on exit, also on error.
    """
    blocks = find_blocks(model)
    pending: dict[int, torch.Tensor] = {}
    handles = []

    def pre_hook(i: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            pending[i] = block_input_states(args, kwargs).detach().to("cpu", torch.float32, copy=True)
        return hook

    def post_hook(i: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            x = pending.pop(i)
            y = block_output_states(output, x).detach().to("cpu", torch.float32)
            on_io(i, x, y)
        return hook

    try:
        for i, blk in enumerate(blocks):
            handles.append(blk.register_forward_pre_hook(pre_hook(i), with_kwargs=True))
            handles.append(blk.register_forward_hook(post_hook(i), with_kwargs=True))
        yield blocks
    finally:
        for h in handles:
            h.remove()


def capture_block_io(model: nn.Module, fn: Callable[[], Any]) -> BlockIO:
    """Run fn() with every block hooked; returns io[block][call] = (input, output), each
    (B, N, D) float32 on the CPU, one pair per block per forward of the model.
    Keeps everything in memory: for long runs, score on the fly with block_io_hooks."""
    io: BlockIO = [[] for _ in find_blocks(model)]
    with block_io_hooks(model, lambda i, x, y: io[i].append((x, y))):
        fn()
    return io


# ----------------------------------------------------------------------------
# analyses
# ----------------------------------------------------------------------------

def _check_tokens(tokens: int, width: int, hint: str) -> None:
    """Warn when there are too few tokens for the linear fit to mean much (see linearity_score)."""
    if tokens - 1 <= width:
        warnings.warn(f"only {tokens} tokens for width {width}: the least-squares fit can match almost any "
                      f"output and linearity is close to 1 whatever the block does; {hint}")
    elif tokens < 4 * width:
        warnings.warn(f"only {tokens} tokens for width {width}: linearity is biased upward by about "
                      f"width / tokens = {width / tokens:.2f}; {hint}")


class _Scorer:
    """Scores each block's k-th forward as time bin k, as the forwards happen (nothing kept but floats).
    `rows`: score only the first rows of the batch (the conditional half of a CFG batch)."""

    def __init__(self, depth: int, rows: int | None = None, hint: str = "score more tokens"):
        self.scores: list[list[dict[str, float]]] = [[] for _ in range(depth)]
        self.rows = rows
        self.tokens: list[int] = []
        self.hint = hint

    def __call__(self, i: int, x: torch.Tensor, y: torch.Tensor) -> None:
        if self.rows is not None:
            x, y = x[: self.rows], y[: self.rows]
        x, y = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
        if i == 0:
            if not self.tokens:
                _check_tokens(x.shape[0], x.shape[1], self.hint)
            self.tokens.append(x.shape[0])
        self.scores[i].append(block_scores(x, y))

    def result(self, kind: str, timesteps: list[float]) -> dict:
        counts = {len(s) for s in self.scores}
        if counts != {len(timesteps)}:
            raise ValueError(f"expected {len(timesteps)} forwards per block, recorded {sorted(counts)}")
        out: dict[str, Any] = {"kind": kind, "blocks": len(self.scores), "timesteps": timesteps, "tokens": self.tokens}
        for name in SCORES:
            out[name] = [[s[name] for s in per_t] for per_t in self.scores]
        out["mean"] = {name: [sum(row) / len(row) for row in out[name]] for name in SCORES}
        return out


def analyze_dit(model: nn.Module, encoder, prompts: Sequence[str], num_timesteps: int = 8,
                sample=None, seed: int = 0, guidance: float | None = None) -> dict:
    """Per-block scores of a ditkit DiT along its own sampling trajectories.

    All prompts are sampled together in one batch with Euler over `num_timesteps` steps
    (Euler has one model evaluation per step, so step k is time bin t_k; size and shift
    come from `sample`, a SampleConfig, default: the model's training size). The
    trajectory is the CFG one (engine.velocity.prompt_velocity, scale `guidance`, default
    sample.guidance), so the states are those a user's images pass through; the scores
    use only the conditional half of each CFG batch, since the unconditional pass sees
    an empty prompt, a different input distribution, and would weigh it equally.

    Returns {"kind": "dit", "blocks": depth, "timesteps": [t_k], "tokens": [N per bin],
    "linearity" | "linearity_residual_removed" | "influence" | "norm_ratio": [[per t] per block],
    "mean": {score: [per block, averaged over t]}, "prompts": n, "guidance", "size", "shift"}.
    """
    prompts = [str(p) for p in prompts] if not isinstance(prompts, str) else [prompts]
    if not prompts:
        raise ValueError("no prompts given; analyze_dit needs at least one prompt to sample")
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
    base = sample if sample is not None else SampleConfig(size=model.config.sample_size)
    sample = replace(base, sampler="euler", steps=int(num_timesteps),
                     guidance=float(base.guidance if guidance is None else guidance), apg=False)
    GenerationRequest.from_sample(prompts, sample, seed).check_for(model)  # the engine's checks of the settings
    device = next(model.parameters()).device
    velocity = prompt_velocity(model, encoder, prompts, sample.guidance)
    noise = initial_noise(len(prompts), (model.config.in_channels, sample.size, sample.size), seed, device)
    ts = timesteps(sample.steps, sample.shift)
    scorer = _Scorer(len(find_blocks(model)), rows=len(prompts), hint="use more prompts or larger images")
    with block_io_hooks(model, scorer):
        sample_euler(velocity, noise, ts)
    out = scorer.result("dit", [float(t) for t in ts[:-1]])
    out.update(prompts=len(prompts), guidance=sample.guidance, size=sample.size, shift=sample.shift)
    return out


def analyze_diffusers(transformer: nn.Module, inputs: Mapping[str, Any]) -> dict:
    """Per-block scores of a diffusers transformer (PixArtTransformer2DModel, SD3Transformer2DModel).

    `inputs` are the keyword arguments of transformer.forward (hidden_states,
    encoder_hidden_states, timestep, ...). If inputs["timestep"] is a list, the forward
    runs once per entry (a float, broadcast to the batch, or a tensor) on the same other
    inputs, each one time bin; otherwise it runs once. The image stream of every block
    is scored (block_output_states says which element of a tuple output that is).
    Returns the layout of analyze_dit, with "kind": "diffusers".
    """
    if "hidden_states" not in inputs:
        raise ValueError(f"inputs must hold the forward's keyword arguments, including hidden_states; got {sorted(inputs)}")
    raw = inputs.get("timestep")
    if raw is None:
        raise ValueError("inputs must hold a `timestep` (a tensor, a float, or a list of them, one time bin each)")
    steps = list(raw) if isinstance(raw, (list, tuple)) else [raw]
    if not steps:
        raise ValueError("inputs['timestep'] is an empty list; give at least one timestep")
    batch = inputs["hidden_states"].shape[0]
    scorer = _Scorer(len(find_blocks(transformer)), hint="use a larger batch or larger images")
    bins: list[float] = []
    with torch.no_grad(), block_io_hooks(transformer, scorer):
        for t in steps:
            tt = t if isinstance(t, torch.Tensor) else torch.full((batch,), float(t))
            bins.append(float(tt.reshape(-1)[0]))
            transformer(**{**inputs, "timestep": tt.to(inputs["hidden_states"].device)}, return_dict=False)
    return scorer.result("diffusers", bins)


def analyze_hidden_states(hidden_states: Sequence[torch.Tensor], mask: torch.Tensor | None = None) -> dict:
    """Scores of every consecutive layer pair (i -> i + 1) of a stack of (B, L, D) hidden states,
    e.g. a Hugging Face model's output_hidden_states (embeddings, then each layer).

    mask: (B, L), True (or 1) on real tokens; padding is left out of every score.
    Returns {"kind": "hidden_states", "blocks": n_pairs, "tokens": N,
    score: [per pair], "mean": {score: [per pair]}} (one bin, so "mean" is the same lists).
    """
    hs = list(hidden_states)
    if len(hs) < 2:
        raise ValueError(f"need at least 2 hidden states (one layer transition), got {len(hs)}")
    shape = hs[0].shape
    if len(shape) != 3 or any(h.shape != shape for h in hs):
        raise ValueError(f"hidden states must all have one shape (B, L, D); got {[tuple(h.shape) for h in hs]}")
    if mask is None:
        mask = torch.ones(shape[:2], dtype=torch.bool)
    if tuple(mask.shape) != tuple(shape[:2]):
        raise ValueError(f"mask must have shape (B, L) = {tuple(shape[:2])}, got {tuple(mask.shape)}")
    keep = mask.bool().to(hs[0].device)
    tokens = int(keep.sum())
    _check_tokens(tokens, shape[2], "use more or longer sentences")
    per_pair = [block_scores(a[keep], b[keep]) for a, b in zip(hs[:-1], hs[1:])]
    out: dict[str, Any] = {"kind": "hidden_states", "blocks": len(per_pair), "tokens": tokens}
    for name in SCORES:
        out[name] = [s[name] for s in per_pair]
    out["mean"] = {name: list(out[name]) for name in SCORES}
    return out


def analyze_hf_encoder(path_or_name: str | None = None, sentences: Sequence[str] = (), max_length: int = 256) -> dict:
    """analyze_hidden_states on a local Hugging Face encoder: "minilm" or None (the shipped
    all-MiniLM-L6-v2) or a model folder, loaded offline through encoders.get_text_encoder
    (AutoModel/AutoTokenizer, local_files_only=True; an encoder-decoder keeps its encoder).
    Runs the sentences with output_hidden_states=True; padding tokens are left out.
    Adds "sentences": n and "encoder": the model path to the result."""
    sentences = [sentences] if isinstance(sentences, str) else [str(s) for s in sentences]
    if not sentences:
        raise ValueError("no sentences given; analyze_hf_encoder needs at least one sentence")
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2 tokens, got {max_length}")
    enc = get_text_encoder(path_or_name)
    batch = enc.tokenizer(sentences, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    batch = {k: v.to(enc.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        hidden = enc.model(**batch, output_hidden_states=True).hidden_states
    out = analyze_hidden_states([h.float().cpu() for h in hidden], batch["attention_mask"].cpu())
    out.update(sentences=len(sentences), encoder=enc.path)
    return out


# ----------------------------------------------------------------------------
# plots and files
# ----------------------------------------------------------------------------

def _depth_label(result: Mapping[str, Any]) -> str:
    return "layer transition i -> i+1" if result.get("kind") == "hidden_states" else "block"


def plot_profile(result: Mapping[str, Any], path: str | Path) -> None:
    """Scores over depth (averaged over time bins): the three bounded scores on the left,
    the unbounded norm ratio on the right."""
    mean = result["mean"]
    xs = list(range(len(mean["linearity"])))
    plt = pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name in ("linearity", "linearity_residual_removed", "influence"):
        ax.plot(xs, mean[name], "o-", label=SCORE_LABELS[name])
    ax.set_ylim(0, 1.02), ax.set_ylabel("score"), ax.legend(fontsize=8), ax.grid(alpha=0.3)
    ax2.plot(xs, mean["norm_ratio"], "o-", color="tab:red")
    ax2.set_ylabel(SCORE_LABELS["norm_ratio"]), ax2.grid(alpha=0.3)
    for a in (ax, ax2):
        a.set_xlabel(_depth_label(result)), a.set_xticks(xs)
    over = f", mean over {len(result['timesteps'])} time bins" if result.get("timesteps") else ""
    fig.suptitle(f"per-block scores ({result.get('kind', 'model')}{over})")
    fig.tight_layout()
    save_figure(fig, path)


def plot_heatmap(result: Mapping[str, Any], score: str, path: str | Path) -> None:
    """A depth x time-bin heat map of one score (results of analyze_dit / analyze_diffusers)."""
    if score not in SCORES:
        raise ValueError(f"unknown score {score!r}; allowed: {', '.join(SCORES)}")
    if not result.get("timesteps"):
        raise ValueError("this result has no time bins (analyze_hidden_states); a heat map needs "
                         "analyze_dit or analyze_diffusers")
    m = np.asarray(result[score], dtype=float)  # (blocks, bins)
    ts = result["timesteps"]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(ts) + 2.5), max(3.0, 0.35 * m.shape[0] + 1.5)))
    im = ax.imshow(m, aspect="auto", cmap="viridis", origin="upper")
    ax.set_xticks(range(len(ts)), [f"{t:.2f}" if t < 10 else f"{t:.0f}" for t in ts], rotation=45)
    ax.set_yticks(range(m.shape[0]))
    ax.set_xlabel("t (sampling runs left to right: noise -> data)"), ax.set_ylabel(_depth_label(result))
    ax.set_title(SCORE_LABELS[score])
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    save_figure(fig, path)


def save_analysis(result: Mapping[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write analysis.json, profile.png and (when the result has time bins) heatmap_<score>.png
    for every score into out_dir. Returns {name: path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "analysis.json", "profile": out / "profile.png"}
    write_json(paths["json"], dict(result))
    plot_profile(result, paths["profile"])
    if result.get("timesteps"):
        for score in SCORES:
            paths[f"heatmap_{score}"] = out / f"heatmap_{score}.png"
            plot_heatmap(result, score, paths[f"heatmap_{score}"])
    return paths


# --------------------------------------------------------------------------
# diffusers transformers saved in a local folder (ditkit.interop.diffusers_folder loads them)
# --------------------------------------------------------------------------

def analyze_diffusers_folder(path: str | Path, num_timesteps: int = 8, seed: int = 0) -> dict:
    """analyze_diffusers on a PixArt or SD3 transformer saved in a local folder, with data-free
    calibration inputs (Gaussian latents and text states over num_timesteps time bins;
    ditkit.interop.diffusers_folder.calibration_inputs)."""
    transformer = load_diffusers_transformer(path)
    return analyze_diffusers(transformer, calibration_inputs(transformer, num_timesteps=num_timesteps, seed=seed))
