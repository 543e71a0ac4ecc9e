"""Is bf16 native on this CPU? fp32 against bf16 autocast for a large matmul and for shapes-64's
forward and training step (forward + backward) at batch 16, under ditkit's training autocast.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bf16_probe.py --threads 2

On CPUs without native bf16 (AVX2 only), ditkit.core.precision.training_precision turns bf16 into fp32.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import ditkit
from ditkit.core.precision import bf16_is_fast
from ditkit.training.train import training_autocast

from common import apply_threads


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    apply_threads(args)
    cpu = torch.device("cpu")
    print(f"cpu capability {torch.backends.cpu.get_cpu_capability()}, bf16_is_fast {bf16_is_fast(cpu)}")
    a = torch.randn(1024, 1024)
    pipe = ditkit.load("shapes-64")
    model = pipe.model
    x, t = torch.randn(16, 3, 64, 64), torch.rand(16)
    ctx, mask = pipe.text_encoder.encode(["a red circle to the left of a blue square"] * 16, cpu)

    def forward(precision: str) -> None:
        with torch.no_grad(), training_autocast(precision, cpu):
            model(x, t, ctx, mask)

    def train_step(precision: str) -> None:
        with training_autocast(precision, cpu):
            v = model(x, t, ctx, mask)
        v.float().pow(2).mean().backward()

    rows = {}
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        m = a.to(dtype)
        rows[precision] = {
            "matmul GFLOP/s": 2 * 1024**3 / timed(lambda: m @ m, args.repeats) / 1e9,
            "forward b16 s": timed(lambda: forward(precision), args.repeats),
            "forward+backward b16 s": timed(lambda: train_step(precision), args.repeats),
        }
    print("\n| measured | fp32 | bf16 | bf16 / fp32 time |\n|---|---:|---:|---:|")
    for key in rows["fp32"]:
        f, b = rows["fp32"][key], rows["bf16"][key]
        ratio = f / b if key.startswith("matmul") else b / f
        print(f"| {key} | {f:.3g} | {b:.3g} | {ratio:.1f}x |")


if __name__ == "__main__":
    main()
