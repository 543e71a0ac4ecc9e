"""Control: what a ControlNet-Transformer costs per image (seconds per image of shapes-64 at its
default settings, without control, with one control and with two).

    python benchmarks/control_speed.py --threads 2          # the measurement
    python benchmarks/control_speed.py --quick              # smoke run: numbers mean nothing

Times the public API, pipe.generate(prompts, batch_size=B, control=...), at the model's stored
defaults (25 Euler steps, CFG 4: cond and uncond batched), batch 1 and 16, fp32, with the
embedded control models (or the folders given). Each control runs its copied blocks (half the
base's depth) at every step, so one control should cost about half a base pass more. Cases run
in interleaved rounds (background load hits all alike); medians are reported.
"""

from __future__ import annotations

import platform

import numpy as np
import torch

import ditkit
from ditkit.core.control_maps import map_image, scene_map
from ditkit.data.shapes import sample_scene

from common import apply_threads, csv, markdown_table, medians, parser, time_interleaved, write_json


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--model", default="shapes-64")
    p.add_argument("--edges", default="edges", help="the edges control: a kind (embedded) or a control folder")
    p.add_argument("--boxes", default="boxes", help="the boxes control: a kind (embedded) or a control folder")
    p.add_argument("--batches", default="1,16")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="smoke run: 2 steps, 1 repeat")
    args = p.parse_args()
    apply_threads(args)
    batches = csv(args.batches, int)
    if args.quick:
        args.steps, args.repeats, batches = 2, 1, [1, 2]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    pipe = ditkit.load(args.model)
    size = pipe.sample_config().size
    scene = sample_scene(np.random.default_rng(args.seed), size, category="position")
    edges = map_image(scene_map("edges", scene, size))
    boxes = map_image(scene_map("boxes", scene, size))
    settings = {"none": None, "edges": [(args.edges, edges)], "edges + boxes": [(args.edges, edges), (args.boxes, boxes)]}
    fns = {}
    for batch in batches:
        for name, control in settings.items():
            def call(batch=batch, control=control):
                return pipe.generate([scene.caption] * batch, batch_size=batch, steps=args.steps, seed=args.seed,
                                     control=control)
            fns[f"{batch}|{name}"] = call
    times = medians(time_interleaved(fns, repeats=args.repeats, warmup=1))
    rows = []
    for batch in batches:
        base = times[f"{batch}|none"] / batch
        for name in settings:
            per = times[f"{batch}|{name}"] / batch
            rows.append({"batch": batch, "control": name, "s_per_image": per, "vs_none": per / base})
    print("\nSeconds per image (pipe.generate at the model's defaults, fp32)\n")
    print(markdown_table(["batch", "control", "s / image", "cost vs no control"],
                         [[r["batch"], r["control"], r["s_per_image"], f"{r['vs_none']:.2f}x"] for r in rows]))
    write_json(args.json, {"rows": rows, "threads": torch.get_num_threads()})


if __name__ == "__main__":
    main()
