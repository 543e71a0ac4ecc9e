"""Video: seconds per video of the embedded shapes-video at its default settings, and what the
attention choice costs (factorized space-then-time vs full attention over the clip).

    python benchmarks/video_speed.py --threads 2                # the measurement
    python benchmarks/video_speed.py --quick                    # smoke run: numbers mean nothing

Table 1 times the public API, pipe.generate_video(prompts, batch_size=B), text-to-video and
image-to-video, at the model's stored defaults (steps, guidance, sampler; 8 frames of 32x32),
batch 1 and 8, with prompts not seen before (the text encoder's cache hides nothing).

Table 2 times one model call (inference, and a training step's forward + backward) of the
shapes-video architecture with video_attention factorized and full, at the shipped clip size and
at larger ones (more frames, larger frames), random weights. Cases run in interleaved rounds
(background load hits all alike); medians are reported.
"""

from __future__ import annotations

import dataclasses
import itertools
import platform

import torch

import ditkit
from ditkit.core.model import count_parameters
from ditkit.core.video_model import VideoDiT

from common import apply_threads, markdown_table, medians, parser, time_interleaved, write_json

COLORS = ["red", "green", "blue", "yellow", "purple", "orange"]
SHAPES = ["circle", "square", "triangle"]
MOTIONS = ["moving to the left", "moving to the right", "moving up", "moving down", "standing still", "growing"]


def fresh_prompts(counter: itertools.count, n: int) -> list[str]:
    """n video prompts, different on every call (one or two objects)."""
    out = []
    for _ in range(n):
        k = next(counter)
        color, shape, motion = COLORS[k % 6], SHAPES[(k // 6) % 3], MOTIONS[(k // 18) % 6]
        other = f" and a {COLORS[(k + 1) % 6]} {SHAPES[(k // 6 + 1) % 3]} standing still" if k % 2 else ""
        out.append(f"a {color} {shape} {motion}{other}")
    return out


def api_table(args) -> list[dict]:
    pipe = ditkit.load(args.model)
    counter = itertools.count(args.seed * 1000)
    first = pipe.generate_video("a red circle standing still", steps=args.steps)[0][0]
    cases = {}
    for batch, mode in itertools.product(args.batches, ("text-to-video", "image-to-video")):
        image = [first] if mode == "image-to-video" else None

        def call(batch=batch, image=image):
            return pipe.generate_video(fresh_prompts(counter, batch), image=image, batch_size=batch,
                                       steps=args.steps, seed=args.seed)

        cases[(batch, mode)] = call
    named = {f"{b}|{m}": fn for (b, m), fn in cases.items()}
    times = medians(time_interleaved(named, repeats=args.repeats, warmup=1))
    rows = []
    for (batch, mode) in cases:
        sec = times[f"{batch}|{mode}"]
        rows.append({"batch": batch, "mode": mode, "s_per_call": sec, "s_per_video": sec / batch})
    return rows


def attention_table(args) -> list[dict]:
    base = ditkit.load(args.model).model.config
    rows = []
    for frames, size in args.clips:
        models = {}
        for kind in ("factorized", "full"):
            torch.manual_seed(0)
            models[kind] = VideoDiT(dataclasses.replace(base, frames=frames, video_attention=kind))
        x = torch.randn(args.train_batch, frames, 3, size, size)
        t = torch.rand(args.train_batch)
        ctx, mask = torch.randn(args.train_batch, 16, base.text_dim), torch.ones(args.train_batch, 16, dtype=torch.bool)

        def infer(m):
            with torch.no_grad():
                return m.eval()(x[:1], t[:1], ctx[:1], mask[:1])

        def train_step(m):
            m.train()
            m.zero_grad(set_to_none=True)
            m(x, t, ctx, mask).square().mean().backward()

        fns = {}
        for kind, m in models.items():
            fns[f"{kind}|infer"] = lambda m=m: infer(m)
            fns[f"{kind}|train"] = lambda m=m: train_step(m)
        times = medians(time_interleaved(fns, repeats=args.repeats, warmup=1))
        tokens = frames * (size // base.patch_size) ** 2
        for kind, m in models.items():
            rows.append({"frames": frames, "size": size, "tokens": tokens, "attention": kind,
                         "params": count_parameters(m), "infer_s": times[f"{kind}|infer"],
                         "train_step_s": times[f"{kind}|train"],
                         "infer_vs_factorized": times["factorized|infer"] / times[f"{kind}|infer"],
                         "train_vs_factorized": times["factorized|train"] / times[f"{kind}|train"]})
    return rows


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--model", default="shapes-video")
    p.add_argument("--batches", default="1,8", help="videos per call (default 1,8)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    p.add_argument("--train-batch", type=int, default=8, help="clips per training step in table 2")
    p.add_argument("--clips", default="8x32,16x32,8x64", help="FRAMESxSIZE clip shapes for table 2")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 steps, 1 repeat, small clips")
    args = p.parse_args()
    apply_threads(args)
    args.batches = [int(b) for b in args.batches.split(",")]
    args.clips = [tuple(int(v) for v in c.split("x")) for c in args.clips.split(",")]
    if args.quick:
        args.steps, args.repeats, args.batches, args.clips, args.train_batch = 2, 1, [1, 2], [(8, 32)], 2
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    api = api_table(args)
    print("\nSeconds per video (pipe.generate_video at the model's defaults)\n")
    print(markdown_table(["batch", "mode", "s / call", "s / video"],
                         [[r["batch"], r["mode"], r["s_per_call"], r["s_per_video"]] for r in api]))
    att = attention_table(args)
    print("\nAttention over the clip: factorized (space then time) vs full (random weights; "
          "speed-up = factorized time / this time)\n")
    print(markdown_table(["frames x size", "tokens", "attention", "params", "inference s (1 clip)",
                          f"train step s ({args.train_batch} clips)", "inference speed-up", "train speed-up"],
                         [[f"{r['frames']}x{r['size']}", r["tokens"], r["attention"], f"{r['params']:,}", r["infer_s"],
                           r["train_step_s"], f"{r['infer_vs_factorized']:.2f}x", f"{r['train_vs_factorized']:.2f}x"]
                          for r in att]))
    write_json(args.json, {"api": api, "attention": att, "threads": torch.get_num_threads()})


if __name__ == "__main__":
    main()
