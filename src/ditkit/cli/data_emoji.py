"""`ditkit data emoji -o DIR`: render Noto Color Emoji into a captioned image folder
(ditkit.data.emoji): DIR/train/ (the folder to train on: data.kind folder, data.path DIR/train),
DIR/heldout/ (--heldout names kept out of training, for `ditkit eval emoji`) and DIR/emoji.json."""

from __future__ import annotations

import argparse
from pathlib import Path

from ditkit.cli.common import UserError, add_debug
from ditkit.core.files import atomic_folder
from ditkit.data import emoji


def add_emoji_parser(data_sub) -> None:
    """Register `emoji` under the `ditkit data` verb group (its subparsers object)."""
    p = data_sub.add_parser("emoji", help="render Noto Color Emoji as a captioned image folder (train/ + heldout/)")
    p.add_argument("-o", "--output", required=True, help="output folder (must not exist); written whole or not at all")
    p.add_argument("--heldout", type=_count("--heldout"), default=emoji.HELDOUT,
                   help=f"emoji kept out of DIR/train, written to DIR/heldout (default {emoji.HELDOUT}; 0 = none)")
    p.add_argument("--size", type=int, default=emoji.SIZE, help=f"image side in pixels (default {emoji.SIZE})")
    p.add_argument("--font", default=str(emoji.FONT_PATH), help=f"the font file (default: {emoji.FONT_PATH}, "
                                                                  f"from Debian's {emoji.FONT_PACKAGE})")
    add_debug(p)
    p.set_defaults(handler=cmd_data_emoji)


def _count(flag: str):
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be an integer >= 0, got {s!r}") from None
        if v < 0:
            raise argparse.ArgumentTypeError(f"{flag} must be an integer >= 0, got {v}")
        return v
    return parse


def cmd_data_emoji(args: argparse.Namespace) -> int:
    out = Path(args.output)
    if out.exists():
        raise UserError(f"output {args.output!r} already exists; remove it or choose a new folder")
    if not out.parent.is_dir():
        raise UserError(f"parent folder of --output {str(out.parent)!r} does not exist")
    font = emoji.load_font(args.font)  # FileNotFoundError naming the package -> one line, exit 2
    items = emoji.render_all(font, args.size)
    if not items:
        raise UserError(f"the font {args.font} draws none of the emoji code points; give Noto Color Emoji")
    emoji.heldout_names([e.name for e, _ in items], args.heldout)  # a bad count fails before anything is written
    with atomic_folder(out) as tmp:
        manifest = emoji.write_emoji_dataset(tmp, items, args.heldout, args.font)
    print(f"wrote {len(manifest['train'])} training and {len(manifest['heldout'])} held-out emoji "
          f"({args.size}x{args.size}) to {out}; train on data.path {out / emoji.TRAIN_DIR}")
    return 0
