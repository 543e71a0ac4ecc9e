"""Per-call overhead of DiT.forward at small batch on CPU (issue 31, part 4).

    git show HEAD:src/ditkit/core/model.py > /tmp/model_before.py    # the code to compare against
    OMP_NUM_THREADS=2 .venv/bin/python research/torch_overhead.py --baseline /tmp/model_before.py
    OMP_NUM_THREADS=1 .venv/bin/python research/torch_overhead.py --baseline /tmp/model_before.py --threads 1 --tiny

Times DiT.forward (torch.no_grad, fp32, torch.set_num_threads(--threads, default 2)) at batch 2
(one image with CFG) and 32 for two models: "pixart" (DiTConfig(**PIXART), patch 8, width 256,
depth 8, 4 heads, text 16 x 384, 64 x 64 px, the zero-initialised layers drawn N(0, 0.02) as
benchmarks/peer_pipeline.py build_model does) and "shapes-64" (the shipped model). Calls are
interleaved over every (model, batch, code) row; medians in ms per forward. Then profiles batch 2
with torch.profiler: top ops by self CPU time, and ops per forward (top-level = the ops Python
dispatches; with nested = also the ops those call). --baseline PATH loads another core/model.py as
its own module, builds each model there with the same weights, times it interleaved with the
current code and prints max |after - before| of the outputs (0 = bit-identical). --tiny times
width-16 stand-ins of both models (same op graph, negligible arithmetic): the per-call floor.
Text: "pixart" gets all-real tokens (peer_pipeline's RandomText); "shapes-64" gets guidance's
shape, 9 real tokens in the cond half and 2 in the uncond half, padded to 16.

What it found (2-core AVX2 CPU, torch 2.13.0+cpu):

- The per-call floor is small: the tiny stand-ins take 4.2 ms (pixart) and 6.5 ms (shapes-64)
  per batch-2 forward against 42 and 53 ms at full size (2 threads, quiet machine, before the
  change). A batch-2 forward is mostly arithmetic at a poor rate: aten::addmm (62 Linear calls,
  M = 128 rows) is 65% of self CPU time in pixart, 57% in shapes-64; then flash attention (8%),
  GELU-tanh (7%), copy_ (3-4%, mostly addmm filling its output with the bias), add, LayerNorm,
  mul (2-4% each), and in shapes-64 the stem/head convolutions (5%).
- Tried (all bit-identical: max |diff| 0 here, tools/bit_identity.py unchanged): the RoPE
  cos/sin tables and timestep_embedding's frequencies recomputed every call (cached per grid /
  device, computed in the graph while tracing), the bool text mask converted to an additive bias
  by attention in each of the 8 blocks (once per forward on the CPU; 16 aten::where and 24
  indexing ops), six unsqueezes per block for the adaLN vectors (one), and in models with a
  convolutional head one of two copies of the 19-channel head input (unpatchify straight into
  channels-last). Ops per batch-2 forward: pixart 427 -> 371 top-level (2007 -> 1842 with
  nested), shapes-64 604 -> 531 (2519 -> 2299). The tables below measure all four.
- Kept in core/model.py: the cached RoPE tables and frequencies (DiT.rope_table,
  timestep_frequencies, through cached_table) and the one unsqueeze. Not kept, as their share of
  the ~1% is inside the noise and each costs more than it saves in reading: the per-forward mask
  bias (it changes what block_args carries on the CPU only, and a bias of -inf would differ from
  cuDNN's -65504 on CUDA) and the channels-last head copy (a second unpatchify).
- Floor after the change (--tiny --threads 1, median of 200 rounds, ms per forward):

  | model | batch | before | after | after / before |
  |---|---|---|---|---|
  | tiny pixart | 2 | 4.15 | 3.89 | 0.94 |
  | tiny pixart | 32 | 6.28 | 5.99 | 0.95 |
  | tiny shapes-64 | 2 | 6.52 | 6.21 | 0.95 |
  | tiny shapes-64 | 32 | 13.45 | 12.84 | 0.95 |

- Full size: the 0.3-0.5 ms saved is ~1% of a forward, inside this machine's noise (another
  process held one core during the after-change runs, which made 2-thread timings 20x slower and
  meaningless, so the after rows are 1-thread, median of 20 interleaved rounds):

  | model | batch | before ms | after ms | after / before | max abs diff |
  |---|---|---|---|---|---|
  | pixart | 2 | 46.45 | 44.12 | 0.95 | 0 |
  | pixart | 32 | 585.76 | 579.11 | 0.99 | 0 |
  | shapes-64 | 2 | 55.75 | 56.22 | 1.01 | 0 |
  | shapes-64 | 32 | 697.99 | 694.42 | 0.99 | 0 |

  (A repeat at batch 2 with 80 rounds: pixart 46.80 -> 46.62, shapes-64 56.21 -> 56.11.)
- Not in model.py, and larger at batch 32: glibc malloc returns large freed blocks to the OS, so
  each forward page-faults its activations back in: ~90,000 minor faults per batch-32 shapes-64
  forward and ~11,000 per pixart one (0 with MALLOC_MMAP_THRESHOLD_=1000000000
  MALLOC_TRIM_THRESHOLD_=1000000000), worth 8-25% of a batch-32 forward in two paired
  1-thread runs (pixart 630 -> 576 and 621 -> 536 ms, shapes-64 753 -> 707 and 856 -> 642 ms).
- Checked and not applied: skipping an all-True mask in cross-attention is bit-identical on the
  CPU but needs mask.all() (a host sync on CUDA) and saves only the bias add; fusing modulate and
  the gated residuals into addcmul would change rounding under autocast (mixed dtypes promote
  before the multiply); Python-scalar arithmetic (`1 + scale`, `+ eps`) costs an extra
  aten::to per op in torch 2.13 (~2.4 us, ~30 per forward: not worth a workaround).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from types import ModuleType
from typing import Callable

import torch

from ditkit.core import model as current_model
from ditkit.core.checkpoint import load_model, resolve_model
from ditkit.core.config import PIXART, DiTConfig

TEXT_LEN, TEXT_DIM, SIZE = 16, 384, 64


def load_module(path: str) -> ModuleType:
    """Another copy of core/model.py as its own module (it imports only ditkit.core.config)."""
    spec = importlib.util.spec_from_file_location("ditkit_model_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses / typing resolve names through sys.modules
    spec.loader.exec_module(module)
    return module


def pixart_model(module: ModuleType) -> torch.nn.Module:
    """benchmarks/peer_pipeline.py build_model's network (not imported: benchmarks use the public API only)."""
    cfg = DiTConfig(**PIXART, in_channels=3, out_channels=3, patch_size=8, width=256, depth=8, heads=4,
                    mlp_ratio=4.0, text_dim=TEXT_DIM, sample_size=SIZE)
    torch.manual_seed(0)
    model = module.DiT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():  # the zero-initialised layers
                p.normal_(0, 0.02)
    return model.eval()


def shipped_model(module: ModuleType) -> torch.nn.Module:
    model, _ = load_model(resolve_model("shapes-64"))
    if module is current_model:
        return model
    twin = module.DiT(model.config)  # same construction as checkpoint.build_model (channels-last stem)
    twin.load_state_dict(model.state_dict())
    return twin.eval()


def tiny_model(module: ModuleType, shipped: bool) -> torch.nn.Module:
    """The same op graph with negligible arithmetic (width 16, 16 x 16 px, text 4 x 16): its time
    is the per-call floor (dispatch, Python, allocation) of a forward."""
    kw = dict(stem_channels=16, qk_norm=True, positions="rope", cross_norm=True, pooled_text=True) if shipped \
        else dict(PIXART)
    torch.manual_seed(0)
    return module.DiT(DiTConfig(**kw, in_channels=3, out_channels=3, patch_size=8, width=16, depth=8, heads=4,
                                text_dim=16, sample_size=16)).eval()


def tiny_inputs(batch: int, padded: bool) -> tuple[torch.Tensor, ...]:
    mask = torch.ones(batch, 4, dtype=torch.bool)
    if padded:
        mask[batch // 2:, 2:] = False
    g = torch.Generator().manual_seed(batch)
    return torch.randn(batch, 3, 16, 16, generator=g), torch.rand(batch, generator=g), \
        torch.randn(batch, 4, 16, generator=g), mask


def inputs(batch: int, padded: bool) -> tuple[torch.Tensor, ...]:
    """(x, t, context, mask) for a forward at `batch`; padded: cond 9 / uncond 2 real tokens of 16."""
    g = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, 3, SIZE, SIZE, generator=g)
    t = torch.rand(batch, generator=g)
    context = torch.randn(batch, TEXT_LEN, TEXT_DIM, generator=g)
    mask = torch.ones(batch, TEXT_LEN, dtype=torch.bool)
    if padded:
        mask[: batch // 2, 9:] = False
        mask[batch // 2:, 2:] = False
        context = context * mask[..., None]  # padding states are zeros, as engine.velocity pads them
    return x, t, context, mask


def time_interleaved(calls: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median ms per call, the calls run in turn each round (order reversed every other round)."""
    names = list(calls)
    for name in names:  # warm-up: allocator, oneDNN primitives, any table caches
        for _ in range(3):
            calls[name]()
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            start = time.perf_counter()
            calls[name]()
            samples[name].append((time.perf_counter() - start) * 1000)
    return {n: statistics.median(s) for n, s in samples.items()}


def profile(call: Callable[[], object], n: int, top: int) -> tuple[str, float, float]:
    """(table of the top ops by self CPU time, top-level ops per call, all ops per call)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    for _ in range(3):
        call()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(n):
            call()
    events = [e for e in prof.events() if e.name.startswith("aten::")]
    top_level = [e for e in events if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")]
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)
    return table, len(top_level) / n, len(events) / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline", metavar="PATH", help="another core/model.py to compare against (before a change)")
    p.add_argument("--rounds", type=int, default=30, help="interleaved timing rounds (default 30)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batches", default="2,32", help="batch sizes to time, comma-separated (default 2,32)")
    p.add_argument("--top", type=int, default=15, help="profile rows (default 15)")
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--tiny", action="store_true", help="time width-16 stand-ins of both models instead (the floor)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]

    codes = {"after": current_model}
    if args.baseline:
        codes = {"before": load_module(args.baseline), "after": current_model}
    builders = {"pixart": (pixart_model, False), "shapes-64": (shipped_model, True)}
    make_inputs = inputs
    if args.tiny:
        builders = {"tiny pixart": (lambda mod: tiny_model(mod, False), False),
                    "tiny shapes-64": (lambda mod: tiny_model(mod, True), True)}
        make_inputs = tiny_inputs
    models = {(m, c): build(mod) for m, (build, _) in builders.items() for c, mod in codes.items()}

    calls, outputs = {}, {}
    with torch.no_grad():
        for (m, c), model in models.items():
            for b in batches:
                xs = make_inputs(b, builders[m][1])
                outputs[m, c, b] = model(*xs)
                calls[f"{m} b{b} {c}"] = (lambda model=model, xs=xs: model(*xs))
        medians = time_interleaved(calls, args.rounds)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.rounds} interleaved rounds")
    print("| model | batch | " + " | ".join(f"{c} ms" for c in codes) + (" | after / before | max abs diff |"
                                                                          if len(codes) == 2 else " |"))
    print("|---|---|" + "---|" * len(codes) + ("---|---|" if len(codes) == 2 else ""))
    for m in builders:
        for b in batches:
            row = [f"{medians[f'{m} b{b} {c}']:.2f}" for c in codes]
            if len(codes) == 2:
                ratio = medians[f"{m} b{b} after"] / medians[f"{m} b{b} before"]
                diff = (outputs[m, "after", b] - outputs[m, "before", b]).abs().max().item()
                row += [f"{ratio:.2f}", f"{diff:.3g}"]
            print(f"| {m} | {b} | " + " | ".join(row) + " |")

    if args.no_profile:
        return
    with torch.no_grad():
        for (m, c), model in models.items():
            xs = make_inputs(2, builders[m][1])
            table, top_level, total = profile(lambda: model(*xs), 20, args.top)
            print(f"\n## {m}, {c}, batch 2: {top_level:.0f} top-level ops per forward ({total:.0f} with nested)")
            print(table)


if __name__ == "__main__":
    main()
