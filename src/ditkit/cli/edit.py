"""CLI verbs of the editing tasks: vary, edit, inpaint, outpaint, fuse, upscale
(Pipeline's methods over ditkit.tasks). Registered by ditkit.cli.main; errors follow
ditkit.cli.common's rule. `ditkit eval edit` is in ditkit.cli.evaluate."""

from __future__ import annotations

import argparse

from ditkit.api import load
from ditkit.cli.common import add_debug, add_engine_arg, check_output_file, nonneg_float, positive_int, save_numbered
from ditkit.core.sampling import SAMPLER_NAMES
from ditkit.tasks.pipeline_edit import FUSE_CONDITIONS, FUSE_MODES, INPAINT_METHODS


def _common(p: argparse.ArgumentParser, default_model: str = "shapes-64", sampler: bool = True) -> None:
    p.add_argument("-o", "--output", required=True, help="output image path (.png, .jpg, ...)")
    p.add_argument("--model", default=default_model, help=f"embedded model name or model folder (default {default_model})")
    p.add_argument("--steps", type=positive_int("--steps"), help="sampling steps (default: the model's)")
    p.add_argument("--guidance", type=nonneg_float("--guidance"), help="guidance scale (default: the model's)")
    if sampler:
        names = f"{', '.join(SAMPLER_NAMES[:-1])} or {SAMPLER_NAMES[-1]}"
        p.add_argument("--sampler", help=f"{names} (default: the model's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", default="fp32", help="fp32, bf16, int8 (CPU) or fp16 (GPU)")
    p.add_argument("--device", default="cpu")
    add_engine_arg(p)
    add_debug(p)


def add_parsers(sub) -> None:
    v = sub.add_parser("vary", help="variations of an image (SDEdit), optionally guided by a prompt")
    v.add_argument("image")
    v.add_argument("--prompt", default="", help="text to move the image towards (text+image fusion)")
    v.add_argument("--strength", type=float, default=0.6, help="0 keeps the image, 1 ignores it (default 0.6)")
    v.add_argument("--num", type=positive_int("--num"), default=1, help="variations; files get _0, _1, ... suffixes")
    _common(v)

    e = sub.add_parser("edit", help="invert an image under a source prompt, regenerate it under a new prompt")
    e.add_argument("image")
    e.add_argument("--source-prompt", required=True, help="what the image shows")
    e.add_argument("--prompt", required=True, help="what it should show")
    e.add_argument("--strength", type=float, default=1.0, help="how far to invert, 0 < t <= 1 (default 1: to noise)")
    _common(e, sampler=False)

    i = sub.add_parser("inpaint", help="fill the white region of a mask")
    i.add_argument("image")
    i.add_argument("prompt", help="what to put in the hole")
    i.add_argument("--mask", required=True, help="mask image, white = fill (resized with a warning if its size differs)")
    i.add_argument("--method", default="auto", choices=INPAINT_METHODS,
                   help="model (inpainting model), blend (training-free), auto (model if there is one)")
    i.add_argument("--resample", type=int, default=0, help="RePaint resampling rounds per step (default 0)")
    _common(i)

    o = sub.add_parser("outpaint", help="extend the canvas and fill the new area")
    o.add_argument("image")
    o.add_argument("prompt", help="what the new area (or the whole new image) should show")
    for side in ("left", "right", "top", "bottom"):
        o.add_argument(f"--{side}", type=int, default=0, metavar="PX", help=f"pixels to add on the {side}")
    o.add_argument("--method", default="auto", choices=INPAINT_METHODS)
    o.add_argument("--resample", type=int, default=0)
    _common(o)

    f = sub.add_parser("fuse", help="one image with content of two (inversion + slerp of the noises)")
    f.add_argument("image_a")
    f.add_argument("image_b")
    f.add_argument("--alpha", type=float, default=0.5, help="0 = A, 1 = B (default 0.5)")
    f.add_argument("--prompt", help="condition for the result (default: both prompts, see --condition)")
    f.add_argument("--condition", default="join", choices=FUSE_CONDITIONS,
                   help="without --prompt: join (both prompts' tokens side by side, default) or mix (interpolated)")
    f.add_argument("--prompt-a", default="", help="what image A shows (for its inversion)")
    f.add_argument("--prompt-b", default="", help="what image B shows")
    f.add_argument("--mode", default="pixels", choices=FUSE_MODES,
                   help="pixels: multiply-blend then regenerate from --strength (default); "
                        "noise: invert both, slerp the noises, regenerate")
    f.add_argument("--strength", type=float, help="re-generation depth (default 0.5 for pixels, 1 for noise)")
    _common(f, sampler=False)

    u = sub.add_parser("upscale", help="2x super-resolution with an upscaling model")
    u.add_argument("image")
    u.add_argument("--prompt", default="", help="optional description of the image")
    _common(u, default_model="shapes-upscale")

    for p in (v, e, i, o, f, u):
        p.set_defaults(edit_task=p.prog.split()[-1], handler=cmd_edit_task)


def cmd_edit_task(args: argparse.Namespace) -> int:
    task = args.edit_task
    out = check_output_file(args.output)
    pipe = load(args.model, device=args.device, engine=args.engine)
    common = dict(steps=args.steps, guidance=args.guidance, precision=args.precision)
    if getattr(args, "sampler", None) is not None:
        common["sampler"] = args.sampler
    if task == "vary":
        images = pipe.vary(args.image, prompt=args.prompt, strength=args.strength, num_images=args.num, seed=args.seed,
                           **common)
    elif task == "edit":
        images = [pipe.edit(args.image, args.source_prompt, args.prompt, strength=args.strength, **common)]
    elif task == "inpaint":
        images = [pipe.inpaint(args.image, args.mask, args.prompt, method=args.method, seed=args.seed,
                               resample=args.resample, **common)]
    elif task == "outpaint":
        images = [pipe.outpaint(args.image, args.prompt, left=args.left, right=args.right, top=args.top,
                                bottom=args.bottom, method=args.method, seed=args.seed, resample=args.resample, **common)]
    elif task == "fuse":
        images = [pipe.fuse(args.image_a, args.image_b, alpha=args.alpha, prompt=args.prompt, prompt_a=args.prompt_a,
                            prompt_b=args.prompt_b, mode=args.mode, condition=args.condition, strength=args.strength, seed=args.seed,
                            **common)]
    elif task == "upscale":
        images = [pipe.upscale(args.image, prompt=args.prompt, seed=args.seed, **common)]
    else:  # pragma: no cover - argparse only routes the verbs above
        raise ValueError(f"unknown task {task!r}")
    paths = save_numbered(images, out)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0
