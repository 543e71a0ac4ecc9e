"""Training verbs: `ditkit train` (a model from a YAML config) and `ditkit distill` (a
few-step student from a teacher)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ditkit.accel.distill import distill, load_distill_config
from ditkit.cli.common import UserError, add_debug
from ditkit.core.config import load_config
from ditkit.core.files import remove_orphan_temps
from ditkit.training.distributed import torchrun_env
from ditkit.training.train import train


def add_parsers(sub) -> None:
    ds = sub.add_parser("distill", help="distil a model into a few-step student (latent consistency or reflow, guidance built in)")
    ds.add_argument("--teacher", default="shapes-64", help="embedded model name or model folder (default shapes-64)")
    ds.add_argument("--config", required=True, help="distillation YAML (a 'distill:' section), e.g. configs/distill-shapes.yaml")
    ds.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. distill.steps=100")
    ds.add_argument("-o", "--output", required=True, help="output model folder (must not exist or be empty)")
    add_debug(ds)
    ds.set_defaults(handler=cmd_distill)

    t = sub.add_parser("train", help="train a model from a YAML config (under torchrun: on N processes, "
                                     "see docs/training.md)")
    t.add_argument("config")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.lr=1e-4")
    t.add_argument("--resume", action="store_true", help="continue the run in train.output_dir")
    t.add_argument("--no-progress", action="store_true")
    add_debug(t)
    t.set_defaults(handler=cmd_train)


def config_file(path: str, what: str) -> str:
    """A config path that is a file: a folder gets its own message, not "does not exist"."""
    if Path(path).is_dir():
        raise UserError(f"{what} {path!r} is a folder; give a YAML config file (e.g. configs/shapes-64.yaml)")
    return path


def cmd_distill(args: argparse.Namespace) -> int:
    cfg = load_distill_config(config_file(args.config, "--config"), args.set)
    out = Path(args.output)
    if not out.parent.exists():
        raise UserError(f"parent folder of --output {str(out.parent)!r} does not exist")
    # A distillation killed mid-write left its temporary files in the output folder (and its
    # only content may be them): clear ours before the emptiness check.
    remove_orphan_temps(out)
    print(json.dumps(distill(args.teacher, cfg, out)))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    cfg = load_config(config_file(args.config, "config"), args.set)
    result = train(cfg, resume=args.resume, progress=not args.no_progress)
    place = torchrun_env()
    if place is None or place[0] == 0:  # under torchrun every rank has the same result: rank 0 prints it
        print(json.dumps({**result, "output_dir": cfg.train.output_dir,
                          **_result_folder(cfg)}))
    return 0


def _result_folder(cfg) -> dict:
    """Where the run's result is: the model folder, the adapter folder of a train.lora run, or the
    control folder of a train.control run."""
    if cfg.train.lora:
        return {"lora": str(Path(cfg.train.output_dir) / "lora")}
    if cfg.train.control is not None:
        return {"control": str(Path(cfg.train.output_dir) / "control")}
    return {"model": str(Path(cfg.train.output_dir) / "model")}
