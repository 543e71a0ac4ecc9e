"""The `ditkit` command line: the parser, assembled from one module per verb group, and main().

Verb groups: generate (generate.py), video (video.py), eval (evaluate.py), the editing tasks
(edit.py), info (info.py), analyze / prune / convert / cache-calibrate (analyze.py), export (export.py), train / distill
(train.py), data prepare / emoji (data.py); what they share is in common.py. Every user
error becomes one line on stderr and exit code 2 (a traceback only with --debug); nothing is
written unless the whole command succeeds.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from ditkit.cli import analyze, control, data, edit, evaluate, export, generate, info, serve, train, video
from ditkit.cli.common import CliParser, run_handler


def build_parser() -> argparse.ArgumentParser:
    parser = CliParser(prog="ditkit", description="Train, sample and evaluate diffusion transformers.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", parser_class=CliParser)
    # the order `ditkit --help` lists them
    for group in (generate, control, video, evaluate, edit, info, analyze, export, train, data, serve):
        group.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse's own errors (exit 2) and --help (exit 0)
        return int(e.code or 0)
    debug = getattr(args, "debug", False)
    args.command_line = "ditkit " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    return run_handler(args.handler, args, debug)


if __name__ == "__main__":
    sys.exit(main())
