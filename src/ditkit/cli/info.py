"""`ditkit info`: a model's folder, parameter count and stored config, as JSON."""

from __future__ import annotations

import argparse
import json

from ditkit.api import load, resolve_model
from ditkit.cli.common import add_debug
from ditkit.core.checkpoint import read_model_config


def add_parsers(sub) -> None:
    i = sub.add_parser("info", help="describe a model")
    i.add_argument("model", nargs="?", default="shapes-64")
    add_debug(i)
    i.set_defaults(handler=cmd_info)


def cmd_info(args: argparse.Namespace) -> int:
    folder = resolve_model(args.model)
    pipe = load(folder)
    cfg = read_model_config(folder)
    n = sum(p.numel() for p in pipe.model.parameters())
    print(json.dumps({"source": str(folder), "parameters": n, "config": cfg}, indent=2))
    return 0
