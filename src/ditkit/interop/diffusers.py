"""ditkit <-> diffusers: PixArt-alpha weights both ways.

    from ditkit.interop.diffusers import to_diffusers, from_diffusers
    transformer = to_diffusers(model)      # a DiT built with DiTConfig(**PIXART, ...)
    model = from_diffusers(transformer)    # a diffusers PixArtTransformer2DModel

A DiT in the "pixart" configuration (model.PIXART: no stem, no q/k norm,
softmax attention, the fixed sin-cos position table, no norm before
cross-attention, no pooled text) computes exactly what diffusers'
PixArtTransformer2DModel computes without PixArt-alpha's resolution/aspect
micro-conditions (Chen et al. 2023, Sec. 2.3 and App. A). The mapping is a pure
rename plus three exact reshapes:

- ditkit's fused self-attention qkv splits into to_q, to_k, to_v (rows in that
  order; heads contiguous in each), its fused cross-attention kv into to_k, to_v;
- ditkit's final linear emits each patch as (C, p, p) (ditkit.core.model.unpatchify);
  diffusers' proj_out emits (p, p, C): the rows are permuted;
- the sin-cos table is not a weight on either side (diffusers keeps it in a
  non-persistent buffer), so nothing is copied for it.

Time is t in [0, 1] in ditkit and t * 1000 in diffusers; both embed it with the
same sinusoid (ditkit.core.model.timestep_embedding), so a converted transformer is
called with timestep = 1000 * t. The padding mask is True/1 = real token on both sides.

diffusers is an optional dependency (the [interop] extra) and is imported lazily.
Weights are read from safetensors only (never pickle).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ditkit.core.checkpoint import load_model, require_safetensors_weights, resolve_model, save_model
from ditkit.core.config import SampleConfig
from ditkit.core.files import atomic_folder, check_new_folder
from ditkit.core.model import PIXART, DiT, DiTConfig
from ditkit.interop.diffusers_folder import is_diffusers_folder

if TYPE_CHECKING:
    from diffusers import PixArtTransformer2DModel

DIFFUSERS_CLASS = "PixArtTransformer2DModel"
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"


def _pixart_class():
    """diffusers' PixArtTransformer2DModel, or a ValueError saying how to install diffusers."""
    try:
        from diffusers import PixArtTransformer2DModel  # optional dependency (the [interop] extra)
    except ImportError:
        raise ValueError("converting to or from diffusers needs the diffusers package: "
                         "pip install 'ditkit[interop]'") from None
    return PixArtTransformer2DModel


# ----------------------------------------------------------------------------
# configurations
# ----------------------------------------------------------------------------

def pixart_incompatibilities(cfg: DiTConfig) -> list[str]:
    """Why a DiTConfig cannot become a PixArtTransformer2DModel (empty: it can)."""
    problems = []
    if cfg.stem_channels:
        problems.append(f"stem_channels={cfg.stem_channels} has no PixArt equivalent (set 0: a plain patch embedding)")
    if cfg.qk_norm:
        problems.append("qk_norm=True has no PixArt equivalent (PixArt has no query/key norm)")
    if cfg.attention != "softmax":
        problems.append(f"attention={cfg.attention!r} has no PixArt equivalent (PixArt uses softmax attention)")
    if cfg.positions != "sincos":
        problems.append(f"positions={cfg.positions!r} has no PixArt equivalent (PixArt adds a sin-cos table: "
                        "positions='sincos')")
    if cfg.cross_norm:
        problems.append("cross_norm=True has no PixArt equivalent (PixArt has no norm before cross-attention)")
    if cfg.pooled_text:
        problems.append("pooled_text=True has no PixArt equivalent (PixArt adds no pooled text to the timestep)")
    if cfg.cond_channels:
        problems.append(f"cond_channels={cfg.cond_channels} has no PixArt equivalent (no conditioning image input)")
    if cfg.linear_blocks:
        problems.append(f"linear_blocks={list(cfg.linear_blocks)} has no PixArt equivalent (all blocks are full)")
    if float(cfg.mlp_ratio) != 4.0:
        problems.append(f"mlp_ratio={cfg.mlp_ratio} has no PixArt equivalent (PixArt's MLP is 4x wide)")
    return problems


def check_pixart(cfg: DiTConfig) -> None:
    """Raise one ValueError naming every option that stops `cfg` from mapping onto PixArt."""
    problems = pixart_incompatibilities(cfg)
    if problems:
        raise ValueError("cannot convert to diffusers' PixArtTransformer2DModel: " + "; ".join(problems)
                         + f". Allowed: DiTConfig(**ditkit.core.model.PIXART, ...) = {_pixart_spec()}")


def _pixart_spec() -> str:
    return ", ".join(f"{k}={v!r}" for k, v in PIXART.items()) + ", cond_channels=0, linear_blocks=[], mlp_ratio=4.0"


def diffusers_config(cfg: DiTConfig) -> dict:
    """PixArtTransformer2DModel keyword arguments for a pixart-configured DiTConfig."""
    check_pixart(cfg)
    return dict(num_attention_heads=cfg.heads, attention_head_dim=cfg.width // cfg.heads,
                in_channels=cfg.in_channels, out_channels=cfg.out_channels, num_layers=cfg.depth, dropout=0.0,
                cross_attention_dim=cfg.width, attention_bias=True, sample_size=cfg.sample_size,
                patch_size=cfg.patch_size, activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
                upcast_attention=False, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
                interpolation_scale=cfg.pos_interpolation, use_additional_conditions=False,
                caption_channels=cfg.text_dim, attention_type="default")


def ditkit_config(transformer_config) -> DiTConfig:
    """The pixart DiTConfig of a PixArtTransformer2DModel config (its `.config` or a dict);
    one ValueError naming every setting ditkit has no equivalent for."""
    c = dict(transformer_config)
    heads, head_dim = int(c.get("num_attention_heads", 16)), int(c.get("attention_head_dim", 72))
    width = heads * head_dim
    sample_size = int(c.get("sample_size", 128))
    extra = c.get("use_additional_conditions")
    if extra is None:  # diffusers' own default: micro-conditions on for the 1024 px model (sample_size 128)
        extra = sample_size == 128
    expected = [("norm_type", "ada_norm_single"), ("activation_fn", "gelu-approximate"), ("attention_bias", True),
                ("norm_elementwise_affine", False), ("norm_eps", 1e-6), ("attention_type", "default")]
    problems = [f"{k}={c.get(k)!r} (ditkit: {v!r})" for k, v in expected if k in c and c[k] != v]
    if extra:
        problems.append("use_additional_conditions=True (PixArt-alpha's resolution and aspect-ratio embeddings) "
                        "has no ditkit equivalent")
    if c.get("caption_channels") is None:
        problems.append("caption_channels=None (no caption projection) has no ditkit equivalent")
    if c.get("cross_attention_dim", width) != width:
        problems.append(f"cross_attention_dim={c.get('cross_attention_dim')} != width {width} has no ditkit "
                        "equivalent (ditkit cross-attends to text projected to the model width)")
    if problems:
        raise ValueError(f"cannot convert this {DIFFUSERS_CLASS} to ditkit: " + "; ".join(problems))
    in_channels = int(c.get("in_channels", 4))
    out_channels = c.get("out_channels")
    scale = c.get("interpolation_scale")
    patch = int(c.get("patch_size", 2))
    return DiTConfig(**PIXART, in_channels=in_channels,
                     out_channels=in_channels if out_channels is None else int(out_channels),
                     patch_size=patch, width=width, depth=int(c.get("num_layers", 28)), heads=heads, mlp_ratio=4.0,
                     text_dim=int(c["caption_channels"]), sample_size=sample_size,
                     # diffusers' default interpolation_scale, as PixArtTransformer2DModel.__init__ sets it
                     pos_interpolation=float(scale) if scale is not None else float(max(sample_size // 64, 1)))


# ----------------------------------------------------------------------------
# weights
# ----------------------------------------------------------------------------

def _names(cfg: DiTConfig) -> list[tuple[str, str]]:
    """(ditkit name, diffusers name) of every tensor that is a plain copy."""
    pairs = [("patch_embed", "pos_embed.proj"), ("t_embed.0", "adaln_single.emb.timestep_embedder.linear_1"),
             ("t_embed.2", "adaln_single.emb.timestep_embedder.linear_2"), ("adaln_single.1", "adaln_single.linear"),
             ("text_proj.0", "caption_projection.linear_1"), ("text_proj.2", "caption_projection.linear_2")]
    out = [(f"{a}.{s}", f"{b}.{s}") for a, b in pairs for s in ("weight", "bias")]
    out.append(("final_table", "scale_shift_table"))
    for i in range(cfg.depth):
        a, b = f"blocks.{i}", f"transformer_blocks.{i}"
        out.append((f"{a}.scale_shift_table", f"{b}.scale_shift_table"))
        for x, y in (("attn.proj", "attn1.to_out.0"), ("cross_attn.q", "attn2.to_q"),
                     ("cross_attn.proj", "attn2.to_out.0"), ("mlp.fc1", "ff.net.0.proj"), ("mlp.fc2", "ff.net.2")):
            out += [(f"{a}.{x}.{s}", f"{b}.{y}.{s}") for s in ("weight", "bias")]
    return out


def _patch_rows(t: torch.Tensor, cfg: DiTConfig, to_diffusers: bool) -> torch.Tensor:
    """Reorder the final linear's output rows between ditkit's (C, p, p) and diffusers' (p, p, C) patch layout."""
    p, c = cfg.patch_size, cfg.out_channels
    rest = t.shape[1:]
    if to_diffusers:
        return t.reshape(c, p, p, *rest).permute(1, 2, 0, *range(3, 3 + len(rest))).reshape(t.shape)
    return t.reshape(p, p, c, *rest).permute(2, 0, 1, *range(3, 3 + len(rest))).reshape(t.shape)


def state_dict_to_diffusers(state: dict[str, torch.Tensor], cfg: DiTConfig) -> dict[str, torch.Tensor]:
    """A pixart DiT's state dict -> PixArtTransformer2DModel's (exact: renames, splits, a row permutation)."""
    check_pixart(cfg)
    out = {b: state[a] for a, b in _names(cfg)}
    for i in range(cfg.depth):
        a, b = f"blocks.{i}", f"transformer_blocks.{i}"
        for s in ("weight", "bias"):
            q, k, v = state[f"{a}.attn.qkv.{s}"].chunk(3, dim=0)
            out.update({f"{b}.attn1.to_q.{s}": q, f"{b}.attn1.to_k.{s}": k, f"{b}.attn1.to_v.{s}": v})
            k, v = state[f"{a}.cross_attn.kv.{s}"].chunk(2, dim=0)
            out.update({f"{b}.attn2.to_k.{s}": k, f"{b}.attn2.to_v.{s}": v})
    for s in ("weight", "bias"):
        out[f"proj_out.{s}"] = _patch_rows(state[f"final_linear.{s}"], cfg, to_diffusers=True)
    return {k: v.clone() for k, v in out.items()}


def state_dict_from_diffusers(state: dict[str, torch.Tensor], cfg: DiTConfig) -> dict[str, torch.Tensor]:
    """PixArtTransformer2DModel's state dict -> a pixart DiT's; the inverse of state_dict_to_diffusers."""
    state = {k: v for k, v in state.items() if k != "pos_embed.pos_embed"}  # a fixed table, not a weight
    out = {a: state[b] for a, b in _names(cfg)}
    for i in range(cfg.depth):
        a, b = f"blocks.{i}", f"transformer_blocks.{i}"
        for s in ("weight", "bias"):
            out[f"{a}.attn.qkv.{s}"] = torch.cat([state[f"{b}.attn1.to_{n}.{s}"] for n in "qkv"], dim=0)
            out[f"{a}.cross_attn.kv.{s}"] = torch.cat([state[f"{b}.attn2.to_{n}.{s}"] for n in "kv"], dim=0)
    for s in ("weight", "bias"):
        out[f"final_linear.{s}"] = _patch_rows(state[f"proj_out.{s}"], cfg, to_diffusers=False)
    return {k: v.clone() for k, v in out.items()}


def _load_exact(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """load_state_dict that names missing or unexpected tensors in a ValueError (never silently partial)."""
    own = module.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"{what}: {len(missing)} missing tensors (e.g. {missing[:3]}), "
                         f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
    for k, v in state.items():
        if v.shape != own[k].shape:
            raise ValueError(f"{what}: tensor {k!r} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}")
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def to_diffusers(model: DiT) -> "PixArtTransformer2DModel":
    """A PixArtTransformer2DModel computing exactly what `model` computes (same dtype and
    device, eval mode). Raises ValueError naming the options PixArt cannot express."""
    check_pixart(model.config)
    transformer = _pixart_class()(**diffusers_config(model.config))
    _load_exact(transformer, state_dict_to_diffusers(model.state_dict(), model.config), "to_diffusers")
    transformer = transformer.to(next(model.parameters()).device).eval()
    # (.to(dtype) only when needed: diffusers warns on any dtype cast of a model)
    return transformer.to(dtype=model.dtype) if model.dtype != torch.float32 else transformer


def from_diffusers(transformer: "PixArtTransformer2DModel") -> DiT:
    """The ditkit DiT of a PixArtTransformer2DModel (same dtype and device, eval mode)."""
    name = type(transformer).__name__
    if name != DIFFUSERS_CLASS:
        raise ValueError(f"cannot convert a {name} to ditkit; allowed: {DIFFUSERS_CLASS}")
    cfg = ditkit_config(transformer.config)
    model = DiT(cfg)
    state = state_dict_from_diffusers(transformer.state_dict(), cfg)
    _load_exact(model, state, "from_diffusers")
    p = next(transformer.parameters())
    return model.to(device=p.device, dtype=p.dtype).eval()


# ----------------------------------------------------------------------------
# folders
# ----------------------------------------------------------------------------

def save_diffusers(model: DiT, folder: str | Path) -> Path:
    """Write `model` as a diffusers transformer folder (config.json + diffusion_pytorch_model.safetensors),
    loadable with PixArtTransformer2DModel.from_pretrained(folder)."""
    folder = Path(folder)
    to_diffusers(model).save_pretrained(str(folder), safe_serialization=True)
    return folder


def load_diffusers(folder: str | Path) -> "PixArtTransformer2DModel":
    """A PixArtTransformer2DModel from a local folder, weights from safetensors only (nothing
    is downloaded, nothing is unpickled)."""
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise ValueError(f"{folder} is not a diffusers transformer folder (no config.json)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"diffusers config {cfg_path} is not valid JSON: {e}") from None
    name = cfg.get("_class_name") if isinstance(cfg, dict) else None
    if name != DIFFUSERS_CLASS:
        raise ValueError(f"{folder} holds a {name or 'non-diffusers'} model; allowed: {DIFFUSERS_CLASS}")
    if not (folder / DIFFUSERS_WEIGHTS).is_file():
        require_safetensors_weights(folder, "diffusers folder")  # pickled weights only: say so
        raise ValueError(f"{folder} has no {DIFFUSERS_WEIGHTS} (only safetensors weights are read, never pickle)")
    # use_safetensors=True: never fall back to a pickled .bin; low_cpu_mem_usage=False avoids needing accelerate.
    return _pixart_class().from_pretrained(str(folder), local_files_only=True, use_safetensors=True,
                                                    low_cpu_mem_usage=False).eval()


def diffusers_folder_to_ditkit(src: str | Path, out: str | Path, sample=None, text_encoder: str = "minilm") -> Path:
    """Convert a diffusers PixArt transformer folder into a ditkit model folder
    (config.json + model.safetensors). `sample`: the SampleConfig to record (default: ditkit's
    defaults at the transformer's sample_size)."""
    model = from_diffusers(load_diffusers(src)).float()
    sample = sample or SampleConfig(size=model.config.sample_size)
    return save_model(out, model, sample, text_encoder=text_encoder, extra={"converted_from": "diffusers"})


def ditkit_folder_to_diffusers(src: str | Path, out: str | Path) -> Path:
    """Convert a ditkit model folder (or embedded model name) into a diffusers transformer folder."""
    model, _ = load_model(resolve_model(src))
    return save_diffusers(model, out)


def convert_folder(src: str | Path, to: str, out: str | Path) -> Path:
    """Convert a model folder to `to` ("diffusers" or "ditkit") in `out`, which must not exist.
    Written to a sibling temporary folder and renamed, so a failure leaves no partial output."""
    if to not in ("diffusers", "ditkit"):
        raise ValueError(f"unknown target {to!r}; allowed: diffusers, ditkit")
    out = check_new_folder(out)
    src_is_diffusers = Path(src).is_dir() and is_diffusers_folder(src)
    if to == "ditkit" and not src_is_diffusers:
        raise ValueError(f"{src!r} is not a diffusers transformer folder (a config.json with _class_name "
                         f"{DIFFUSERS_CLASS!r}); --to ditkit converts from diffusers")
    if to == "diffusers" and src_is_diffusers:
        raise ValueError(f"{src!r} is already a diffusers folder; --to diffusers converts a ditkit model")
    with atomic_folder(out) as tmp:
        if to == "ditkit":
            diffusers_folder_to_ditkit(src, tmp)
        else:
            ditkit_folder_to_diffusers(src, tmp)
    return out
