"""ditkit's DiT against diffusers' PixArtTransformer2DModel: latency, training step, matmul efficiency.

    python benchmarks/model_speed.py                 # the real measurement (a few minutes on 2 cores)
    python benchmarks/model_speed.py --quick         # smoke run: depth 2, small batches, 2 repeats; numbers mean nothing
    python benchmarks/model_speed.py --threads 2 --json docs/model_speed.json

Both models get the same width, depth, heads, patch size, token count and text
length, random weights, built locally (nothing is downloaded). Two ditkit
configurations are measured against the same PixArt:

- "pixart":   model.PIXART: exactly PixArt's architecture (fixed sin-cos table, no
              cross-attention norm, no pooled text, no stem, no QK norm), the one
              ditkit.interop.diffusers converts both ways. Same FLOPs, so any gap is the
              implementation's.
- "plain":    stem_channels=0, qk_norm=False, softmax attention: the ditkit
              configuration that maps onto PixArt (patch embedding, adaLN-single
              blocks, linear head). It still differs in small ways: 2D RoPE
              instead of a fixed sin-cos table, a LayerNorm before
              cross-attention, and a pooled-text projection.
- "embedded": the embedded model's configuration (stem_channels=16,
              qk_norm=True), for context.

Rows: inference forward (no_grad) at batch 1 and 16, and a training step
(forward + backward + AdamW step) at batch 32, each in fp32 and bf16 autocast.
The two models are timed interleaved (A B, then B A, ...) and the medians are
reported, so background load and drift hit both alike. Each row also reports
the fraction of the measured matmul rate that the model reaches: model FLOPs
(counted with torch.utils.flop_counter.FlopCounterMode, forward or
forward+backward) per second divided by the GFLOP/s of a large square matmul in
the same precision, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from contextlib import nullcontext
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from ditkit.core.model import PIXART, DiT, DiTConfig, count_parameters

from common import apply_threads, medians, time_call, time_interleaved

PRECISIONS = ("fp32", "bf16")
aten = torch.ops.aten

# FlopCounterMode counts the CUDA SDPA kernels but not the CPU flash kernel;
# attention is a few percent of the FLOPs here, but count it anyway. FlopCounterMode
# passes shapes for tensor arguments (and out_shape) to these.
def _sdpa_cpu_flop(q, k, v, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(q, k, v)


def _sdpa_cpu_backward_flop(grad_out, q, k, v, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, q, k, v)


SDPA_CPU_FLOPS = {
    aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flop,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward_flop,
}


# ----------------------------------------------------------------------------
# models
# ----------------------------------------------------------------------------

def ditkit_config(args: argparse.Namespace, kind: str) -> DiTConfig:
    common = dict(in_channels=3, out_channels=3, patch_size=args.patch, width=args.width, depth=args.depth,
                  heads=args.heads, mlp_ratio=4.0, text_dim=args.text_dim, attention="softmax",
                  sample_size=args.image_size)
    if kind == "pixart":
        return DiTConfig(**{**PIXART, **common})
    if kind == "plain":
        return DiTConfig(stem_channels=0, qk_norm=False, **common)
    if kind == "embedded":
        return DiTConfig(stem_channels=16, qk_norm=True, **common)
    raise ValueError(f"unknown ditkit configuration {kind!r}; allowed: pixart, plain, embedded")


def build_pixart(args: argparse.Namespace) -> torch.nn.Module:
    """PixArt-alpha with the same shape as ditkit's DiT, random weights, built from a config.

    out_channels = in_channels (no learned sigma), no resolution/aspect micro-conditions,
    cross-attention at model width after the caption projection from text_dim.
    sample_size is in pixels here (no VAE): PatchEmbed's grid is sample_size / patch_size.
    """
    from diffusers import PixArtTransformer2DModel

    return PixArtTransformer2DModel(
        num_attention_heads=args.heads,
        attention_head_dim=args.width // args.heads,
        in_channels=3,
        out_channels=3,
        num_layers=args.depth,
        dropout=0.0,
        cross_attention_dim=args.width,
        attention_bias=True,
        sample_size=args.image_size,
        patch_size=args.patch,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
        use_additional_conditions=False,
        caption_channels=args.text_dim,
        attention_type="default",
    )


def call_ditkit(model, x, t, ctx, mask):
    return model(x, t, ctx, mask)


def call_pixart(model, x, t, ctx, mask):
    # diffusers' timesteps are in [0, 1000]; the mask is 1 = keep, as a float.
    return model(x, encoder_hidden_states=ctx, timestep=t * 1000.0, encoder_attention_mask=mask.to(x.dtype),
                 return_dict=False)[0]


def make_inputs(args: argparse.Namespace, batch: int, device: torch.device, seed: int = 0):
    """Noisy images, flow times, text states and a padding mask with realistic varying prompt lengths."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(batch, 3, args.image_size, args.image_size, generator=g)
    eps = torch.randn(batch, 3, args.image_size, args.image_size, generator=g)
    t = torch.rand(batch, generator=g)
    ctx = torch.randn(batch, args.text_len, args.text_dim, generator=g)
    lengths = torch.randint(max(1, args.text_len // 2), args.text_len + 1, (batch,), generator=g)
    mask = torch.arange(args.text_len)[None] < lengths[:, None]
    return tuple(v.to(device) for v in (x0, eps, t, ctx, mask))


def autocast(precision: str, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


def forward_fn(model, call, inputs, precision: str, device: torch.device) -> Callable[[], None]:
    x0, eps, t, ctx, mask = inputs
    xt = (1 - t[:, None, None, None]) * x0 + t[:, None, None, None] * eps

    def run() -> None:
        with torch.no_grad(), autocast(precision, device):
            call(model, xt, t, ctx, mask)

    return run


def train_fn(model, call, opt, inputs, precision: str, device: torch.device,
             cast=None) -> Callable[[], None]:
    """One rectified-flow training step: x_t = (1-t) x0 + t eps, target v = eps - x0, AdamW.
    `cast(precision, device)` is the autocast context each library trains under:
    ditkit's trainer adds the 'math' attention kernel under bf16 on CPU
    (ditkit.training.train.training_autocast); diffusers trains under plain autocast."""
    x0, eps, t, ctx, mask = inputs
    autocast_ = cast or autocast

    def run() -> None:
        tt = t[:, None, None, None]
        xt = (1 - tt) * x0 + tt * eps
        with autocast_(precision, device):
            v = call(model, xt, t, ctx, mask)
        loss = F.mse_loss(v.float(), eps - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return run


# ----------------------------------------------------------------------------
# timing
# ----------------------------------------------------------------------------

def matmul_gflops(n: int, precision: str, repeats: int, device: torch.device) -> list[float]:
    """GFLOP/s samples of an n x n x n matmul (2 n^3 FLOPs) in the given precision."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device, dtype)
    b = torch.randn(n, n, generator=g).to(device, dtype)
    for _ in range(2):
        a @ b
    one, _ = time_call(lambda: a @ b, device)
    inner = max(1, round(0.2 / max(one, 1e-6)))
    return [2 * n**3 / time_call(lambda: a @ b, device, inner)[0] / 1e9 for _ in range(repeats)]


def count_flops(fn: Callable[[], None]) -> int:
    with FlopCounterMode(display=False, custom_mapping=SDPA_CPU_FLOPS) as counter:
        fn()
    return counter.get_total_flops()


# ----------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke run with tiny settings (depth 2, batches 1,4 and train 8, 2 repeats, short samples, "
                        "512 matmul); explicit options still win")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--repeats", type=int, default=None, help="interleaved rounds per row (default 15)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls per model before each row (default 3)")
    p.add_argument("--min-sample-ms", type=float, default=None,
                   help="each timed sample repeats a call until it lasts about this long (default 200)")
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--depth", type=int, default=None, help="default 8")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--patch", type=int, default=8)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--text-len", type=int, default=16)
    p.add_argument("--text-dim", type=int, default=384)
    p.add_argument("--infer-batches", default=None, help="comma-separated inference batch sizes (default 1,16)")
    p.add_argument("--train-batch", type=int, default=None, help="default 32")
    p.add_argument("--precisions", default="fp32,bf16", help="comma-separated subset of fp32,bf16")
    p.add_argument("--configs", default="pixart,plain,embedded",
                   help="comma-separated ditkit configurations: pixart, plain, embedded")
    p.add_argument("--matmul-size", type=int, default=None, help="square matmul size for the peak rate (default 2048)")
    p.add_argument("--profile", action="store_true",
                   help="also print the top operators of a forward at the largest inference batch, per precision")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = p.parse_args(argv)
    defaults = dict(repeats=15, warmup=3, min_sample_ms=200.0, depth=8, infer_batches="1,16", train_batch=32,
                    matmul_size=2048)
    if args.quick:
        defaults.update(repeats=2, warmup=1, min_sample_ms=10.0, depth=2, infer_batches="1,4", train_batch=8,
                        matmul_size=512)
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.min_sample_s = args.min_sample_ms / 1000
    args.infer_batches = [int(b) for b in args.infer_batches.split(",") if b]
    args.precisions = [s for s in args.precisions.split(",") if s]
    args.configs = [s for s in args.configs.split(",") if s]
    for s in args.precisions:
        if s not in PRECISIONS:
            p.error(f"unknown precision {s!r}; allowed: {', '.join(PRECISIONS)}")
    for s in args.configs:
        if s not in ("pixart", "plain", "embedded"):
            p.error(f"unknown configuration {s!r}; allowed: pixart, plain, embedded")
    if args.image_size % args.patch:
        p.error(f"--image-size {args.image_size} must be a multiple of --patch {args.patch}")
    return args


def profile_forward(models: dict[str, tuple[torch.nn.Module, Callable]], args, device, precision: str) -> None:
    from torch.profiler import ProfilerActivity, profile

    batch = max(args.infer_batches)
    inputs = make_inputs(args, batch, device)
    for name, (model, call) in models.items():
        model.eval()
        fn = forward_fn(model, call, inputs, precision, device)
        for _ in range(3):
            fn()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(5):
                fn()
        print(f"\n### profile: {name}, forward batch {batch}, {precision} (5 calls)\n")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def main(argv=None) -> int:
    args = parse_args(argv)
    apply_threads(args)
    device = torch.device(args.device)
    torch.manual_seed(0)
    import diffusers

    print(f"# model_speed: ditkit DiT vs diffusers PixArtTransformer2DModel{' (QUICK: not a measurement)' if args.quick else ''}")
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, python {platform.python_version()}, "
          f"device {device}, threads {torch.get_num_threads()}")
    print(f"sizes: width {args.width}, depth {args.depth}, heads {args.heads}, patch {args.patch}, "
          f"image {args.image_size}x{args.image_size} -> {(args.image_size // args.patch) ** 2} tokens, "
          f"text {args.text_len} x {args.text_dim}; repeats {args.repeats}, warmup {args.warmup}")

    # Peak matmul rate, measured before and after the model rows; the median of all samples is used.
    mm_samples = {p: matmul_gflops(args.matmul_size, p, max(3, args.repeats // 3), device) for p in args.precisions}

    pixart = build_pixart(args).to(device)
    dit = {kind: DiT(ditkit_config(args, kind)).to(device) for kind in args.configs}
    params = {f"ditkit ({kind})": count_parameters(m) for kind, m in dit.items()}
    params["diffusers PixArt"] = count_parameters(pixart)
    print("\nparameters: " + ", ".join(f"{k} {v:,}" for k, v in params.items()))

    rows = []
    p_opt = torch.optim.AdamW(pixart.parameters(), lr=1e-4)  # shared by both row sets: same PixArt
    for kind in args.configs:
        model = dit[kind]
        d_opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        cases = [("forward", b) for b in args.infer_batches] + [("train step", args.train_batch)]
        for what, batch in cases:
            inputs = make_inputs(args, batch, device)
            for precision in args.precisions:
                if what == "forward":
                    model.eval(), pixart.eval()
                    fa = forward_fn(model, call_ditkit, inputs, precision, device)
                    fb = forward_fn(pixart, call_pixart, inputs, precision, device)
                else:
                    model.train(), pixart.train()
                    from ditkit.training.train import training_autocast as ditkit_train_autocast

                    fa = train_fn(model, call_ditkit, d_opt, inputs, precision, device, ditkit_train_autocast)
                    fb = train_fn(pixart, call_pixart, p_opt, inputs, precision, device)
                # FLOPs are the same in both precisions; count them in the one being timed anyway (cheap).
                flops = {"ditkit": count_flops(fa), "diffusers": count_flops(fb)}
                sec = medians(time_interleaved({"ditkit": fa, "diffusers": fb}, args.repeats, args.warmup,
                                               device, args.min_sample_s))
                row = dict(config=kind, what=what, batch=batch, precision=precision,
                           ditkit_ms=sec["ditkit"] * 1e3, diffusers_ms=sec["diffusers"] * 1e3,
                           ratio=sec["ditkit"] / sec["diffusers"],
                           ditkit_gflop=flops["ditkit"] / 1e9, diffusers_gflop=flops["diffusers"] / 1e9)
                rows.append(row)
                print(f"  {kind:8s} {what:10s} b{batch:<3d} {precision}: ditkit {row['ditkit_ms']:8.2f} ms, "
                      f"diffusers {row['diffusers_ms']:8.2f} ms, ratio {row['ratio']:.2f}", flush=True)

    for p in args.precisions:
        mm_samples[p] += matmul_gflops(args.matmul_size, p, max(3, args.repeats // 3), device)
    mm = {p: statistics.median(s) for p, s in mm_samples.items()}
    for row in rows:
        rate = mm[row["precision"]] * 1e9
        row["ditkit_frac"] = row["ditkit_gflop"] * 1e9 / (row["ditkit_ms"] / 1e3) / rate
        row["diffusers_frac"] = row["diffusers_gflop"] * 1e9 / (row["diffusers_ms"] / 1e3) / rate

    print(f"\nmatmul {args.matmul_size}^3 rate (median of {len(next(iter(mm_samples.values())))} samples, "
          "before and after the rows): " + ", ".join(f"{p} {v:,.0f} GFLOP/s" for p, v in mm.items()))
    print(f"\nditkit configurations: pixart = model.PIXART (PixArt's architecture exactly); "
          f"plain = stem_channels 0, qk_norm off (RoPE, cross-attention norm, pooled text); "
          f"embedded = stem_channels 16, qk_norm on. FLOPs: forward, or forward+backward for the train step.\n")
    print("| ditkit config | row | batch | precision | ditkit ms | diffusers ms | ditkit/diffusers "
          "| ditkit GFLOP | diffusers GFLOP | ditkit % of matmul | diffusers % of matmul |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['config']} | {r['what']} | {r['batch']} | {r['precision']} | {r['ditkit_ms']:.2f} "
              f"| {r['diffusers_ms']:.2f} | {r['ratio']:.2f} | {r['ditkit_gflop']:.3f} | {r['diffusers_gflop']:.3f} "
              f"| {100 * r['ditkit_frac']:.1f}% | {100 * r['diffusers_frac']:.1f}% |")
    if args.quick:
        print("\n(--quick: few repeats under whatever else is running; do not quote these numbers)")

    if args.profile:
        models = {f"ditkit ({k})": (m, call_ditkit) for k, m in dit.items()}
        models["diffusers PixArt"] = (pixart, call_pixart)
        for precision in args.precisions:
            profile_forward(models, args, device, precision)

    if args.json:
        out = dict(torch=torch.__version__, diffusers=diffusers.__version__, device=str(device),
                   threads=torch.get_num_threads(), quick=args.quick, repeats=args.repeats,
                   sizes=dict(width=args.width, depth=args.depth, heads=args.heads, patch=args.patch,
                              image_size=args.image_size, text_len=args.text_len, text_dim=args.text_dim),
                   matmul_size=args.matmul_size, matmul_gflops=mm, parameters=params, rows=rows)
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
