"""`ditkit data`: training-data tools.

- `ditkit data prepare CONFIG -o DIR`: encode every caption of the config's data (plus the
  empty caption of caption dropout) with the config's text encoder into a features folder
  (ditkit.data.features); `data.features: DIR` then makes `ditkit train` read them instead of
  running the encoder. Written whole or not at all (core.files.atomic_folder).
- `ditkit data emoji -o DIR`: render the emoji data set (data_emoji.py).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ditkit.cli.common import CliParser, UserError, add_debug
from ditkit.cli.data_emoji import add_emoji_parser
from ditkit.cli.train import config_file
from ditkit.core.config import Config, load_config
from ditkit.core.encoders import get_text_encoder
from ditkit.core.files import atomic_folder
from ditkit.data import data_captions
from ditkit.data.features import write_features


def add_parsers(sub) -> None:
    d = sub.add_parser("data", help="training-data tools: precompute text features, render the emoji data set")
    data_sub = d.add_subparsers(dest="data_command", parser_class=CliParser, metavar="{prepare,emoji}",
                                required=True)
    p = data_sub.add_parser("prepare", help="precompute the text-encoder states of every caption of a config's data")
    p.add_argument("config", help="a training config whose data is data.kind folder, webdataset or hf")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. data.path=DIR")
    p.add_argument("-o", "--output", required=True, help="output features folder (must not exist)")
    add_debug(p)
    p.set_defaults(handler=cmd_data_prepare)
    add_emoji_parser(data_sub)


def prepare_features(cfg: Config, out: str | Path) -> dict:
    """Encode every caption of cfg's data with cfg's text encoder into the features folder
    `out` (atomically). Returns {"captions", "shards", "dim"}."""
    captions = list(data_captions(cfg.data))  # refuses data.kind builtin (see its docstring)
    encoder = get_text_encoder(cfg.text_encoder)
    with atomic_folder(out) as tmp:
        return write_features(tmp, captions, encoder.encode, cfg.text_encoder)


def cmd_data_prepare(args: argparse.Namespace) -> int:
    cfg = load_config(config_file(args.config, "config"), args.set)
    out = Path(args.output)
    if out.exists():
        raise UserError(f"output {args.output!r} already exists; remove it or choose a new folder")
    if not out.parent.is_dir():
        raise UserError(f"parent folder of --output {str(out.parent)!r} does not exist")
    t0 = time.perf_counter()
    info = prepare_features(cfg, out)
    print(json.dumps({**info, "output": str(out), "text_encoder": cfg.text_encoder,
                      "seconds": round(time.perf_counter() - t0, 2)}))
    return 0
