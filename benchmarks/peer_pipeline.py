"""End-to-end seconds per image: ditkit's sampling pipeline vs diffusers' (issue 4).

    python benchmarks/peer_pipeline.py --threads 2                  # the measurement (minutes on 2 cores)
    python benchmarks/peer_pipeline.py --threads 2 --repeats 1 --batches 1 --steps 2   # smoke run; numbers mean nothing

One pixart-configured ditkit DiT (DiTConfig(**PIXART): patch embedding + sin-cos
table, adaLN-single blocks, no pooled text; width 256, depth 8, 4 heads, patch 8,
64x64 pixels, text_dim 384) with random weights is converted with
ditkit.interop.diffusers.to_diffusers into diffusers' PixArtTransformer2DModel, so both sides
run the same network with the same weights:

- ditkit:    ditkit.engine.generate_tensor (Euler, CFG with cond + uncond in one
             batch, ditkit's noise per seed), the path Pipeline.generate takes;
- diffusers: the PixArt pipeline's denoising loop written out (diffusers has no
             pixel-space PixArt pipeline: PixArtAlphaPipeline needs a VAE and T5):
             randn_tensor noise (one generator per image), [uncond, cond] batch, CFG on the prediction,
             FlowMatchEulerDiscreteScheduler.step, on ditkit's grid of sigmas
             (set_timesteps(sigmas=linspace(1, 1/n, n)), equal to ditkit's timesteps()).

Same steps (25) and guidance (4.0), batch 1 and 16. Text: --text random (default)
gives every prompt and the empty prompt 16 x 384 random states, all real tokens;
--text minilm runs ditkit's MiniLM encoder (real prompts, padded) for both sides.
Encoding is inside the timed call on both sides (MiniLM's per-prompt cache is warm
for both after the warmup calls). Random weights: ditkit's init, with
the zero-initialised layers (adaLN-single, cross-attention out, final linear) drawn
N(0, 0.02) so every path computes.

Rows, each ditkit setting against the same diffusers loop (diffusers' default fp32):
  off:  ditkit fp32, no cache (must match diffusers' images: max |diff| is printed);
  on:   ditkit bf16 autocast + first-block cache (--cache, default first-block:0.2);
and, for reference, "bf16 both": ditkit bf16 vs diffusers under the same bf16 autocast.
Calls are timed interleaved (A B, B A, ...) and the medians reported.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import zlib
from contextlib import nullcontext

import numpy as np
import torch

from ditkit.engine.cache import parse_cache_spec
from ditkit.core.config import SampleConfig
from ditkit.interop.diffusers import to_diffusers
from ditkit.core.model import PIXART, DiT, DiTConfig
from ditkit.engine import generate_tensor

from common import apply_threads, medians, time_interleaved

PROMPTS = ["a red circle to the left of a blue square", "two green triangles", "a yellow star above a purple circle",
           "three small blue squares", "a big orange circle", "a red square below a green star"]


class RandomText:
    """The TextEncoder.encode contract with random states: (B, L, D) float32 and a (B, L) bool mask,
    fixed per prompt (seeded by its CRC32), L = text_len real tokens for every prompt including ''."""

    def __init__(self, length: int, dim: int):
        self.length, self.dim = length, dim

    def encode(self, prompts, device):
        states = torch.stack([torch.randn(self.length, self.dim, generator=torch.Generator().manual_seed(
            zlib.crc32(p.encode()))) for p in prompts])
        return states.to(device), torch.ones(len(prompts), self.length, dtype=torch.bool, device=device)


def build_model(args) -> DiT:
    cfg = DiTConfig(**PIXART, in_channels=3, out_channels=3, patch_size=args.patch, width=args.width,
                    depth=args.depth, heads=args.heads, mlp_ratio=4.0, text_dim=args.text_dim,
                    sample_size=args.image_size)
    torch.manual_seed(0)
    model = DiT(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.any():  # the zero-initialised layers
                p.normal_(0, 0.02)
    return model.eval()


def ditkit_run(model, encoder, prompts, args, precision: str, cache: str | None, stats: dict):
    sample = SampleConfig(sampler="euler", steps=args.steps, guidance=args.guidance, size=args.image_size)
    factory = parse_cache_spec(cache)
    made = []

    def make_cache():
        made.append(factory())
        return made[-1]

    out = generate_tensor(model, encoder, prompts, sample, seed=0, precision=precision, batch_size=len(prompts),
                          cache=make_cache if factory else None)
    if made:
        stats["hits"] = sum(c.hits for c in made)
        stats["calls"] = sum(c.calls for c in made)
    return out


def diffusers_run(transformer, encoder, prompts, args, precision: str, device: torch.device):
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.utils.torch_utils import randn_tensor

    n = len(prompts)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1.0 / args.steps, args.steps).tolist(), device=device)
    states, mask = encoder.encode([""] * n + list(prompts), device)
    mask = mask.float()
    # A list of generators, one per image (as a diffusers pipeline takes them): seeds 0..n-1, ditkit's noise.
    x = randn_tensor((n, 3, args.image_size, args.image_size),
                     generator=[torch.Generator().manual_seed(i) for i in range(n)]).to(device)
    cast = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    with torch.no_grad():
        for t in scheduler.timesteps:
            with cast:
                v = transformer(torch.cat([x, x]), encoder_hidden_states=states, timestep=t.expand(2 * n),
                                encoder_attention_mask=mask, return_dict=False)[0]
            v_uncond, v_text = v.float().chunk(2)
            x = scheduler.step(v_uncond + args.guidance * (v_text - v_uncond), t, x).prev_sample
    return x


def add_model_args(p: argparse.ArgumentParser) -> None:
    """build_model's sizes and RandomText's shape (shared with benchmarks/engine_speed.py)."""
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--depth", type=int, default=8)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--patch", type=int, default=8)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--text-len", type=int, default=16)
    p.add_argument("--text-dim", type=int, default=384)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=5, help="interleaved timed calls per side and row (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per side before each row (default 1)")
    p.add_argument("--batches", default="1,16", help="comma-separated batch sizes (default 1,16)")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=4.0)
    p.add_argument("--cache", default="first-block:0.2", help="ditkit's cache in the 'on' row (default %(default)s)")
    p.add_argument("--text", default="random", choices=("random", "minilm"),
                   help="random 16x384 states (default) or ditkit's MiniLM encoder")
    add_model_args(p)
    p.add_argument("--rows", default="off,on,bf16 both", help="comma-separated subset of: off, on, bf16 both")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = p.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",") if b]
    args.rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    for r in args.rows:
        if r not in ROWS:
            p.error(f"unknown row {r!r}; allowed: {', '.join(ROWS)}")
    if args.text == "minilm" and args.text_dim != 384:
        p.error("--text minilm gives 384-dim states: leave --text-dim at 384")
    if args.repeats < 1 or args.steps < 1 or not args.batches or min(args.batches) < 1:
        p.error("--repeats, --steps and --batches must be >= 1")
    return args


# row -> (ditkit precision, ditkit cache?, diffusers precision)
ROWS = {"off": ("fp32", False, "fp32"), "on": ("bf16", True, "fp32"), "bf16 both": ("bf16", False, "bf16")}


def main(argv=None) -> int:
    args = parse_args(argv)
    apply_threads(args)
    device = torch.device(args.device)
    import diffusers

    model = build_model(args).to(device)
    transformer = to_diffusers(model)
    if args.text == "minilm":
        from ditkit.core.encoders import get_text_encoder

        encoder = get_text_encoder("minilm", device=device)
        text_desc = "MiniLM-L6 states (384-dim, real prompts, padded)"
    else:
        encoder = RandomText(args.text_len, args.text_dim)
        text_desc = f"random states {args.text_len} x {args.text_dim} for every prompt and for ''"
    print("# peer_pipeline: ditkit generate_tensor vs a diffusers PixArtTransformer2DModel + "
          "FlowMatchEulerDiscreteScheduler loop")
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, python {platform.python_version()}, "
          f"device {device}, threads {torch.get_num_threads()}")
    print(f"model: pixart DiT width {args.width}, depth {args.depth}, heads {args.heads}, patch {args.patch}, "
          f"{args.image_size}x{args.image_size}; text: {text_desc}; steps {args.steps}, guidance {args.guidance}; "
          f"repeats {args.repeats}, warmup {args.warmup}; cache for 'on': {args.cache}")

    results = []
    for batch in args.batches:
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
        for row in args.rows:
            d_prec, use_cache, p_prec = ROWS[row]
            stats: dict = {}
            fns = {"ditkit": lambda: ditkit_run(model, encoder, prompts, args, d_prec,
                                                args.cache if use_cache else None, stats),
                   "diffusers": lambda: diffusers_run(transformer, encoder, prompts, args, p_prec, device)}
            images = {}
            samples = time_interleaved(fns, args.repeats, args.warmup, device,
                                       on_sample=lambda r, name, sec, out: images.__setitem__(name, out))
            sec = {k: v / batch for k, v in medians(samples).items()}
            diff = float((images["ditkit"].float() - images["diffusers"].float()).abs().max())
            hits = f"{stats['hits']}/{stats['calls']}" if "calls" in stats else "-"
            res = dict(batch=batch, row=row, ditkit_precision=d_prec, ditkit_cache=args.cache if use_cache else None,
                       diffusers_precision=p_prec, ditkit_s_per_image=sec["ditkit"],
                       diffusers_s_per_image=sec["diffusers"], ratio=sec["ditkit"] / sec["diffusers"],
                       max_abs_image_diff=diff, cache_hits=hits)
            results.append(res)
            print(f"  b{batch:<3d} {row:9s}: ditkit {sec['ditkit']:.4f} s/img, diffusers {sec['diffusers']:.4f} s/img, "
                  f"ratio {res['ratio']:.2f}, max|diff| {diff:.2e}, cache hits {hits}", flush=True)

    print("\n| batch | row | ditkit | diffusers | ditkit s/img | diffusers s/img | ditkit/diffusers "
          "| max abs image diff | cache hits/calls |")
    print("|---:|---|---|---|---:|---:|---:|---:|---:|")
    for r in results:
        dk = r["ditkit_precision"] + (f" + {r['ditkit_cache']}" if r["ditkit_cache"] else "")
        print(f"| {r['batch']} | {r['row']} | {dk} | {r['diffusers_precision']} | {r['ditkit_s_per_image']:.4f} "
              f"| {r['diffusers_s_per_image']:.4f} | {r['ratio']:.2f} | {r['max_abs_image_diff']:.2e} "
              f"| {r['cache_hits']} |")
    print("\nBoth sides start from the same noise (image i: a generator seeded i), so 'off' must match to float "
          "rounding; 'on' and 'bf16 both' show what bf16 and caching change. Target: ditkit/diffusers <= 1.0 "
          "in 'off' and 'on'.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(torch=torch.__version__, diffusers=diffusers.__version__, device=str(device),
                           threads=torch.get_num_threads(), text=args.text, steps=args.steps, guidance=args.guidance,
                           repeats=args.repeats, results=results), f, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
