"""`ditkit control-map KIND IMAGE -o MAP.png`: a condition map for control (docs/control.md)
made from any image: Canny edges, object silhouettes, or a layout of the objects' boxes in
reading order (core/control_maps.py). The map is what `ditkit generate --control KIND:MAP.png`
reads."""

from __future__ import annotations

import argparse

from ditkit.cli.common import add_debug, check_output_file, save_image_atomic
from ditkit.core.control_maps import CONDITIONS, check_condition, condition_map, map_image
from ditkit.core.images import load_image


def add_parsers(sub) -> None:
    m = sub.add_parser("control-map", help="make a control condition map (edges, boxes, seg) from an image")
    m.add_argument("kind", help=f"the condition: {', '.join(CONDITIONS)}")
    m.add_argument("image", help="the image to read")
    m.add_argument("-o", "--output", required=True, help="the map to write (.png)")
    m.add_argument("--size", type=int, default=None,
                   help="resize the image to SIZE x SIZE first (a control model's output size, e.g. 64)")
    add_debug(m)
    m.set_defaults(handler=cmd_control_map)


def cmd_control_map(args: argparse.Namespace) -> int:
    kind = check_condition(args.kind)
    out = check_output_file(args.output)
    image = load_image(args.image, "image")
    if args.size is not None:
        if not 8 <= args.size <= 4096:
            raise ValueError(f"--size must be between 8 and 4096, got {args.size}")
        image = image.resize((args.size, args.size))
    arr = condition_map(kind, image)
    save_image_atomic(map_image(arr), out)
    print(f"wrote {out} ({kind}, {arr.shape[1]}x{arr.shape[0]}, {int((arr > 0).sum())} non-black pixels)")
    return 0
