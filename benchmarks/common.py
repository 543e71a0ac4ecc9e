"""What every benchmark here shares: the common flags, timing in interleaved rounds, and
the printed tables (docs/architecture.md, principle 12: targets live in benchmarks that
print ratio tables measured in one run).

Benchmarks import only ditkit's public API (tests/test_architecture.py checks it); run them
from the repository root with the package installed, e.g. `python benchmarks/speed_quality.py`.
Python puts the script's own folder on sys.path, so `from common import ...` needs no setup.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Callable, Iterable, Mapping, Sequence

import torch


def parser(doc: str, seed: bool = True, json_out: bool = True) -> argparse.ArgumentParser:
    """An ArgumentParser described by the module docstring's first paragraph, with --threads,
    --seed (default 0) and --json PATH."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    if seed:
        p.add_argument("--seed", type=int, default=0, help="prompt / noise seed (default 0)")
    if json_out:
        p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    return p


def apply_threads(args: argparse.Namespace) -> None:
    """torch.set_num_threads(--threads) when given."""
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)


def csv(text: str, kind: type = str) -> list:
    """'1,16' -> [1, 16] with kind=int."""
    return [kind(x) for x in text.split(",") if x.strip()]


def sync(device: torch.device | str | None) -> None:
    """Wait for queued GPU work, so a perf_counter reading covers it."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device | str | None = None, inner: int = 1) -> tuple[float, object]:
    """(seconds per call, the last call's result) over `inner` back-to-back calls."""
    sync(device)
    t0 = time.perf_counter()
    out = None
    for _ in range(inner):
        out = fn()
    sync(device)
    return (time.perf_counter() - t0) / inner, out


def time_interleaved(fns: Mapping[str, Callable[[], object]], repeats: int, warmup: int = 1,
                     device: torch.device | str | None = None, min_sample_s: float = 0.0,
                     on_sample: Callable[[int, str, float, object], None] | None = None) -> dict[str, list[float]]:
    """Seconds per call of each fn, sampled in interleaved rounds (A B, then B A, ...) so that
    background load and drift hit every case alike; report the median (`medians`).

    warmup: untimed calls per fn first. min_sample_s > 0: one sample runs a fn `inner` times
    back to back, inner chosen after the warmup so a sample lasts about that long (short
    calls are too short for one perf_counter reading to mean much).
    on_sample(round, name, seconds, result) is called after every sample (progress lines,
    checking outputs)."""
    inner = {}
    for name, fn in fns.items():
        for _ in range(warmup):
            fn()
        if min_sample_s > 0:
            one, _ = time_call(fn, device)
            inner[name] = max(1, round(min_sample_s / max(one, 1e-6)))
        else:
            inner[name] = 1
    samples: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            sec, out = time_call(fns[name], device, inner[name])
            samples[name].append(sec)
            if on_sample is not None:
                on_sample(r, name, sec, out)
    return samples


def medians(samples: Mapping[str, Sequence[float]]) -> dict[str, float]:
    return {name: statistics.median(s) for name, s in samples.items()}


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]], align: str | None = None) -> str:
    """A markdown table; floats print with 3 decimals. align: one char per column, 'l' or 'r'
    (default: numbers right, text left, judged by the first row)."""
    rows = [list(r) for r in rows]
    if align is None:
        first = rows[0] if rows else [""] * len(headers)
        align = "".join("r" if isinstance(v, (int, float)) and not isinstance(v, bool) else "l" for v in first)
    cell = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def ratio(value: float, reference: float) -> str:
    """'1.46x': how many times faster `value` seconds are than `reference` seconds."""
    return f"{reference / value:.2f}x"


def write_json(path: str | None, data: object) -> None:
    """Write data as indented JSON to path (nothing when path is None)."""
    if path:
        with open(path, "w") as f:
            json.dump(data, f, indent=2)
        print(f"wrote {path}")
