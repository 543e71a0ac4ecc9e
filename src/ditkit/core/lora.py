"""LoRA adapters for the DiT, through peft: apply, save, read, load, scale, merge.

LoRA (Hu et al., ICLR 2022) keeps a linear layer's weight W frozen and learns a low-rank
update: y = W x + scale * (alpha / r) * B A x, with A (r, in) and B (out, r). B starts at
zero, so a fresh adapter leaves the base model exactly as it was; an adapter file holds only
A and B (a few MB beside the model's 40 MB of fp32 weights). peft (Hugging Face) supplies the layers, their state
dicts, the merge and the file format; this module adds what ditkit needs around it:

- the default targets: every Linear inside a DiT block (self-attention qkv / proj,
  cross-attention q / kv / proj, MLP fc1 / fc2), as the LoRA recipes of diffusers' PixArt
  and SD3 trainers adapt the attention and feed-forward projections;
- the base it was trained on, written beside the adapter (ditkit_base.json: the base's name,
  model config and a sha256 of its weights), so an adapter is never applied to another base;
- adapter weights read only from safetensors, with errors naming the file that is missing or bad;
- embedded adapters: folders under ditkit/weights that hold adapter_config.json
  (shapes-64-lora-pink), resolved by name like embedded models;
- AdapterStack: a base model and its adapters as a value, from which the pipeline builds the
  model it runs (Pipeline.load_lora, merge_lora, unmerge_lora, unload_lora; docs/lora.md).

An adapter folder, as peft's PeftModel.save_pretrained(safe_serialization=True) writes it, plus one file:

    adapter_config.json        peft's LoraConfig (r, lora_alpha, target_modules, ...)
    adapter_model.safetensors  A and B of every adapted layer (base_model.model.<layer>.lora_{A,B}.weight)
    ditkit_base.json           {"base_model", "base_config", "base_sha256"}

peft is imported inside the functions that use it: it pulls in transformers (~5 s), and only
a LoRA run or a pipeline with an adapter needs it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ditkit.core.checkpoint import WEIGHTS_DIR, load_model, resolve_model
from ditkit.core.config import Config, DiTConfig
from ditkit.core.files import atomic_write, atomic_write_json, remove_orphan_temps
from ditkit.core.limits import check_number
from ditkit.core.model import DiT, DiTBlock

if TYPE_CHECKING:
    from peft import LoraConfig, PeftModel

ADAPTER_CONFIG = "adapter_config.json"        # peft.utils.CONFIG_NAME
ADAPTER_WEIGHTS = "adapter_model.safetensors"  # peft.utils.SAFETENSORS_WEIGHTS_NAME
BASE_FILE = "ditkit_base.json"
PICKLED_WEIGHTS = "adapter_model.bin"          # peft's pickle format: refused, never unpickled
# The Linear layers of a DiT block (core.model.DiTBlock), by their name inside the block.
LORA_TARGETS: tuple[str, ...] = ("attn.qkv", "attn.proj", "cross_attn.q", "cross_attn.kv", "cross_attn.proj",
                                 "mlp.fc1", "mlp.fc2")
TRAINED_ADAPTER = "default"  # peft's name for the one adapter of a training run


def _peft():
    # why here: peft imports transformers (~5 s); only LoRA runs and pipelines with an adapter need it
    try:
        import peft
    except ImportError:
        raise ValueError("LoRA needs the peft package: pip install peft (or ditkit[lora])") from None
    return peft


# ----------------------------------------------------------------------------
# the base an adapter belongs to
# ----------------------------------------------------------------------------

@dataclass(frozen=True)
class BaseInfo:
    """The base model of an adapter: its name (an embedded name or a folder), its model config
    (DiTConfig.to_dict()) and the sha256 of its weights (base_fingerprint)."""
    name: str
    config: dict
    sha256: str

    def to_json(self) -> dict:
        return {"base_model": self.name, "base_config": self.config, "base_sha256": self.sha256}


def _plain(model: nn.Module) -> nn.Module:
    """The DiT inside a PeftModel (peft injects its layers into it in place), or the model itself."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def base_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The base model's weights by their plain names, of a model with or without LoRA layers
    (peft renames an adapted layer's weight to <layer>.base_layer.weight and adds lora_ tensors)."""
    return {k.replace(".base_layer.", "."): v for k, v in _plain(model).state_dict().items() if ".lora_" not in k}


def base_fingerprint(model: nn.Module) -> str:
    """sha256 over the base weights (name, dtype, shape and bytes of each, in name order): equal for
    the same weights however they were loaded, different for any other base (a fine-tune, a
    distilled model) even when the architecture is the same."""
    h = hashlib.sha256()
    for name, tensor in sorted(base_state(model).items()):
        t = tensor.detach().to("cpu").contiguous()
        if t.is_floating_point():
            # + 0.0 turns -0.0 into +0.0 and keeps every other value: equal values hash equal. (The
            # training loop's EMA lerp of a frozen weight towards itself can flip the zero's sign.)
            t = t + 0.0
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def base_info(model: nn.Module, name: str) -> BaseInfo:
    return BaseInfo(name=str(name), config=_plain(model).config.to_dict(), sha256=base_fingerprint(model))


# ----------------------------------------------------------------------------
# applying and saving (training)
# ----------------------------------------------------------------------------

def target_modules(model: nn.Module, targets: Sequence[str] = ()) -> list[str]:
    """Full module names of the targets (LORA_TARGETS by default) in every DiT block of the model
    (a pruned model's linear stand-in blocks have none)."""
    targets = tuple(targets) or LORA_TARGETS
    unknown = [t for t in targets if t not in LORA_TARGETS]
    if unknown:
        raise ValueError(f"unknown LoRA targets {unknown}; allowed: {', '.join(LORA_TARGETS)} "
                         "(the Linear layers of a DiT block)")
    names = [f"blocks.{i}.{t}" for i, blk in enumerate(_plain(model).blocks) if isinstance(blk, DiTBlock)
             for t in targets]
    if not names:
        raise ValueError("the model has no DiT blocks for LoRA to adapt (only linear stand-ins)")
    return names


def apply_lora(model: nn.Module, rank: int = 8, alpha: float = 8.0, targets: Sequence[str] = (),
               dropout: float = 0.0, base_name: str | None = None) -> "PeftModel":
    """Wrap a DiT for LoRA training: fresh adapters (B = 0, so the output is unchanged) on the
    target layers, and every base weight frozen (requires_grad False), so an optimizer over the
    trainable parameters trains only A and B. The DiT itself gains the LoRA layers in place;
    the returned PeftModel runs it (same forward signature) and saves the adapter."""
    peft = _peft()
    config = peft.LoraConfig(r=int(rank), lora_alpha=float(alpha), lora_dropout=float(dropout),
                             target_modules=target_modules(model, targets))
    _name_base(model, base_name)
    return peft.get_peft_model(model, config, adapter_name=TRAINED_ADAPTER)


def _name_base(model: nn.Module, name: str | None) -> None:
    """peft records a model's `name_or_path` attribute (as transformers models carry it) as the
    adapter config's base_model_name_or_path; give the DiT one."""
    if name:
        model.name_or_path = str(name)


def save_adapter(model: "PeftModel", folder: str | Path, base: BaseInfo) -> Path:
    """Write the trained adapter into `folder` (created if needed) in peft's format, plus
    ditkit_base.json. peft's save_pretrained writes into a temporary folder; each file then
    replaces its old version atomically, the weights last (a checkpoint rewrites the folder:
    a kill leaves the old adapter or the new one, never a partial file)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    remove_orphan_temps(folder)  # a writer killed mid-file left its temporary; none runs now
    with tempfile.TemporaryDirectory(prefix="ditkit-lora-") as tmp:
        # save_embedding_layers=False: peft would otherwise look the base name up as a Hub model (a DiT has no
        # token embeddings to save)
        model.save_pretrained(tmp, safe_serialization=True, selected_adapters=[TRAINED_ADAPTER],
                              save_embedding_layers=False)
        atomic_write_json(folder / BASE_FILE, base.to_json(), durable=True)
        for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
            src = Path(tmp) / name
            atomic_write(folder / name, lambda dst, src=src: shutil.copyfile(src, dst), durable=True, suffix=".tmp")
    return folder


def training_model(cfg: Config, device: torch.device | str) -> "PeftModel":
    """The model of a train.lora run: the base train.init_from (a folder or an embedded name),
    frozen, with fresh adapters of cfg.train.lora. The base's model config must be cfg.model."""
    if cfg.train.parallel == "fsdp":
        raise ValueError("train.lora runs in one process or with train.parallel ddp, not fsdp (the adapters are "
                         "a few MB: there is nothing to shard)")
    folder = resolve_model(cfg.train.init_from)
    model, _ = load_model(folder, device)
    mine, theirs = cfg.model.to_dict(), model.config.to_dict()
    diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    if diff:
        raise ValueError(f"train.init_from {cfg.train.init_from}: its model config differs from this config in {diff}; "
                         "a LoRA run keeps the base's architecture (copy its model section)")
    s = cfg.train.lora
    return apply_lora(model.train(), s.rank, s.alpha, s.targets, s.dropout, base_name=cfg.train.init_from)


def save_training_adapter(model: "PeftModel", folder: str | Path, cfg: Config) -> Path:
    """A train.lora checkpoint: the (EMA) model's adapter with the base it was trained on."""
    return save_adapter(model, folder, base_info(model, cfg.train.init_from))


# ----------------------------------------------------------------------------
# reading and loading (inference)
# ----------------------------------------------------------------------------

@dataclass
class Adapter:
    """An adapter folder read and checked: peft's config, the A / B tensors, the base."""
    folder: Path
    config: "LoraConfig"
    tensors: dict[str, torch.Tensor]
    base: BaseInfo


def embedded_adapters() -> list[str]:
    """Names of the adapters shipped in the package (folders under ditkit/weights with adapter_config.json)."""
    if not WEIGHTS_DIR.is_dir():
        return []
    return sorted(p.name for p in WEIGHTS_DIR.iterdir() if (p / ADAPTER_CONFIG).is_file())


def resolve_adapter(name_or_path: str | Path) -> Path:
    """An embedded adapter name or a folder path -> the adapter folder."""
    name = str(name_or_path)
    if name in embedded_adapters():
        return WEIGHTS_DIR / name
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    raise ValueError(f"unknown LoRA {name!r}: not an embedded adapter ({', '.join(embedded_adapters()) or 'none'}) "
                     "and not a folder")


def check_scale(scale) -> float:
    """A LoRA scale: a finite number (0 = the base model, 1 = as trained, negative = the opposite)."""
    return check_number("LoRA scale", scale)


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise ValueError(f"LoRA folder {path.parent}: {what} {path.name} is missing")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"LoRA file {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"LoRA file {path} must hold a JSON object")
    return data


def read_adapter(name_or_path: str | Path) -> Adapter:
    """Read an adapter folder (or an embedded adapter by name), checking every file: the config is
    peft's LoRA config, the weights are a valid safetensors file of finite values (never a
    pickle), and ditkit_base.json names the base."""
    folder = resolve_adapter(name_or_path)
    raw = _read_json(folder / ADAPTER_CONFIG, "the adapter config")
    if raw.get("peft_type") != "LORA":
        raise ValueError(f"LoRA file {folder / ADAPTER_CONFIG} describes a {raw.get('peft_type')!r} adapter; "
                         "ditkit loads LoRA adapters (peft_type LORA)")
    peft = _peft()
    try:
        config = peft.LoraConfig.from_pretrained(str(folder))
    except (TypeError, ValueError, OSError) as e:
        raise ValueError(f"LoRA file {folder / ADAPTER_CONFIG} is not a valid LoRA config: {e}") from None
    weights = folder / ADAPTER_WEIGHTS
    if not weights.is_file():
        pickled = " (it holds adapter_model.bin, a pickle, which ditkit never loads: save it with " \
                  "safe_serialization=True)" if (folder / PICKLED_WEIGHTS).exists() else ""
        raise ValueError(f"LoRA folder {folder}: the adapter weights {ADAPTER_WEIGHTS} are missing{pickled}")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"LoRA file {weights} is corrupt or not a safetensors file: {e}") from None
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(f"LoRA file {weights} holds NaN or inf (in {bad[0]})")
    info = _read_json(folder / BASE_FILE, "the record of its base model")
    try:
        base = BaseInfo(name=str(info["base_model"]), config=DiTConfig.from_dict(info["base_config"]).to_dict(),
                        sha256=str(info["base_sha256"]))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"LoRA file {folder / BASE_FILE} is invalid ({type(e).__name__}: {e}); it needs "
                         "base_model, base_config and base_sha256") from None
    # Loading never initialises from the base (PiSSA / LoftQ-style inits would change base weights):
    # every A and B comes from the file.
    config.init_lora_weights = False
    config.inference_mode = True
    return Adapter(folder, config, tensors, base)


def check_base(adapter: Adapter, model: nn.Module, name: str, fingerprint: str | None = None) -> None:
    """Refuse an adapter trained on another base than `model` (called `name` in the message):
    another architecture, or the same architecture with other weights. `fingerprint`: the
    model's base_fingerprint when the caller already has it."""
    mine = _plain(model).config.to_dict()
    diff = sorted(k for k in set(mine) | set(adapter.base.config) if mine.get(k) != adapter.base.config.get(k))
    if diff:
        raise ValueError(f"LoRA folder {adapter.folder} is for another base: it was trained on "
                         f"{adapter.base.name!r}, whose model config differs from {name!r}'s in {diff}")
    fingerprint = fingerprint or base_fingerprint(model)
    if fingerprint != adapter.base.sha256:
        raise ValueError(f"LoRA folder {adapter.folder} is for another base: it was trained on "
                         f"{adapter.base.name!r} (weights sha256 {adapter.base.sha256[:12]}), and {name!r} has "
                         f"other weights (sha256 {fingerprint[:12]})")


def adapter_names(count: int) -> list[str]:
    return [f"lora{i}" for i in range(count)]


def load_adapters(model: nn.Module, adapters: Sequence[tuple[Adapter, float]]) -> "PeftModel":
    """Inject the adapters into `model` (in place) with their scales, all active at once (their
    updates add up), for inference: nothing trains. Check each with check_base first."""
    if not adapters:
        raise ValueError("load_adapters needs at least one adapter")
    peft = _peft()
    names = adapter_names(len(adapters))
    _name_base(model, adapters[0][0].base.name)
    wrapped = None
    for name, (adapter, scale) in zip(names, adapters):
        config = copy.deepcopy(adapter.config)
        try:
            if wrapped is None:
                wrapped = peft.get_peft_model(model, config, adapter_name=name)
            else:
                wrapped.add_adapter(name, config)
        except (ValueError, KeyError) as e:
            raise ValueError(f"LoRA folder {adapter.folder} does not fit the model: {e}") from None
        _load_weights(wrapped, adapter, name)
        set_scale(wrapped, scale, name)
    wrapped.base_model.set_adapter(names)
    wrapped.requires_grad_(False)
    return wrapped.eval()


def _load_weights(model: "PeftModel", adapter: Adapter, name: str) -> None:
    peft = _peft()
    where = adapter.folder / ADAPTER_WEIGHTS
    try:
        result = peft.set_peft_model_state_dict(model, adapter.tensors, adapter_name=name)
    except RuntimeError as e:  # load_state_dict's size mismatches
        raise ValueError(f"LoRA file {where} does not fit the model: {str(e).splitlines()[-1].strip()}") from None
    missing = [k for k in result.missing_keys if f".{name}." in k]
    if missing or result.unexpected_keys:
        raise ValueError(f"LoRA file {where} does not match its config: {len(missing)} missing tensors "
                         f"(e.g. {missing[:2]}), {len(result.unexpected_keys)} unexpected "
                         f"(e.g. {list(result.unexpected_keys)[:2]})")


def set_scale(model: "PeftModel", scale: float, adapter: str) -> None:
    """Scale one adapter's update: scale * (alpha / r) * B A (0 = off, 1 = as trained)."""
    scale = check_scale(scale)
    peft = _peft()
    for module in model.modules():
        if isinstance(module, peft.tuners.lora.LoraLayer):
            module.set_scale(adapter, scale)


def merge(model: "PeftModel") -> nn.Module:
    """Fold the active adapters into the base weights (W + scale * alpha / r * B A) and remove the
    LoRA layers: the plain DiT, as fast as the base. peft's safe merge refuses a non-finite result."""
    return model.merge_and_unload(safe_merge=True)


def unload(model: "PeftModel") -> nn.Module:
    """Remove the LoRA layers without merging: the plain DiT with the base weights as they were."""
    return model.unload()


def load_adapter(model: nn.Module, name_or_path: str | Path, scale: float = 1.0,
                 model_name: str = "the model") -> "PeftModel":
    """Read one adapter, check it belongs to `model`'s base, and inject it (in place)."""
    adapter = read_adapter(name_or_path)
    check_base(adapter, model, model_name)
    return load_adapters(model, [(adapter, check_scale(scale))])


# ----------------------------------------------------------------------------
# a base model with its adapters (the pipeline's state)
# ----------------------------------------------------------------------------

def fresh_copy(model: nn.Module) -> nn.Module:
    """A new DiT with the model's config, weights, dtype and device (in eval mode); the model is
    not touched. Built, not deep-copied: a compiled model's forward would be copied along."""
    with torch.random.fork_rng(devices=[]):  # building a DiT must not move the global RNG
        copy_ = DiT(model.config)
    copy_.load_state_dict(model.state_dict())
    return copy_.to(next(model.parameters())).eval()


@dataclass(frozen=True)
class AdapterStack:
    """A base model and the adapters on it, each with a scale, merged into the weights or not: a
    value; each change returns a new stack. The base is never modified: build() makes a new model
    (a copy of the base with the adapters injected, or folded in when merged), so a model already
    handed out (to a generation running in another thread) never changes under it, a failed
    change leaves the old stack in use, and without adapters the base itself runs, bit for bit."""
    base: nn.Module
    name: str
    fingerprint: str
    entries: tuple[tuple[Adapter, float], ...] = ()
    merged: bool = False

    @classmethod
    def on(cls, base: nn.Module, name: str) -> "AdapterStack":
        """An empty stack on a base model (hashes its weights: ~0.1 s for 40 MB, once per base)."""
        return cls(base, str(name), base_fingerprint(base))

    def with_adapter(self, name_or_path: str | Path, scale: float = 1.0) -> "AdapterStack":
        """Read an adapter and check that it belongs to this base; the stack with it added."""
        scale = check_scale(scale)
        if self.merged:
            raise ValueError("a LoRA is merged into the weights: call unmerge_lora() before loading another")
        adapter = read_adapter(name_or_path)
        check_base(adapter, self.base, self.name, self.fingerprint)
        return replace(self, entries=(*self.entries, (adapter, scale)))

    def with_scale(self, scale: float, index: int | None = None) -> "AdapterStack":
        """The stack with adapter `index` (in loading order; every adapter when None) at `scale`."""
        scale = check_scale(scale)
        if not self.entries:
            raise ValueError("no LoRA is loaded: load_lora(folder) first")
        if self.merged:
            raise ValueError("a LoRA is merged into the weights: call unmerge_lora() before changing its scale")
        n = len(self.entries)
        if index is not None and (isinstance(index, bool) or not isinstance(index, int) or not -n <= index < n):
            raise ValueError(f"LoRA index must be an integer in {-n}..{n - 1} (the loaded LoRAs), got {index!r}")
        chosen = range(n) if index is None else [index % n]
        return replace(self, entries=tuple((a, scale if i in chosen else s) for i, (a, s) in enumerate(self.entries)))

    def with_merged(self, merged: bool) -> "AdapterStack":
        if merged and not self.entries:
            raise ValueError("no LoRA is loaded: load_lora(folder) first")
        return replace(self, merged=merged)

    def without_adapters(self) -> "AdapterStack":
        return replace(self, entries=(), merged=False)

    def build(self) -> nn.Module:
        """The model to run: the base itself without adapters; else a copy with them (merged: folded
        into plain Linear weights, as fast as the base)."""
        if not self.entries:
            return self.base
        wrapped = load_adapters(fresh_copy(self.base), list(self.entries))
        return merge(wrapped) if self.merged else _plain(wrapped)

    def describe(self) -> list[tuple[str, float]]:
        """(folder, scale) of each loaded adapter, in loading order."""
        return [(str(adapter.folder), scale) for adapter, scale in self.entries]
