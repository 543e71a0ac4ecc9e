"""Checkpoints: self-describing folders, safetensors only, atomic writes.

A model folder holds
    config.json         {"model": DiTConfig, "sample": SampleConfig, "text_encoder": ..., ...}
    model.safetensors   inference (EMA) weights
A training run folder adds train_state.safetensors: raw weights, EMA weights,
optimizer tensors, and the step and optimizer hyper-parameters as JSON
metadata, in one file so a kill can never leave them out of step.
Every write goes to a temporary file in the same folder and is renamed into
place (os.replace is atomic on POSIX), so a crash never leaves a partial file.
Nothing is ever unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ditkit.core.config import Config, SampleConfig, _from_dict
from ditkit.core.files import atomic_write, atomic_write_bytes
from ditkit.core.model import DiT, DiTConfig
from ditkit.core.video_model import build_model
from ditkit.core.precision import resolve_device

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
STATE_FILE = "train_state.safetensors"
WEIGHTS_DIR = Path(__file__).parent.parent / "weights"  # the embedded models shipped in the package


def embedded_models() -> list[str]:
    """Names of the models shipped in the package (folders under ditkit/weights)."""
    if not WEIGHTS_DIR.is_dir():
        return []
    return sorted(p.name for p in WEIGHTS_DIR.iterdir() if (p / CONFIG_FILE).is_file())


def resolve_model(name_or_path: str | Path) -> Path:
    """An embedded model name or a folder path -> the model folder."""
    name = str(name_or_path)
    if name in embedded_models():
        return WEIGHTS_DIR / name
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    raise ValueError(f"unknown model {name!r}: not an embedded model ({', '.join(embedded_models()) or 'none'}) "
                     "and not a model folder")


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def require_safetensors_weights(folder: str | Path, what: str) -> None:
    """Refuse a model folder (a Hugging Face or diffusers one) whose weights are not in
    safetensors: ditkit never unpickles, since loading a pickle can run any code. `what`
    names the folder in the message (e.g. "text encoder folder")."""
    folder = Path(folder)
    if any(folder.glob("*.safetensors")):
        return
    pickled = sorted(f.name for f in folder.iterdir() if f.is_file() and f.name.endswith(PICKLE_SUFFIXES))
    if pickled:
        raise ValueError(f"{what} {folder} holds only pickled weights ({', '.join(pickled)}); convert it to "
                         "safetensors (ditkit never unpickles: a pickle can run code)")
    raise ValueError(f"{what} {folder} holds no weights (*.safetensors)")


def atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata), durable=True, suffix=".tmp")


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ValueError(f"checkpoint file {path} is missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"checkpoint file {path} is corrupt or not a safetensors file: {e}") from None


def save_model(folder: str | Path, model: DiT, sample: SampleConfig | None = None, text_encoder: str = "minilm",
               extra: dict | None = None, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Write config.json + model.safetensors into `folder` (created if needed)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"model": model.config.to_dict(), "sample": (sample or SampleConfig()).__dict__, "text_encoder": text_encoder,
           "format": "ditkit-dit-v1"}
    cfg.update(extra or {})
    atomic_save_tensors(folder / MODEL_FILE, state_dict if state_dict is not None else model.state_dict(),
                        metadata={"format": "pt"})
    atomic_write_bytes(folder / CONFIG_FILE, (json.dumps(cfg, indent=2) + "\n").encode())
    return folder


def read_model_config(folder: str | Path) -> dict:
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise ValueError(f"model config {path} is missing (a ditkit model folder holds {CONFIG_FILE} and {MODEL_FILE})")
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"model config {path} is not valid JSON: {e}") from None
    if not isinstance(cfg, dict) or "model" not in cfg:
        raise ValueError(f"model config {path} has no 'model' section")
    return cfg


def load_model(folder: str | Path, device: str | torch.device = "cpu") -> tuple[DiT, dict]:
    """Build the DiT a folder describes and load its weights. Returns (model in eval mode, config dict)."""
    device = resolve_device(device)  # every model load: `tpu` or a missing GPU is a clear error, not torch's
    folder = Path(folder)
    cfg = read_model_config(folder)
    try:
        model_cfg = DiTConfig.from_dict(cfg["model"])
        cfg["sample"] = _from_dict(SampleConfig, cfg.get("sample") or {}, "sample")
    except (TypeError, ValueError) as e:
        raise ValueError(f"model config {folder / CONFIG_FILE} is invalid: {e}") from None
    model = build_model(model_cfg)  # a VideoDiT when model.frames > 0
    load_weights_into(model, folder / MODEL_FILE)
    return model.to(device).eval(), cfg


def load_weights_into(model: torch.nn.Module, path: Path, prefix: str = "") -> None:
    tensors = _load_tensors(Path(path))
    if prefix:
        tensors = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(f"checkpoint {path} does not match the model config: "
                         f"{len(missing)} missing keys (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})")
    for k, v in tensors.items():
        if v.shape != expected[k].shape:
            raise ValueError(f"checkpoint {path}: tensor {k!r} has shape {tuple(v.shape)}, "
                             f"the model config expects {tuple(expected[k].shape)}")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in tensors.items()})


# ----------------------------------------------------------------------------
# training state (resume)
# ----------------------------------------------------------------------------

def save_train_state(folder: str | Path, step: int, model: torch.nn.Module, ema: torch.nn.Module,
                     optimizer: torch.optim.Optimizer, config: Config) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    opt = optimizer.state_dict()
    scalars: dict[str, dict] = {}
    for idx, st in opt["state"].items():
        for name, val in st.items():
            if torch.is_tensor(val):
                tensors[f"opt.{idx}.{name}"] = val
            else:
                scalars.setdefault(str(idx), {})[name] = val
    meta = {"step": str(step), "param_groups": json.dumps(opt["param_groups"]), "opt_scalars": json.dumps(scalars),
            "config": json.dumps(config.to_dict())}
    atomic_save_tensors(folder / STATE_FILE, tensors, metadata=meta)


def read_train_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A one-process training state file's tensors and metadata (step, param_groups,
    opt_scalars, config), checked to be ditkit train's."""
    path = Path(path)
    tensors = _load_tensors(path)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    for key in ("step", "param_groups", "opt_scalars"):
        if key not in meta:
            raise ValueError(f"training state {path} lacks metadata {key!r}; it was not written by ditkit train")
    return tensors, meta


def load_train_state(folder: str | Path, model: torch.nn.Module, ema: torch.nn.Module,
                     optimizer: torch.optim.Optimizer) -> int:
    """Restore model, EMA and optimizer in place; return the step to continue from."""
    path = Path(folder) / STATE_FILE
    tensors, meta = read_train_state(path)
    for prefix, module in (("model.", model), ("ema.", ema)):
        sub = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if set(sub) != set(module.state_dict()):
            raise ValueError(f"training state {path} does not match the model config (different {prefix[:-1]} keys)")
        module.load_state_dict(sub)
    state: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, idx, name = k.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    for idx, sc in json.loads(meta["opt_scalars"]).items():
        state.setdefault(int(idx), {}).update(sc)
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
    match_moment_layouts(optimizer)
    return int(meta["step"])


def match_moment_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Moments loaded dense go back to their parameter's memory layout: safetensors stores
    tensors contiguous, the DiT's convolutions are channels-last, and the fused CUDA AdamW
    refuses moments whose layout differs from their parameter's."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            st = optimizer.state.get(p, {})
            for name, v in st.items():
                if torch.is_tensor(v) and v.shape == p.shape and v.stride() != p.stride():
                    st[name] = torch.empty_like(p, dtype=v.dtype).copy_(v)
