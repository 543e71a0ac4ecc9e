"""Typed configs: model (DiTConfig), data, train, sample. YAML files plus dotted overrides.

A YAML file has up to five top-level keys: model, data, train, sample,
text_encoder. `--set train.lr=1e-4` style overrides are parsed as YAML
scalars. Unknown keys are errors that list the allowed ones. Every number is checked
when a config is built (core.limits): integers are never truncated, floats are finite,
and each has its range.

Over 500 lines because the five sections and their cross-section checks (video, LoRA, data
kinds) are one schema: split, a reader would chase a field's rules across files.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import get_type_hints

import yaml

from ditkit.core.conditions import TASKS
from ditkit.core.control_maps import CONDITIONS
from ditkit.core.limits import MAX_FRAMES, MAX_SIZE, MAX_STEPS, check_int, check_interval, check_number, check_seed
from ditkit.core.precision import check_device_name
from ditkit.core.sampling import SAMPLER_NAMES
from ditkit.data import DATASETS, VIDEO_DATASETS, check_mix_dataset
from ditkit.data.shapes import training_mix
from ditkit.data.sources import check_kind

PRECISIONS = ("fp32", "bf16")
PARALLEL_MODES = ("none", "ddp", "fsdp")  # train.parallel


def coerce_fields(cls, d: dict, section: str) -> dict:
    """Convert values to the dataclass field types. YAML reads `1e-4` as a string
    (it wants `1.0e-4`), and overrides come in as text."""
    hints = get_type_hints(cls)
    out = {}
    for k, v in d.items():
        typ = hints.get(k)
        try:
            if typ is bool:
                if isinstance(v, str):
                    if v.lower() not in ("true", "false", "1", "0", "yes", "no"):
                        raise ValueError
                    v = v.lower() in ("true", "1", "yes")
                elif not isinstance(v, bool):
                    raise ValueError
            elif typ is float and not isinstance(v, bool):
                v = float(v)
            elif typ is int and not isinstance(v, bool):
                if isinstance(v, float) and not v.is_integer():
                    raise ValueError
                v = int(float(v)) if isinstance(v, str) else int(v)
            elif typ is str:
                v = "" if v is None else str(v)
        except (TypeError, ValueError):
            kind = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(typ, typ)
            raise ValueError(f"{section}.{k} must be {kind}, got {v!r}") from None
        out[k] = v
    return out


@lru_cache(maxsize=None)
def _number_fields(cls) -> tuple[tuple[str, type], ...]:
    return tuple((name, typ) for name, typ in get_type_hints(cls).items() if typ in (int, float))


def check_number_fields(config, section: str) -> None:
    """Every int and float field of a config dataclass in its type: integers not truncated
    (2.0 is 2, 2.5 an error), floats finite. Ranges are each config's own checks."""
    for name, typ in _number_fields(type(config)):
        value = getattr(config, name)
        check = check_int if typ is int else check_number
        setattr(config, name, check(f"{section}.{name}", value))


def _from_dict(cls, d: dict, section: str):
    if not isinstance(d, dict):
        raise ValueError(f"config section {section!r} must be a mapping, got {type(d).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"unknown keys in {section!r}: {sorted(unknown)}; allowed: {sorted(known)}")
    return cls(**coerce_fields(cls, d, section))


ATTENTION_KINDS = ("softmax", "linear")
VIDEO_ATTENTION_KINDS = ("factorized", "full")
POSITION_KINDS = ("rope", "sincos", "rope+abs")

# The configuration that maps onto diffusers' PixArtTransformer2DModel (ditkit.interop.diffusers).
PIXART = dict(stem_channels=0, qk_norm=False, attention="softmax", positions="sincos", cross_norm=False,
              pooled_text=False)


@dataclass
class DiTConfig:
    in_channels: int = 3
    out_channels: int = 3
    # Extra image channels concatenated to the noisy input (Kandinsky 3's inpainting model:
    # mask + masked image; a super-resolution model: the upsampled low-res image). 0 = none.
    cond_channels: int = 0
    patch_size: int = 8
    width: int = 256
    depth: int = 8
    heads: int = 4
    mlp_ratio: float = 4.0
    text_dim: int = 384
    attention: str = "softmax"
    stem_channels: int = 16
    qk_norm: bool = True
    sample_size: int = 64  # training resolution in pixels; RoPE positions are in patches
    # Indices of blocks that are token-wise affine maps (LinearBlock): what `ditkit prune
    # --replace-linear` leaves in place of a removed block (Razzhigaev et al. 2024, Sec. 5).
    linear_blocks: tuple[int, ...] = ()
    # "rope": 2D RoPE in self-attention (ditkit). "sincos": PixArt-alpha's fixed 2-D sin-cos
    # table added to the patch tokens; its grid is stretched to sample_size / patch_size
    # patches at every size, then divided by pos_interpolation (PixArt's interpolation_scale).
    # "rope+abs": RoPE plus a learned, zero-initialised linear map of that table added to the tokens.
    positions: str = "rope"
    pos_interpolation: float = 1.0
    # LayerNorm (affine) before cross-attention. PixArt-alpha has none (diffusers skips norm2 there).
    cross_norm: bool = True
    # Add a projection of the masked-mean text states to the timestep embedding. PixArt-alpha does not.
    pooled_text: bool = True
    # Video (core/video_model.py, docs/video.md): frames > 0 makes a VideoDiT, trained on clips of
    # this many frames; 0 is an image model. temporal_patch frames go into one token; attention
    # over a clip is "factorized" (spatial then temporal) or "full" (all tokens, 3D RoPE).
    frames: int = 0
    temporal_patch: int = 1
    video_attention: str = "factorized"

    def __post_init__(self) -> None:
        check_number_fields(self, "model")
        try:
            self.linear_blocks = tuple(sorted({int(i) for i in self.linear_blocks}))
        except (TypeError, ValueError):
            raise ValueError(f"model.linear_blocks must be a list of block indices, got {self.linear_blocks!r}") from None
        if any(not 0 <= i < int(self.depth) for i in self.linear_blocks):
            raise ValueError(f"model.linear_blocks {list(self.linear_blocks)} must be indices in 0..{int(self.depth) - 1}")
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(f"unknown attention kind {self.attention!r}; allowed: {', '.join(ATTENTION_KINDS)}")
        for name in ("in_channels", "out_channels", "patch_size", "width", "depth", "heads", "text_dim"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.positions not in POSITION_KINDS:
            raise ValueError(f"unknown model.positions {self.positions!r}; allowed: {', '.join(POSITION_KINDS)}")
        if not self.pos_interpolation > 0:
            raise ValueError(f"model.pos_interpolation must be > 0, got {self.pos_interpolation}")
        if self.width % self.heads:
            raise ValueError(f"model.width ({self.width}) must be divisible by model.heads ({self.heads})")
        if self.positions in ("rope", "rope+abs") and (self.width // self.heads) % 4:
            raise ValueError(f"head dim width/heads = {self.width // self.heads} must be divisible by 4 for 2D RoPE "
                             "(or use model.positions='sincos')")
        if self.positions in ("sincos", "rope+abs") and self.width % 4:
            raise ValueError(f"model.width ({self.width}) must be divisible by 4 for the 2-D sin-cos table")
        if self.stem_channels < 0:
            raise ValueError(f"model.stem_channels must be >= 0, got {self.stem_channels}")
        if int(self.cond_channels) < 0:
            raise ValueError(f"model.cond_channels must be >= 0, got {self.cond_channels}")
        self.check_video()

    def check_video(self) -> None:
        """The video fields (frames, temporal_patch, video_attention) and what a video model needs."""
        check_int("model.frames", self.frames, 0, MAX_FRAMES)
        check_int("model.temporal_patch", self.temporal_patch, 1, MAX_FRAMES)
        if self.video_attention not in VIDEO_ATTENTION_KINDS:
            raise ValueError(f"unknown model.video_attention {self.video_attention!r}; "
                             f"allowed: {', '.join(VIDEO_ATTENTION_KINDS)}")
        if self.frames == 0:
            return
        if self.frames % self.temporal_patch:
            raise ValueError(f"model.frames ({self.frames}) must be a multiple of model.temporal_patch "
                             f"({self.temporal_patch})")
        if self.positions != "rope" or self.attention != "softmax" or self.cond_channels:
            raise ValueError("a video model (model.frames > 0) needs model.positions rope, model.attention softmax "
                             f"and model.cond_channels 0 (got {self.positions}, {self.attention}, {self.cond_channels})")
        if self.video_attention == "full" and (self.width // self.heads) % 8:
            raise ValueError(f"head dim width/heads = {self.width // self.heads} must be divisible by 8 for "
                             "3D RoPE (model.video_attention full)")

    @classmethod
    def from_dict(cls, d: dict) -> "DiTConfig":
        if not isinstance(d, dict):
            raise ValueError(f"'model' must be a mapping of DiTConfig fields (width, depth, heads, ...), "
                             f"got {type(d).__name__} {d!r}")
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys {sorted(unknown)}; allowed: {sorted(known)}")
        return cls(**coerce_fields(cls, d, "model"))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["linear_blocks"] = list(self.linear_blocks)
        return d


@dataclass
class DataConfig:
    """What a model trains on (docs/data.md): a built-in world (kind builtin, `dataset`) or the
    user's own images and captions (kind folder | webdataset | hf, at `path`)."""
    # the built-in world of kind builtin: shapes | digits. Empty with the other kinds, and for
    # kind builtin it means shapes (the default).
    dataset: str = ""
    size: int = 64
    # shapes only: training-mix weights by category (single_object, two_object, counting,
    # position, free_form); unnamed categories keep their default weight. None: the default mix.
    mix: dict | None = None
    # builtin | folder | webdataset | hf (ditkit.data.sources)
    kind: str = "builtin"
    # folder and hf: a folder; webdataset: a folder of .tar shards, a brace pattern
    # ("shards/train-{000000..000009}.tar"), or several joined by "::" (a YAML list works too)
    path: str | list = ""
    # a folder written by `ditkit data prepare`: training reads the captions' text-encoder
    # states from it instead of running the encoder
    features: str = ""
    # dataset shapes-video: frames per clip (0: the world's default, 8)
    frames: int = 0

    def __post_init__(self) -> None:
        check_number_fields(self, "data")
        check_int("data.frames", self.frames, 0, MAX_FRAMES)
        if self.frames and self.dataset not in VIDEO_DATASETS:
            raise ValueError(f"data.frames is for a video dataset ({', '.join(VIDEO_DATASETS)}), "
                             f"not {self.dataset or self.kind!r}")
        check_kind(self.kind)
        if isinstance(self.path, (list, tuple)):
            self.path = "::".join(str(p) for p in self.path)
        if not isinstance(self.path, str):
            raise ValueError(f"data.path must be a path (text) or a list of paths, got {self.path!r}")
        if self.kind == "builtin":
            self.dataset = self.dataset or "shapes"
            if self.dataset not in DATASETS:
                raise ValueError(f"unknown dataset {self.dataset!r}; allowed: {', '.join(DATASETS)}")
            if self.path or self.features:
                raise ValueError(f"data.{'path' if self.path else 'features'} is for data.kind folder, webdataset "
                                 f"or hf; data.kind builtin draws the {self.dataset} world itself (set data.kind)")
        else:
            if self.dataset:
                raise ValueError(f"data.dataset names a built-in world ({', '.join(DATASETS)}); with data.kind "
                                 f"{self.kind} leave it out")
            if not self.path:
                raise ValueError(f"data.kind {self.kind} needs data.path (where the data is)")
            if self.mix is not None:
                raise ValueError("data.mix re-weights the shapes world's categories; the user's data has none")
        check_int("data.size", self.size, 32, MAX_SIZE)
        if self.mix is not None:
            if not isinstance(self.mix, dict):
                raise ValueError(f"data.mix must be a mapping of category: weight, got {self.mix!r}")
            check_mix_dataset(self.dataset)
            try:
                training_mix(self.mix)
            except ValueError as e:
                raise ValueError(f"data.mix: {e}") from None


@dataclass
class LoraSettings:
    """train.lora: train low-rank adapters (LoRA, Hu et al. 2022) on a frozen base model
    (train.init_from) instead of all its weights; ditkit.core.lora applies them through peft."""
    rank: int = 8
    alpha: float = 8.0              # the update is scaled by alpha / rank
    # Linear layers inside each DiT block, by their name in the block (core.lora.LORA_TARGETS);
    # empty: all of them (self-attention qkv/proj, cross-attention q/kv/proj, MLP fc1/fc2)
    targets: list = field(default_factory=list)
    dropout: float = 0.0

    def __post_init__(self) -> None:
        check_number_fields(self, "train.lora")
        self.rank = check_int("train.lora.rank", self.rank, 1, 1024)
        self.alpha = check_number("train.lora.alpha", self.alpha, 0.0, lo_open=True)
        self.dropout = check_number("train.lora.dropout", self.dropout, 0.0, 1.0, hi_open=True)
        if isinstance(self.targets, str) or not isinstance(self.targets, (list, tuple)) \
                or not all(isinstance(t, str) and t for t in self.targets):
            raise ValueError(f"train.lora.targets must be a list of layer names in a DiT block "
                             f"(e.g. [attn.qkv, mlp.fc1]), got {self.targets!r}")
        self.targets = list(self.targets)


@dataclass
class ControlSettings:
    """train.control: train a ControlNet-Transformer (PixArt-delta; core/control.py) on a frozen
    base model (train.init_from): trainable copies of its first `blocks` blocks that read a
    condition map of kind `condition` (core/control_maps.py), rendered from the shapes world's
    ground truth on the fly. Checkpoints then hold the control model (RUN/control)."""
    condition: str = "edges"
    blocks: int = 0                 # copied blocks; 0: half the base's depth (PixArt-delta copies 13 of 28)

    def __post_init__(self) -> None:
        check_number_fields(self, "train.control")
        if self.condition not in CONDITIONS:
            raise ValueError(f"unknown train.control.condition {self.condition!r}; allowed: {', '.join(CONDITIONS)}")
        self.blocks = check_int("train.control.blocks", self.blocks, 0, 64)


@dataclass
class TrainConfig:
    output_dir: str = "runs/shapes-64"
    steps: int = 20000
    batch_size: int = 16
    lr: float = 5e-4
    warmup_steps: int = 500
    cooldown_steps: int = 0         # linear decay to 0 over the last N steps (warmup-stable-decay); 0 = constant
    cooldown_fraction: float = 0.0  # or over this fraction of `steps` (follows `steps` when a time budget sets it)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    cfg_dropout: float = 0.1        # fraction of captions replaced by "" (classifier-free guidance training)
    precision: str = "bf16"
    time_mean: float = 0.0          # logit-normal time sampling (SD3)
    time_std: float = 1.0
    checkpoint_every: int = 250
    log_every: int = 25
    eval_every: int = 0             # 0 = no ShapesEval during training
    eval_per_category: int = 10
    seed: int = 0
    device: str = "cpu"
    init_from: str = ""             # a model folder to start from (fine-tuning, or continuing from shipped weights)
    task: str = "generate"          # generate | inpaint | upscale (ditkit.core.conditions)
    num_workers: int = 0            # data worker processes (0: batches made in the training process)
    time_budget_s: float = 0.0      # > 0: after a short probe, cut `steps` to what fits in this many seconds
    # Stable Target Field (Xu et al. 2023): for times t >= stf_min_t, regress on the posterior
    # mean of x0 over this many extra scenes drawn for the same caption (0 = off; shapes only)
    stf_refs: int = 0
    stf_min_t: float = 0.8
    # weight of the mean cosine similarity between each block's input and output tokens, added
    # to the loss (Razzhigaev et al. 2024's linearity regularizer): > 0 penalises similar
    # consecutive embeddings, < 0 rewards them, 0 = off (docs/analysis.md measures both)
    cosine_reg: float = 0.0
    # fraction of samples trained at exactly t = 1 (pure noise, zero SNR), on top of the
    # logit-normal times. The sampler's first step is taken there; logit-normal(0, 1) puts
    # 2e-6 of its mass above t = 0.99, so without this the model meets that input only by
    # extrapolation (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps
    # are Flawed"; docs/models.md measures what it changes)
    pure_noise_fraction: float = 0.0
    # how the steps are spread over processes (docs/training.md): none (one process), ddp
    # (DistributedDataParallel) or fsdp (FSDP2 fully_shard); under torchrun "none" runs as ddp
    parallel: str = "none"
    # LoRA fine-tuning of the train.init_from model (LoraSettings: rank, alpha, targets,
    # dropout); absent = train every weight. Checkpoints then hold the adapter (RUN/lora).
    lora: LoraSettings | None = None
    # a video model: the share of clips whose first frame is given clean (t = 0, no loss on it),
    # so one model also serves image-to-video (core/video_model.py, docs/video.md)
    first_frame_prob: float = 0.0
    # a ControlNet-Transformer on the frozen train.init_from model (ControlSettings: condition,
    # blocks); absent = train the model itself. Checkpoints then hold the control model (RUN/control).
    control: ControlSettings | None = None

    def __post_init__(self) -> None:
        check_number_fields(self, "train")
        self.first_frame_prob = check_number("train.first_frame_prob", self.first_frame_prob, 0.0, 1.0)
        if isinstance(self.control, dict):
            self.control = _from_dict(ControlSettings, self.control, "train.control")
        elif self.control is not None and not isinstance(self.control, ControlSettings):
            raise ValueError(f"train.control must be a mapping (condition, blocks), got {self.control!r}")
        if self.control is not None:
            if not self.init_from:
                raise ValueError("train.control trains a control model for a base model: set train.init_from to "
                                 "its folder or an embedded name (e.g. shapes-64)")
            if self.lora is not None or self.task != "generate":
                raise ValueError("train.control trains with train.task generate and without train.lora")
        if isinstance(self.lora, dict):
            self.lora = _from_dict(LoraSettings, self.lora, "train.lora")
        elif self.lora is not None and not isinstance(self.lora, LoraSettings):
            raise ValueError(f"train.lora must be a mapping (rank, alpha, targets, dropout; {{}} for the defaults), "
                             f"got {self.lora!r}")
        if self.lora is not None and not self.init_from:
            raise ValueError("train.lora trains adapters on a base model: set train.init_from to its folder "
                             "or an embedded name (e.g. shapes-64)")
        self.seed = check_seed(self.seed, "train.seed")
        check_device_name(self.device, "train.device")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown train.precision {self.precision!r}; allowed: {', '.join(PRECISIONS)}")
        for name in ("steps", "batch_size", "checkpoint_every", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.cfg_dropout < 1:
            raise ValueError(f"train.cfg_dropout must be in [0, 1), got {self.cfg_dropout}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"train.ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.lr <= 0:
            raise ValueError(f"train.lr must be > 0, got {self.lr}")
        if not 0 <= self.cooldown_fraction <= 1:
            raise ValueError(f"train.cooldown_fraction must be in [0, 1], got {self.cooldown_fraction}")
        if not -1 <= self.cosine_reg <= 1:
            raise ValueError(f"train.cosine_reg must be in [-1, 1] (a loss weight; the flow loss is ~0.01-1), "
                             f"got {self.cosine_reg}")
        if not 0 <= self.pure_noise_fraction <= 1:
            raise ValueError(f"train.pure_noise_fraction must be in [0, 1], got {self.pure_noise_fraction}")
        if self.stf_refs < 0:
            raise ValueError(f"train.stf_refs must be >= 0, got {self.stf_refs}")
        if not 0 <= self.stf_min_t < 1:
            raise ValueError(f"train.stf_min_t must be in [0, 1), got {self.stf_min_t}")
        for name in ("warmup_steps", "cooldown_steps", "eval_every", "num_workers"):
            check_int(f"train.{name}", getattr(self, name), 0)
        check_int("train.eval_per_category", self.eval_per_category, 1)
        for name in ("weight_decay", "grad_clip", "time_budget_s"):
            check_number(f"train.{name}", getattr(self, name), 0.0)
        check_number("train.time_std", self.time_std, 0.0, lo_open=True)
        if self.task not in TASKS:
            raise ValueError(f"unknown train.task {self.task!r}; allowed: {', '.join(TASKS)}")
        if self.parallel not in PARALLEL_MODES:
            raise ValueError(f"unknown train.parallel {self.parallel!r}; allowed: {', '.join(PARALLEL_MODES)}")


@dataclass
class SampleConfig:
    """Default sampling settings, stored with every model."""
    sampler: str = "euler"
    steps: int = 25
    guidance: float = 4.0
    shift: float = 1.0
    apg: bool = False
    size: int = 64
    # Guidance only for t in [interval_lo, interval_hi] (Kynkäänniemi et al., NeurIPS 2024):
    # guidance at the highest noise levels mostly costs diversity.
    interval_lo: float = 0.0
    interval_hi: float = 1.0
    # Steps with t >= prior_until take x0 from a pure-noise (t = 1) prediction: the caption's
    # mean image, from prior_model (an embedded model name or a folder: a model trained only
    # at t = 1) or, when that is empty, from the model itself. 1.0 and no prior model = off.
    # See sampling.pure_noise_prior.
    prior_until: float = 1.0
    prior_model: str = ""

    def __post_init__(self) -> None:
        # The one check of the sampling numbers: a GenerationRequest is built from (or checked
        # as) a SampleConfig, so API keywords, CLI flags and model configs meet these limits.
        # Names without "sample." because API callers see them too.
        if self.sampler not in SAMPLER_NAMES:
            raise ValueError(f"unknown sampler {self.sampler!r}; allowed: {', '.join(SAMPLER_NAMES)}")
        self.steps = check_int("steps", self.steps, 1, MAX_STEPS)
        self.guidance = check_number("guidance", self.guidance, 0.0)
        self.shift = check_number("shift", self.shift, 0.0, lo_open=True)
        if not isinstance(self.apg, bool):
            raise ValueError(f"apg must be true or false, got {self.apg!r}")
        self.size = check_int("size", self.size, 1, MAX_SIZE)
        self.interval_lo, self.interval_hi = check_interval(self.interval_lo, self.interval_hi)
        self.prior_until = check_number("prior_until", self.prior_until, 0.0, 1.0, lo_open=True)
        if not isinstance(self.prior_model, str):
            raise ValueError(f"prior_model must be a model name or folder (a string), got {self.prior_model!r}")


@dataclass
class Config:
    model: DiTConfig = field(default_factory=DiTConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    text_encoder: str = "minilm"

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        d = dict(d or {})
        allowed = {"model", "data", "train", "sample", "text_encoder"}
        unknown = set(d) - allowed
        if unknown:
            raise ValueError(f"unknown config sections {sorted(unknown)}; allowed: {sorted(allowed)}")
        config = cls(
            model=DiTConfig.from_dict(d.get("model") or {}),
            data=_from_dict(DataConfig, d.get("data") or {}, "data"),
            train=_from_dict(TrainConfig, d.get("train") or {}, "train"),
            sample=_from_dict(SampleConfig, d.get("sample") or {}, "sample"),
            text_encoder=str(d.get("text_encoder", "minilm")),
        )
        config.check_video()
        return config

    def check_video(self) -> None:
        """A video model trains on a video dataset and an image model on images; the clip length
        is the model's (data.frames follows model.frames)."""
        video_data = self.data.kind == "builtin" and self.data.dataset in VIDEO_DATASETS
        if bool(self.model.frames) != video_data:
            raise ValueError(f"model.frames {self.model.frames} with data.dataset {self.data.dataset or self.data.kind!r}: "
                             f"a video model (model.frames > 0) trains on {', '.join(VIDEO_DATASETS)} and an image "
                             "model (model.frames 0) on images")
        if not video_data:
            if self.train.first_frame_prob:
                raise ValueError("train.first_frame_prob is for video models (model.frames > 0)")
            return
        self.data.frames = self.data.frames or self.model.frames
        if self.data.frames % self.model.temporal_patch:
            raise ValueError(f"data.frames {self.data.frames} must be a multiple of model.temporal_patch "
                             f"{self.model.temporal_patch}")
        if self.train.first_frame_prob and self.model.temporal_patch != 1:
            raise ValueError("train.first_frame_prob (image-to-video) needs model.temporal_patch 1: the given first "
                             "frame must be a latent frame of its own")
        if self.train.task != "generate" or self.train.lora or self.train.stf_refs or self.train.cosine_reg:
            raise ValueError("a video model trains with train.task generate, without train.lora, train.stf_refs "
                             "or train.cosine_reg")

    def to_dict(self) -> dict:
        return {"model": self.model.to_dict(), "data": asdict(self.data), "train": asdict(self.train),
                "sample": asdict(self.sample), "text_encoder": self.text_encoder}


def apply_overrides(d: dict, overrides: list[str]) -> dict:
    """Apply ["train.lr=1e-4", "model.depth=4"] to a nested dict (values parsed as YAML scalars)."""
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like section.key=value")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = d
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = yaml.safe_load(value)
    return d


def read_yaml_config(path: str | Path, overrides: list[str] | None = None, what: str = "config file") -> dict:
    """A YAML file holding a mapping, with KEY=VALUE overrides applied; clear errors otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} {path} does not exist")
    try:
        d = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{what} {path} is not valid YAML{_yaml_position(e)}: {_yaml_problem(e)}") from None
    if not isinstance(d, dict):
        raise ValueError(f"{what} {path} must hold a mapping at the top level")
    return apply_overrides(d, overrides or [])


def _yaml_position(e: yaml.YAMLError) -> str:
    """ " at line L, column C" (1-based) where yaml located the problem, else ""."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


def _yaml_problem(e: yaml.YAMLError) -> str:
    problem = getattr(e, "problem", None)
    return problem if problem else str(e).splitlines()[0]


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    return Config.from_dict(read_yaml_config(path, overrides))
