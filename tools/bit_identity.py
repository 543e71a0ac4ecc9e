"""Bit-identity check for ditkit's public API: do the shipped embedded models still give the
same images, byte for byte, after a refactor?

It runs fixed prompts, seeds and inputs through the PUBLIC API only (`import ditkit`,
`ditkit.load(name)`, and the Pipeline methods generate, vary, edit, inpaint, outpaint, fuse,
upscale, calibrate_cache), never through `ditkit.<module>`, so it keeps working when the
modules move. For each case it prints one line

    <case name> <sha256>

where the sha256 covers the returned images in order: each image's mode, size and array
shape, then the raw bytes of its numpy uint8 array (PNG-independent). The one non-image
case, calibrate_cache/schedule, hashes the SmoothCache schedule it saves (JSON, canonicalized;
calibrated with alpha 0.3 into a temporary file, never into the model folder).
A case that raises prints `<case name> ERROR <exception class>: <message>` instead and the
run goes on. Environment details and timings go to stderr only, so the output of an old
and a new checkout can be diffed directly.

Usage (run it on the old code and on the new code with the same Python and torch, then diff):

    cd /path/to/old && OMP_NUM_THREADS=1 PYTHONPATH=$PWD/src python tools/bit_identity.py --out before.txt
    cd /path/to/new && OMP_NUM_THREADS=1 PYTHONPATH=$PWD/src python tools/bit_identity.py --out after.txt
    diff before.txt after.txt && echo "bit-identical"

PYTHONPATH makes sure the checkout you mean is the `ditkit` that is imported even when a
venv has another checkout installed editable; the script prints `ditkit.__file__` to stderr
so you can see which one ran. Hashes are only comparable between runs with the same torch
build and thread count (keep OMP_NUM_THREADS the same for both runs; some float reductions
depend on it). Run the script twice on the same code first to confirm it is deterministic
on your machine. The whole run takes about a minute on 2 CPU cores.

tools/bit_identity_reference.txt holds main's hashes (OMP_NUM_THREADS=1, this project's 2-core
x86 CPU; other CPUs may differ): a refactor diffs against it. A commit that changes outputs on
purpose refreshes it and says why (issue 26: prompts encoded alone changed the two cases that
batch prompts of different lengths, calibrate_cache/schedule and generate/best_of2_shapes).

Options: --out FILE (also write the lines there), --cases SUBSTR[,SUBSTR...] (run only
cases whose name contains one of them), --repeat N (run each case N times in the process
and report `NONDETERMINISTIC` if the hashes differ), --list (print the case names).

Not covered: cache="smooth:calibrated" (it reads cache_schedule.json from the model folder,
and the embedded models ship none; the script calibrates into a temporary file and uses
"smooth:<that file>" instead, which runs the same schedule code), fp16 (GPU only) and
compile().
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

import ditkit

STEPS = 8
PROMPTS = ["a small red circle", "two blue squares"]
BEST_OF_PROMPTS = ["a red circle to the left of a blue square", "three green triangles"]
SMOOTH_ALPHA = 0.3

# -- hashing -----------------------------------------------------------------------------------


def hash_images(images) -> str:
    """sha256 over the images in order: mode, size, shape and dtype, then the raw array bytes."""
    if isinstance(images, Image.Image):
        images = [images]
    images = list(images)
    if not images:
        raise ValueError("the call returned no images")
    h = hashlib.sha256()
    h.update(f"n={len(images)};".encode())
    for im in images:
        if not isinstance(im, Image.Image):
            raise TypeError(f"expected PIL images, got {type(im).__name__}")
        arr = np.asarray(im)
        h.update(f"{im.mode};{im.size[0]}x{im.size[1]};{arr.shape};{arr.dtype};".encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def hash_json_file(path: Path) -> str:
    data = json.loads(Path(path).read_text())
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# -- inputs (drawn with PIL, so they do not depend on the code under test) ---------------------


def scene_image(size: int = 64) -> Image.Image:
    """A red circle to the left of a blue square on white."""
    im = Image.new("RGB", (size, size), (255, 255, 255))
    d = ImageDraw.Draw(im)
    s = size / 64
    d.ellipse([6 * s, 20 * s, 26 * s, 40 * s], fill=(220, 30, 30))
    d.rectangle([36 * s, 20 * s, 56 * s, 40 * s], fill=(30, 30, 220))
    return im


def other_image(size: int = 64) -> Image.Image:
    """A green triangle on white (image B of fuse)."""
    im = Image.new("RGB", (size, size), (255, 255, 255))
    d = ImageDraw.Draw(im)
    d.polygon([(32, 10), (54, 52), (10, 52)], fill=(30, 180, 30))
    return im


def mask_image(size: int = 64) -> Image.Image:
    """White (fill) rectangle over the right half's square, black elsewhere."""
    im = Image.new("L", (size, size), 0)
    ImageDraw.Draw(im).rectangle([32, 12, 60, 48], fill=255)
    return im


# -- cases -------------------------------------------------------------------------------------

_pipes: dict[str, object] = {}


def pipe(name: str):
    if name not in _pipes:
        _pipes[name] = ditkit.load(name)
    return _pipes[name]


def build_cases(tmpdir: Path):
    """(name, zero-argument function returning images or ('hash', hexdigest)) in run order."""
    schedule_path = tmpdir / "shapes-64-smooth-schedule.json"
    scene, other, mask = scene_image(), other_image(), mask_image()
    small = scene_image(32)

    def gen(model="shapes-64", prompts=PROMPTS, **kw):
        kw.setdefault("steps", STEPS)
        kw.setdefault("seed", 0)
        return lambda: pipe(model).generate(list(prompts), **kw)

    def calibrate():
        # Always into a temporary file: without `out` it would write into the model folder.
        # alpha 0.3: the default 0.15 reuses no block at 8 steps, so it would test nothing.
        path = pipe("shapes-64").calibrate_cache(steps=STEPS, alpha=SMOOTH_ALPHA, out=schedule_path)
        return ("hash", hash_json_file(path))

    def smooth():
        if not schedule_path.is_file():
            calibrate()
        return pipe("shapes-64").generate(PROMPTS, steps=STEPS, seed=0, cache=f"smooth:{schedule_path}")

    cases = [
        ("inputs", lambda: [scene, other, mask, small]),
        ("generate/euler", gen(sampler="euler")),
        ("generate/heun", gen(sampler="heun")),
        ("generate/dpm2m", gen(sampler="dpm2m")),
        ("generate/seed7_guidance2.5", gen(seed=7, guidance=2.5)),
        ("generate/apg", gen(apg=True)),
        ("generate/guidance_interval_0.2_0.8", gen(guidance_interval=(0.2, 0.8))),
        ("generate/int8", gen(precision="int8")),
        ("generate/bf16_steps4", gen(prompts=PROMPTS[:1], steps=4, precision="bf16")),
        # At these settings 0.08 never reuses (same images as generate/euler); 0.3 at 16 steps does.
        ("generate/cache_first-block_0.08", gen(cache="first-block:0.08")),
        ("generate/cache_first-block_0.3_steps16", gen(steps=16, cache="first-block:0.3")),
        ("calibrate_cache/schedule", calibrate),
        ("generate/cache_smooth_tempfile", smooth),
        # 20 steps: at 8 only t = 1 is >= 0.9, where the prior step equals the plain one.
        ("generate/prior_until_0.9_steps20", gen(steps=20, prior_until=0.9)),
        ("generate/num_images2_batch1", gen(num_images=2, batch_size=1)),
        ("generate/num_images2_default_batch", gen(num_images=2)),
        ("generate/unconditional", gen(prompts=[""])),
        # Prompts for which the verifier keeps candidate 1 for one prompt (not just the plain images).
        ("generate/best_of2_shapes", gen(prompts=BEST_OF_PROMPTS, best_of=2, verifier="shapes")),
        ("shapes-64-flash/steps4", gen(model="shapes-64-flash", steps=4)),
        ("shapes-64-pruned/generate", gen(model="shapes-64-pruned")),
        ("digits-32/generate", gen(model="digits-32", prompts=["a handwritten digit 7"])),
        ("inpaint/auto", lambda: pipe("shapes-64").inpaint(scene, mask, "a yellow triangle", method="auto",
                                                           steps=STEPS, seed=0)),
        ("inpaint/blend", lambda: pipe("shapes-64").inpaint(scene, mask, "a yellow triangle", method="blend",
                                                            steps=STEPS, seed=0)),
        ("outpaint/right32", lambda: pipe("shapes-64").outpaint(scene, "a green triangle", right=32,
                                                                steps=STEPS, seed=0)),
        ("vary/strength0.5", lambda: pipe("shapes-64").vary(scene, strength=0.5, num_images=2, steps=STEPS, seed=0)),
        ("vary/prompt_strength0.5", lambda: pipe("shapes-64").vary(scene, prompt="a red circle and a blue square",
                                                                   strength=0.5, steps=STEPS, seed=0)),
        ("edit/red_to_green", lambda: pipe("shapes-64").edit(scene, source_prompt="a red circle and a blue square",
                                                             prompt="a green circle and a blue square", steps=STEPS)),
        ("fuse/pixels_join", lambda: pipe("shapes-64").fuse(scene, other, alpha=0.5, prompt_a="a red circle",
                                                            prompt_b="a green triangle", steps=STEPS, seed=0)),
        ("fuse/pixels_mix", lambda: pipe("shapes-64").fuse(scene, other, alpha=0.5, prompt_a="a red circle",
                                                           prompt_b="a green triangle", condition="mix",
                                                           steps=STEPS, seed=0)),
        ("fuse/noise_prompt", lambda: pipe("shapes-64").fuse(scene, other, alpha=0.5, mode="noise",
                                                             prompt="a red circle and a green triangle",
                                                             prompt_a="a red circle", prompt_b="a green triangle",
                                                             steps=STEPS, seed=0)),
        ("upscale/32to64", lambda: pipe("shapes-upscale").upscale(small, steps=STEPS, seed=0)),
    ]
    return cases


def run_case(fn) -> str:
    # Same global RNG state before every case, so a case's result does not depend on which
    # cases ran before it (or on --cases). ditkit seeds its own generators; this is a guard.
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    out = fn()
    if isinstance(out, tuple) and len(out) == 2 and out[0] == "hash":
        return out[1]
    return hash_images(out)


def one_line(msg: str) -> str:
    return " ".join(str(msg).split())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="also write the result lines to this file")
    ap.add_argument("--cases", help="comma-separated substrings: run only the cases whose name contains one")
    ap.add_argument("--repeat", type=int, default=1, help="run each case this many times and compare (default 1)")
    ap.add_argument("--list", action="store_true", help="print the case names and exit")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="ditkit-bit-identity-") as tmp:
        cases = build_cases(Path(tmp))
        if args.list:
            print("\n".join(name for name, _ in cases))
            return 0
        if args.cases:
            wanted = [s for s in args.cases.split(",") if s]
            cases = [(n, f) for n, f in cases if any(s in n for s in wanted)]
        import PIL

        print(f"# ditkit {ditkit.__file__} | torch {torch.__version__} threads={torch.get_num_threads()} "
              f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')} | numpy {np.__version__} | PIL {PIL.__version__} "
              f"| python {sys.version.split()[0]}", file=sys.stderr, flush=True)
        out = open(args.out, "w") if args.out else None
        failures, start, seen = 0, time.perf_counter(), {}
        try:
            for name, fn in cases:
                t0 = time.perf_counter()
                try:
                    hashes = [run_case(fn) for _ in range(max(1, args.repeat))]
                    if len(set(hashes)) == 1:
                        line = f"{name} {hashes[0]}"
                        if hashes[0] in seen:  # a case that gives another's images may be testing nothing
                            print(f"# note: {name} gives the same hash as {seen[hashes[0]]}", file=sys.stderr)
                        seen.setdefault(hashes[0], name)
                    else:
                        failures += 1
                        line = f"{name} NONDETERMINISTIC {' '.join(hashes)}"
                except Exception as e:  # one failing case must not hide the others
                    failures += 1
                    line = f"{name} ERROR {type(e).__name__}: {one_line(e)}"
                print(line, flush=True)
                if out:
                    out.write(line + "\n")
                    out.flush()
                print(f"#   {name}: {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
        finally:
            if out:
                out.close()
        print(f"# {len(cases)} cases, {failures} failed, {time.perf_counter() - start:.1f}s", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
