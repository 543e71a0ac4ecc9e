"""The inference engines ditkit runs exported graphs with (issue 31): which exist, which precisions
each offers, and opening a graph file in one of them. interop.export (which checks a fresh
export by running it) and interop.runtime (the model stand-in) both build on this.

Precision per engine (ENGINE_PRECISIONS), chosen when a graph is compiled:
- onnxruntime: fp32; int8 = ONNX Runtime's dynamic quantization of the transformer blocks'
  MatMul/Gemm weights (activations quantized per call, as torch's int8 path does; see _ort_int8). ONNX Runtime's CPU provider has
  no bf16 kernels for these ops, so bf16 is refused with a pointer to openvino.
- openvino: fp32 (INFERENCE_PRECISION_HINT f32: OpenVINO would otherwise pick bf16 by itself on
  a CPU that has it); bf16 where the CPU has native bf16, detected as OpenVINO detects it (its
  CPU device lists BF16 in OPTIMIZATION_CAPABILITIES: AVX-512 BF16 or AMX); int8 = NNCF's
  weight compression (INT8_ASYM: int8 weights, fp32 activations).

Both run on the CPU here (their CPU plugins); the torch engine serves GPUs. Each uses
torch.get_num_threads() threads, so the one thread setting a user already has
(OMP_NUM_THREADS, torch.set_num_threads) governs every engine alike.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import io
import logging
import os
import sys
import tempfile
import threading
from pathlib import Path
from typing import Callable

import numpy as np
import torch

GRAPH_FILES = {"onnx": "velocity.onnx", "openvino": "velocity.xml"}  # OpenVINO's IR also has velocity.bin


def engine_package(name: str):
    """Import an engine's package, or a ValueError that says which extra installs it."""
    extra = {"onnx": "onnx", "onnxruntime": "onnx", "openvino": "openvino", "nncf": "openvino"}[name]
    try:
        if name == "nncf" and name not in sys.modules:
            # NNCF sends usage telemetry by default and decides once, when it is imported, from the NNCF_CI
            # variable (nncf/telemetry/wrapper.py). ditkit sends nothing anywhere, so it is set for the import.
            saved = os.environ.get("NNCF_CI")
            os.environ["NNCF_CI"] = "1"
            try:
                return importlib.import_module(name)
            finally:
                if saved is None:
                    del os.environ["NNCF_CI"]
                else:
                    os.environ["NNCF_CI"] = saved
        return importlib.import_module(name)
    except ImportError:
        raise ValueError(f"{name} is not installed: pip install 'ditkit[{extra}]'") from None


ENGINES = ("torch", "onnxruntime", "openvino")
ENGINE_PRECISIONS = {"onnxruntime": ("fp32", "int8"), "openvino": ("fp32", "bf16", "int8")}
NATURAL_ENGINE = {"onnx": "onnxruntime", "openvino": "openvino"}  # the engine an exported folder loads with
READS = {"onnxruntime": ("onnx",), "openvino": ("onnx", "openvino")}  # formats each engine can read

GraphRun = Callable[[dict[str, np.ndarray]], np.ndarray]  # named numpy inputs -> v


def check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; allowed: {', '.join(ENGINES)}")
    return engine


@functools.lru_cache(maxsize=1)
def openvino_has_bf16() -> bool:
    """Whether OpenVINO's CPU device has native bf16 (AVX-512 BF16 or AMX), as OpenVINO itself reports it."""
    ov = engine_package("openvino")
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def check_engine_precision(engine: str, precision: str) -> None:
    allowed = ENGINE_PRECISIONS[engine]
    if precision in allowed:
        if engine == "openvino" and precision == "bf16" and not openvino_has_bf16():
            raise ValueError("bf16 with the openvino engine needs a CPU with native bf16 (AVX-512 BF16 or AMX; "
                             "OpenVINO lists no BF16 capability here): use fp32 or int8")
        return
    why = " (ONNX Runtime's CPU provider has no bf16 kernels: use --engine openvino)" \
        if (engine, precision) == ("onnxruntime", "bf16") else ""
    raise ValueError(f"precision {precision!r} is not available with the {engine} engine{why}; "
                     f"allowed: {', '.join(allowed)}")


# ----------------------------------------------------------------------------
# opening a graph
# ----------------------------------------------------------------------------

def _threads() -> int:
    return max(1, torch.get_num_threads())


# Node names of the transformer blocks in an exported graph: the TorchScript exporter names each node by
# its module path, and export._VelocityCall holds the DiT as `model`.
BLOCK_SCOPE = "/model/blocks."


def _ort_int8(path: Path) -> bytes:
    """The graph with dynamically quantized weights in the transformer blocks' MatMul/Gemm
    (their Linear layers; convolutions, norms and attention stay fp32).

    The layers outside the blocks (timestep and text embeddings, adaLN-single, the output
    head) stay fp32: they are a small share of the FLOPs, and with dynamic (per-call) activation
    quantization they carried half of the error. On shapes-64 with real prompts, the mean
    relative velocity error fell from 1.8-3.5% to 0.7-2.6% (research/engine_int8.py)."""
    onnx = engine_package("onnx")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(path), load_external_data=False).graph
    outside = [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm") and not n.name.startswith(BLOCK_SCOPE)]

    with tempfile.TemporaryDirectory() as work:
        out = Path(work) / "int8.onnx"
        # The quantizer logs a hint to run its pre-processing on the root logger on every call; the
        # graph is already optimized at load (ORT_ENABLE_ALL), so it is kept off the console.
        logging.disable(logging.WARNING)
        try:
            quantize_dynamic(str(path), str(out), weight_type=QuantType.QInt8,
                             op_types_to_quantize=["MatMul", "Gemm"], nodes_to_exclude=outside)
        finally:
            logging.disable(logging.NOTSET)
        return out.read_bytes()


def _open_onnxruntime(path: Path, precision: str) -> GraphRun:
    ort = engine_package("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = _threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: ONNX Runtime warns about every unused initializer
    graph = _ort_int8(path) if precision == "int8" else str(path)
    session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
    return lambda feeds: session.run(["v"], feeds)[0]  # InferenceSession.run is thread-safe


def _open_openvino(path: Path, precision: str) -> GraphRun:
    ov = engine_package("openvino")
    core = ov.Core()
    model = core.read_model(str(path))
    if precision == "int8":
        nncf = engine_package("nncf")
        nncf.set_log_level(logging.ERROR)  # else NNCF logs a table of bit widths on every compression
        # and draws a rich progress bar on the console (stdout, where the CLI prints its JSON): swallowed
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                                                 "INFERENCE_NUM_THREADS": _threads(),
                                                 "PERFORMANCE_HINT": "LATENCY"})
    local = threading.local()  # an infer request is not thread-safe: one per calling thread

    def run(feeds: dict[str, np.ndarray], _core=core) -> np.ndarray:  # _core: freed after the compiled model
        request = getattr(local, "request", None)
        if request is None:
            request = local.request = compiled.create_infer_request()
        # copy: the result is a view of the request's output tensor, which the next call overwrites
        return np.array(request.infer(feeds)[0], copy=True)

    return run


def open_graph(path: Path, fmt: str, engine: str | None = None, precision: str = "fp32") -> GraphRun:
    """A graph file compiled by an engine (default: the format's natural engine) at a precision.
    A missing, unreadable or corrupt file is a ValueError naming it."""
    engine = engine or NATURAL_ENGINE[fmt]
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"exported graph {path} is missing: export the model again (ditkit export)")
    if fmt == "openvino" and not path.with_suffix(".bin").is_file():
        raise ValueError(f"exported graph weights {path.with_suffix('.bin')} are missing: export the model again")
    check_engine_precision(engine, precision)
    try:
        return (_open_onnxruntime if engine == "onnxruntime" else _open_openvino)(path, precision)
    except (ValueError, AttributeError, TypeError, NameError, KeyError):
        raise  # ours, or a bug: not the file's fault
    except Exception as e:  # each engine has its own exception types for a bad graph (not RuntimeError's)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise ValueError(f"exported graph {path} is corrupt or unreadable by {engine}: {first}") from None


