"""Which layers should int8 cover in the exported engines? The velocity error of int8 variants
against torch fp32, on shapes-64 with real prompts (issue 31).

    python research/engine_int8.py --threads 1

It exports shapes-64 to ONNX, then compares, for three noise levels t (x = t * noise, 4
prompts), the mean relative error |v_int8 - v_fp32| / |v_fp32| of:
- onnxruntime quantize_dynamic (int8 weights, activations quantized per call) over every
  MatMul/Gemm, with per-channel weights, with reduce_range, and over the blocks only (the
  timestep / text embeddings, adaLN-single and the head kept fp32: interop.engines.BLOCK_SCOPE);
- OpenVINO + NNCF weight compression (INT8_ASYM: int8 weights, fp32 activations) over every layer.

Seen on the 2-core AVX2 machine (2026-12-04), errors at t = 0.9 / 0.5 / 0.2:

    ort every MatMul        0.0184 0.0348 0.0336
    ort per-channel         0.0188 0.0426 0.0858
    ort reduce_range        0.0256 0.0539 0.0472
    ort blocks only         0.0065 0.0242 0.0262   <- ditkit's choice (ShapesEval in docs/benchmarks.md)
    openvino INT8_ASYM      0.0102 0.0129 0.0142   <- ditkit's choice (weights only)

The attention products (MatMul with two activations) are never quantized by
quantize_dynamic: excluding them changed nothing.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import numpy as np
import torch

import ditkit
from ditkit.core.checkpoint import read_model_config, resolve_model
from ditkit.interop.engines import BLOCK_SCOPE, engine_package
from ditkit.interop.export import export_model

PROMPTS = ["a red circle to the left of a blue square", "two green triangles", "three small blue squares",
           "a yellow star above a purple circle"]
TIMES = (0.9, 0.5, 0.2)


def relative_errors(run, model, states, mask, noise) -> list[float]:
    out = []
    for t in TIMES:
        x, tt = noise * t, torch.full((noise.shape[0],), t)
        with torch.no_grad():
            want = model(x, tt, states, mask).numpy()
        got = run({"x": x.numpy(), "t": tt.numpy(), "context": states.numpy(), "context_mask": mask.numpy()})
        out.append(float(np.abs(got - want).mean() / np.abs(want).mean()))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)  # the quantizer's pre-processing hint
    pipe = ditkit.load("shapes-64")
    states, mask = pipe.text_encoder.encode(PROMPTS, torch.device("cpu"))
    noise = torch.randn(len(PROMPTS), 3, 64, 64, generator=torch.Generator().manual_seed(0))
    ort, onnx = engine_package("onnxruntime"), engine_package("onnx")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as work:
        folder = export_model(pipe.model, read_model_config(resolve_model("shapes-64")), Path(work) / "onnx")
        src = str(folder / "velocity.onnx")
        nodes = [n.name for n in onnx.load(src).graph.node if n.op_type in ("MatMul", "Gemm")]
        outside = [n for n in nodes if not n.startswith(BLOCK_SCOPE)]
        variants = {"ort every MatMul": {}, "ort per-channel": {"per_channel": True},
                    "ort reduce_range": {"reduce_range": True}, "ort blocks only": {"nodes_to_exclude": outside}}
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        for name, kw in variants.items():
            out = str(Path(work) / "int8.onnx")
            quantize_dynamic(src, out, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"], **kw)
            session = ort.InferenceSession(out, options, providers=["CPUExecutionProvider"])
            errs = relative_errors(lambda f: session.run(None, f)[0], pipe.model, states, mask, noise)
            print(f"{name:24s}", " ".join(f"{e:.4f}" for e in errs), flush=True)
        ov, nncf = engine_package("openvino"), engine_package("nncf")
        nncf.set_log_level(logging.ERROR)
        core = ov.Core()
        compressed = nncf.compress_weights(core.read_model(src), mode=nncf.CompressWeightsMode.INT8_ASYM)
        compiled = core.compile_model(compressed, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                          "INFERENCE_NUM_THREADS": args.threads})
        errs = relative_errors(lambda f: compiled(f)[0], pipe.model, states, mask, noise)
        print(f"{'openvino INT8_ASYM':24s}", " ".join(f"{e:.4f}" for e in errs))


if __name__ == "__main__":
    main()
