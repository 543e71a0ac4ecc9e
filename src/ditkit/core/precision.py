"""Inference precision: fp32, bf16 autocast, int8 dynamic quantization of Linear layers
(torch.ao; weights int8, activations quantized per batch on the fly) and fp16 (GPU only).

fp16 matmuls run about 350x slower than fp32 on this project's CPUs (no native
fp16 kernels), so fp16 is refused on CPU rather than silently crawling.
"""

from __future__ import annotations

import copy
import re
import threading
import warnings
import weakref
from contextlib import nullcontext

import torch
from torch import nn

INFERENCE_PRECISIONS = ("fp32", "bf16", "int8", "fp16")
_int8_cache: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple, nn.Module]]" = weakref.WeakKeyDictionary()
_int8_lock = threading.Lock()  # a server's threads share one pipeline: quantize its model once, not once per thread


DEVICE_FORMS = "cpu, cuda, cuda:N (N a GPU index) or mps"
_DEVICE_NAME = re.compile(r"cpu|cuda(:\d+)?|mps")


def check_device_name(device: str | torch.device, what: str = "device") -> str:
    """The device's name if it has an allowed form (cpu, cuda, cuda:N, mps); ValueError otherwise.
    Availability is resolve_device's check (a config may name a GPU of another machine)."""
    name = str(device) if isinstance(device, (str, torch.device)) else None
    if name is None or not _DEVICE_NAME.fullmatch(name):
        raise ValueError(f"unknown {what} {device!r}; allowed: {DEVICE_FORMS}")
    return name


def resolve_device(device: str | torch.device, what: str = "device") -> torch.device:
    """The torch.device to run on: an allowed form (check_device_name) that this machine has.
    The one place devices are checked, so `--device tpu` or a missing GPU is a clear error
    rather than a torch traceback."""
    dev = torch.device(check_device_name(device, what))
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"{what} {str(device)!r}: CUDA is not available here (torch.cuda.is_available() "
                             "is False); use cpu")
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"{what} {str(device)!r}: this machine has {count} CUDA device(s), "
                             f"cuda:0..cuda:{count - 1}")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"{what} 'mps': Apple's MPS backend is not available here; use cpu")
    return dev


def check_precision(precision: str, device: torch.device | str) -> None:
    """A precision that runs on the device (its form checked; whether it is present is resolve_device's)."""
    device = torch.device(check_device_name(device))
    if precision not in INFERENCE_PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; allowed: {', '.join(INFERENCE_PRECISIONS)}")
    if precision == "fp16" and device.type == "cpu":
        raise ValueError("fp16 is about 350x slower than fp32 on CPU (no fp16 kernels); use bf16 or int8 on CPU, "
                         "fp16 on a GPU")
    if precision == "int8" and device.type != "cpu":
        raise ValueError(f"int8 dynamic quantization runs on CPU only; on {device.type} use bf16 or fp16")


def bf16_is_fast(device: torch.device | str) -> bool:
    """Whether bf16 matmuls have native kernels on this device. On a CPU they need AVX-512
    (oneDNN's bf16 path) or AMX; an AVX2-only CPU emulates them about 80x slower than fp32
    (benchmarks/bf16_probe.py on an AVX2 AMD EPYC: 0.84 bf16 GFLOP/s against 70 fp32)."""
    device = torch.device(device)
    if device.type != "cpu":
        return True
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN: no fast bf16 either
        return False


_warned_slow_bf16 = False


def training_precision(precision: str, device: torch.device | str) -> str:
    """The precision a training, distillation or recovery run should use: bf16 autocast
    falls back to fp32 (with one warning) on a CPU without native bf16, where it would be
    tens of times slower. Configs ship bf16 because it is 1.7-2.6x faster where it is native."""
    global _warned_slow_bf16
    if precision == "bf16" and not bf16_is_fast(device):
        if not _warned_slow_bf16:
            warnings.warn("bf16 requested, but this CPU has no native bf16 kernels (no AVX-512/AMX): "
                          "training in fp32 instead, which is much faster here", stacklevel=2)
            _warned_slow_bf16 = True
        return "fp32"
    return precision


def autocast(precision: str, device: torch.device):
    """The autocast context of a precision (int8 and fp32 run without autocast)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "fp16":
        return torch.autocast(device.type, dtype=torch.float16)
    return nullcontext()


def _fingerprint(model: nn.Module) -> tuple:
    # In-place updates bump a tensor's version counter: a quantized copy made before
    # an optimizer step is stale afterwards and is rebuilt.
    return tuple((id(p), p._version) for p in model.parameters())


def int8_model(model: nn.Module) -> nn.Module:
    """A dynamically int8-quantized copy of the model's Linear layers (cached while the
    weights stay unchanged). Convolutions, norms and attention stay fp32."""
    # why here: torch.ao.quantization is slow to import and only int8 runs need it
    from torch.ao.quantization import quantize_dynamic

    with _int8_lock:
        key = _fingerprint(model)
        hit = _int8_cache.get(model)
        if hit is not None and hit[0] == key:
            return hit[1]
        with warnings.catch_warnings():
            # torch marks quantized tensor creation as deprecated in favour of torchao; the
            # torch.ao path is still the one that ships with torch and works here.
            warnings.simplefilter("ignore", UserWarning)
            q = copy.deepcopy(model).eval()
            # A torch.compile'd model (Pipeline.compile) keeps its compiled forward as an instance
            # attribute, bound to the fp32 original: the copy would run fp32. The copy runs eager.
            q.__dict__.pop("forward", None)
            q.__dict__.pop("_ditkit_compiled", None)
            # A model with unmerged LoRA adapters (core.lora) keeps their small A / B layers fp32:
            # peft's layer reads their weight's dtype, which a quantized Linear does not have.
            adapters = [n for n, m in q.named_modules() if isinstance(m, nn.Linear) and ".lora_" in n]
            spec = {n for n, m in q.named_modules() if isinstance(m, nn.Linear) and ".lora_" not in n} \
                if adapters else {nn.Linear}
            q = quantize_dynamic(q, spec, dtype=torch.qint8)
        _int8_cache[model] = (key, q)
        return q


def model_for(model: nn.Module, precision: str) -> nn.Module:
    """The module to run for a precision: the model itself, or its int8 copy."""
    return int8_model(model) if precision == "int8" else model
