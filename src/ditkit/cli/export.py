"""`ditkit export MODEL --to onnx|openvino -o DIR`: the model's velocity call as a graph for a fast
inference engine (ditkit.interop.export; docs/engines.md). The folder it writes loads like a
model folder (`--model DIR`, `ditkit.load(DIR)`)."""

from __future__ import annotations

import argparse
import json

from ditkit.cli.common import add_debug, positive_int
from ditkit.core.checkpoint import load_model, read_model_config, resolve_model
from ditkit.interop.export import EXPORT_FORMATS, export_model
from ditkit.interop.runtime import is_exported


def add_parsers(sub) -> None:
    x = sub.add_parser("export", help="export a model to ONNX or OpenVINO for --engine onnxruntime / openvino")
    x.add_argument("model", help="embedded model name or model folder")
    x.add_argument("--to", required=True, choices=EXPORT_FORMATS, help="the graph format")
    x.add_argument("-o", "--output", required=True, help="the folder to write (must not exist)")
    x.add_argument("--size", type=positive_int("--size"),
                   help="image side for models whose positions fix the size (sin-cos tables; default: the model's); "
                        "RoPE models export with a dynamic size")
    add_debug(x)
    x.set_defaults(handler=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    folder = resolve_model(args.model)
    if is_exported(folder):
        raise ValueError(f"{folder} is already an exported graph; export the model folder it came from")
    model, _ = load_model(folder)
    out = export_model(model, read_model_config(folder), args.output, to=args.to, size=args.size)
    info = json.loads((out / "config.json").read_text())["export"]
    print(json.dumps({"source": str(folder), "to": args.to, "output": str(out), "graph": info["graph"],
                      "dynamic_size": info["dynamic_size"], "size": info["size"],
                      "max_abs_diff": info["check"]["max_abs_diff"]}))
    return 0
