"""`ditkit info`: a model's folder, parameter count, stored config and embedded control models,
or a control model's record (docs/control.md), as JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ditkit.api import load, resolve_model
from ditkit.cli.common import add_debug
from ditkit.core.checkpoint import read_model_config
from ditkit.core.control import CONTROL_CONFIG, embedded_controls, load_control


def add_parsers(sub) -> None:
    i = sub.add_parser("info", help="describe a model or a control model")
    i.add_argument("model", nargs="?", default="shapes-64")
    add_debug(i)
    i.set_defaults(handler=cmd_info)


def cmd_info(args: argparse.Namespace) -> int:
    if args.model in embedded_controls() or (Path(args.model) / CONTROL_CONFIG).is_file():
        net, info = load_control(args.model)
        print(json.dumps({"source": str(info.folder), "kind": "control", "condition": info.condition,
                          "blocks": info.blocks, "base_model": info.base.name, "trained_steps": info.trained_steps,
                          "parameters": sum(p.numel() for p in net.parameters())}, indent=2))
        return 0
    folder = resolve_model(args.model)
    pipe = load(folder)
    cfg = read_model_config(folder)
    n = sum(p.numel() for p in pipe.model.parameters())
    controls = [c for c in embedded_controls() if c.startswith(f"{folder.name}-control-")]
    print(json.dumps({"source": str(folder), "parameters": n, "config": cfg, "controls": controls}, indent=2))
    return 0
