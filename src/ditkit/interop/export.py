"""Exporting a DiT's velocity call to a graph for a fast inference engine (issue 31).

    export_model(model, config, "out/shapes-64-onnx", to="onnx")       # velocity.onnx + config.json
    export_model(model, config, "out/shapes-64-ov", to="openvino")     # velocity.xml / .bin + config.json

Only the model's one contract is exported: `(x, t, context, context_mask[, cond]) -> v`
(core/model.py). Samplers, guidance, tasks and best-of-N stay ditkit's Python and call the
graph through interop.runtime.ExportedModel, so an exported model samples with every
sampler and guidance rule the torch model does.

The folder describes itself as a model folder does: config.json is the source model's
config (model, sample, text_encoder, ...) plus an "export" section naming the format, the
graph file, its sha256, its inputs, whether the image size is dynamic, and the check made at
export time (the graph against torch on a probe input).

Batch and text length are dynamic axes. The image size is dynamic for RoPE-only models
(positions="rope": the rotation angles are computed in the graph from the token grid);
the sin-cos table of positions="sincos" and "rope+abs" is a fixed function of the size that
the model caches outside the graph, so those export at one size (`size`, default the
model's sample size) and the runtime refuses others.

Why the TorchScript exporter (dynamo=False): on this project's 2-core CPU it exports
shapes-64 in about 3 s, the dynamo exporter in about 50 s (both give the torch output to
1e-4). Export runs whenever a torch model folder is loaded with --engine onnxruntime or
openvino, so its time is paid by users. Why ONNX first even for OpenVINO: one traced graph
for both engines; OpenVINO's ONNX front end reads it and saves its IR.
"""

from __future__ import annotations

import hashlib
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from ditkit.core.checkpoint import CONFIG_FILE
from ditkit.core.files import atomic_folder, atomic_write_json, check_new_folder
from ditkit.core.model import DiT
from ditkit.interop.engines import GRAPH_FILES, engine_package, open_graph

EXPORT_FORMATS = ("onnx", "openvino")
# Opset 20 has Gelu with approximate="tanh" as one op, which ONNX Runtime runs as its fused FastGelu
# kernel; at opset 18 the exporter spells it as 8 elementwise ops per MLP. shapes-64 at batch 32:
# 283 ms per call against 365 ms with opset 18 (ONNX Runtime's profile, 2 threads).
OPSET = 20
EXPORT_TOLERANCE = 1e-3  # max |graph - torch| on the probe input; a larger gap means a broken export


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def dynamic_size(model: DiT) -> bool:
    """Whether the graph can take any image size: only when every position signal is computed
    in the graph (RoPE alone; see the module docstring)."""
    return model.config.positions == "rope"


def check_exportable(model: nn.Module) -> DiT:
    """The model if it is a plain image DiT; a ValueError saying what cannot be exported otherwise."""
    if getattr(getattr(model, "config", None), "frames", 0):
        raise ValueError("export takes image models; a video model (frames > 0) is not exported yet: "
                         "use --engine torch for video")
    if not isinstance(model, DiT):
        kind = type(model).__name__
        raise ValueError(f"export takes a ditkit DiT, got {kind} (a model with LoRA adapters or a control "
                         "model attached: merge or detach it first, or use --engine torch)")
    return model


class _VelocityCall(nn.Module):
    """The DiT's forward with positional inputs only, as the exporter traces it."""

    def __init__(self, model: DiT):
        super().__init__()
        self.model = model

    def forward(self, x, t, context, context_mask, cond=None):
        return self.model(x, t, context, context_mask, cond=cond)


def probe_inputs(model: DiT, batch: int, size: int, tokens: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random inputs of the velocity call: x (B, C, size, size), t (B,), context (B, L, text_dim),
    context_mask (B, L) bool with padding in the last row, and cond where the model takes one."""
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    mask = torch.ones(batch, tokens, dtype=torch.bool)
    mask[-1, tokens // 2:] = False  # padded tokens, so the mask path is traced and checked
    inputs = {"x": torch.randn(batch, cfg.in_channels, size, size, generator=g),
              "t": torch.rand(batch, generator=g),
              "context": torch.randn(batch, tokens, cfg.text_dim, generator=g),
              "context_mask": mask}
    if cfg.cond_channels:
        inputs["cond"] = torch.randn(batch, cfg.cond_channels, size, size, generator=g)
    return inputs


def trace_to_onnx(model: DiT, path: Path, size: int) -> list[str]:
    """Write the velocity call as an ONNX graph at `path`; returns its input names."""
    engine_package("onnx")  # the exporter writes protobuf through the onnx package
    model = model.float().eval()
    inputs = probe_inputs(model, batch=2, size=size, tokens=8)
    names = list(inputs)
    axes = {"x": {0: "batch"}, "t": {0: "batch"}, "context": {0: "batch", 1: "tokens"},
            "context_mask": {0: "batch", 1: "tokens"}, "v": {0: "batch"}, "cond": {0: "batch"}}
    if dynamic_size(model):
        for name in ("x", "v", "cond"):
            axes[name].update({2: "height", 3: "width"})
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter warns that it is deprecated and that Python ifs on shapes are
        # traced as constants; the shape checks it means run in ditkit before the graph is called.
        warnings.simplefilter("ignore")
        torch.onnx.export(_VelocityCall(model), tuple(inputs.values()), str(path), input_names=names,
                          output_names=["v"], dynamic_axes={k: v for k, v in axes.items() if k in names + ["v"]},
                          opset_version=OPSET, dynamo=False)
    return names


def export_model(model: nn.Module, config: dict, out: str | Path, to: str = "onnx", size: int | None = None) -> Path:
    """Export a model's velocity call into a new folder `out` (which must not exist): the graph,
    and config.json (the source `config` plus an "export" section). The graph is run once
    against torch on a probe input and refused if they differ by more than EXPORT_TOLERANCE.
    size: the image side of a fixed-size export (default: the model's sample size)."""
    model = check_exportable(model)
    if to not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {to!r}; allowed: {', '.join(EXPORT_FORMATS)}")
    out = check_new_folder(out)
    p = model.config.patch_size
    size = int(size if size is not None else (config.get("sample") or {}).get("size") or model.config.sample_size)
    if size % p or size < p:
        raise ValueError(f"export size {size} must be a positive multiple of the patch size {p}")
    device = next(model.parameters()).device
    model = model.cpu()
    try:
        with atomic_folder(out) as tmp:
            tmp.mkdir()
            with tempfile.TemporaryDirectory() as work:
                onnx_path = Path(work) / GRAPH_FILES["onnx"]
                names = trace_to_onnx(model, onnx_path, size)
                if to == "onnx":
                    onnx_path.replace(tmp / GRAPH_FILES["onnx"])
                else:
                    ov = engine_package("openvino")
                    # Core.read_model (OpenVINO's ONNX front end), not ov.convert_model: the converter sends usage
                    # telemetry, the runtime does not. compress_to_fp16=False: the IR keeps fp32 weights; the
                    # precision is chosen when the graph is compiled (interop.runtime), not baked in here.
                    ov.save_model(ov.Core().read_model(str(onnx_path)), str(tmp / GRAPH_FILES["openvino"]),
                                  compress_to_fp16=False)
            graph = tmp / GRAPH_FILES[to]
            info = {"format": to, "graph": graph.name, "sha256": sha256_of(graph), "inputs": names,
                    "dynamic_size": dynamic_size(model), "size": size, "opset": OPSET,
                    "torch": torch.__version__}
            info["check"] = {"max_abs_diff": check_graph(model, open_graph(graph, to), size),
                             "inputs": "batch 2, 8 text tokens, seed 0"}
            atomic_write_json(tmp / CONFIG_FILE, {**config, "export": info})
    finally:
        model.to(device)
    return out


def check_graph(model: DiT, run, size: int) -> float:
    """Max |graph(x) - model(x)| on a probe input; a ValueError above EXPORT_TOLERANCE."""
    inputs = probe_inputs(model, batch=2, size=size, tokens=8, seed=1)
    with torch.no_grad():
        want = model(**inputs)
    got = run({k: v.numpy() for k, v in inputs.items()})
    diff = float((torch.from_numpy(got) - want).abs().max())
    if not diff <= EXPORT_TOLERANCE:
        raise ValueError(f"the exported graph differs from the torch model by {diff:.3g} (more than "
                         f"{EXPORT_TOLERANCE}): the export is broken, please report it")
    return diff
