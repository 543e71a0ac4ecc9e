"""End-to-end seconds per image of ditkit's inference engines against diffusers (issue 31).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/engine_speed.py --threads 2 --json runs/engine_speed.json
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/engine_speed.py --threads 2 --smoke    # checks the script only

The smoke run (2 steps, 1 repeat, batch 1) takes a few minutes, most of it torch.compile;
its numbers mean nothing. The model and the diffusers loop are benchmarks/peer_pipeline.py's: one pixart-configured
ditkit DiT (DiTConfig(**PIXART), width 256, depth 8, 4 heads, patch 8, 64x64 pixels, random
weights with the zero-initialised layers drawn N(0, 0.02)), converted with
ditkit.interop.diffusers.to_diffusers into a PixArtTransformer2DModel, so every row runs
the same network with the same weights. Text: peer_pipeline.RandomText (16 x 384 random
states per prompt, the empty prompt included), encoded inside the timed call on every side.
Euler, 25 steps, CFG 4 (cond + uncond in one forward batch), batch 1 and 16.

Rows, each in fp32, bf16 and int8 where it exists:
- torch:       ditkit's Engine on the torch model (eager); int8 = torch.ao dynamic
               quantization of the Linear layers (the Engine's int8 runner);
- compile:     the same with model.forward under torch.compile (a separate copy; its int8
               copy is compiled too). Compilation happens in the untimed first call;
- onnxruntime: ditkit.interop.runtime.export_for_engine(model, ..., "onnxruntime") through
               the same Engine; int8 = ONNX Runtime's dynamic quantization. No bf16 (ONNX
               Runtime's CPU provider has no bf16 kernels for these ops);
- openvino:    the same graph in OpenVINO; int8 = NNCF weight compression; bf16 only on a
               CPU with native bf16 (openvino_has_bf16);
- diffusers:   peer_pipeline.diffusers_run (PixArt transformer + FlowMatchEulerDiscreteScheduler),
               fp32 and bf16 autocast; diffusers has no int8 path.
torch / compile / diffusers bf16 run only where core.precision.bf16_is_fast (native bf16;
emulated bf16 is tens of times slower than fp32 and would measure the emulation).

Columns: median seconds per image; diffusers fp32 seconds / the row's seconds at the same
batch (> 1: faster than diffusers); the % of the machine's fp32 matmul rate the row reaches
(model GFLOP per image x NFE / seconds / GFLOP/s of a large fp32 matmul measured in the same
run, as benchmarks/model_speed.py measures it; NFE = 2 x steps, CFG's two rows per image);
max |image - ditkit torch fp32 image| at that batch (raw samples, images in [-1, 1]), and the
same on the uint8 images (core.images.to_pil's rounding) in 1/255 steps. Every call starts from the same
noise (image i: a generator seeded i), so fp32 rows differ only by float rounding.

A second table: the shipped shapes-64, ditkit.load("shapes-64", engine=E) for E in torch /
onnxruntime / openvino, pipe.generate on 16 shapes prompts at batch 16 at its default guidance
and --steps steps (25, its default; the smoke run's 2), MiniLM text encoder inside the timed
call, against the target < 0.3 s/image.

Targets (printed as a verdict): the best ditkit engine in fp32 >= 1.5x diffusers fp32 at
batch 1 and >= 1.3x at batch 16, with every ditkit fp32 row's images within 1/255 of torch
fp32. All calls of one batch (and of the shipped table) are timed interleaved (A B ..., then
... B A) and the medians are reported. --threads sets torch.set_num_threads before anything
is built; ONNX Runtime and OpenVINO take torch.get_num_threads() when a graph is compiled.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

import ditkit
from ditkit.core.config import SampleConfig
from ditkit.core.images import to_pil
from ditkit.core.precision import bf16_is_fast, int8_model
from ditkit.data import benchmark_prompts
from ditkit.engine import Engine, GenerationRequest
from ditkit.interop.diffusers import to_diffusers
from ditkit.interop.engines import openvino_has_bf16
from ditkit.interop.runtime import export_for_engine

from common import apply_threads, csv, markdown_table, medians, parser, time_interleaved, write_json
from model_speed import count_flops, matmul_gflops
from peer_pipeline import PROMPTS, RandomText, add_model_args, build_model, diffusers_run

ROWS = ("torch", "compile", "onnxruntime", "openvino", "diffusers")
PRECISIONS = ("fp32", "bf16", "int8")
SPEED_TARGETS = {1: 1.5, 16: 1.3}  # best ditkit fp32 engine / diffusers fp32, per batch
IMAGE_TARGET_255 = 1  # max |uint8 difference| to ditkit torch fp32 for every ditkit fp32 row
SHIPPED_MODEL, SHIPPED_BATCH, SHIPPED_TARGET_S = "shapes-64", 16, 0.3
SHIPPED_ENGINES = ("torch", "onnxruntime", "openvino")


@dataclass
class Case:
    """One (row, precision) at one batch: its call, or why it is not run, and what it measured."""
    row: str
    precision: str
    batch: int
    run: Callable[[], torch.Tensor] | None = None
    skipped: str | None = None  # reason the row does not run here
    first_call_s: float | None = None  # the untimed first call: export, quantization, compilation
    samples: list[float] = field(default_factory=list)
    images: torch.Tensor | None = None  # (N, 3, H, W) in [-1, 1], from the last timed call

    @property
    def name(self) -> str:
        return f"{self.row} {self.precision}"


# ----------------------------------------------------------------------------
# arguments and the machine
# ----------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = parser(__doc__, seed=False)
    p.add_argument("--repeats", type=int, default=3, help="interleaved timed calls per row (default 3)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed calls per row after its first call (which compiles / quantizes) (default 1)")
    p.add_argument("--steps", type=int, default=25, help="Euler steps (default 25)")
    p.add_argument("--guidance", type=float, default=4.0)
    p.add_argument("--batches", default="1,16", help="comma-separated batch sizes (default 1,16)")
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {', '.join(ROWS)}")
    p.add_argument("--precisions", default=",".join(PRECISIONS),
                   help=f"comma-separated subset of {', '.join(PRECISIONS)}")
    p.add_argument("--shipped", default=",".join(SHIPPED_ENGINES),
                   help=f"engines of the shipped-model table ({', '.join(SHIPPED_ENGINES)}; '' skips the table)")
    p.add_argument("--matmul-size", type=int, default=2048, help="square fp32 matmul for the peak rate (default 2048)")
    p.add_argument("--smoke", action="store_true",
                   help="check the script: steps 2, repeats 1, batch 1 (the shipped table keeps batch 16); "
                        "numbers mean nothing")
    add_model_args(p)  # peer_pipeline.build_model's sizes
    args = p.parse_args(argv)
    if args.smoke:
        args.steps, args.repeats, args.batches = 2, 1, "1"
    args.batches = csv(args.batches, int)
    args.rows = csv(args.rows)
    args.precisions = csv(args.precisions)
    args.shipped = csv(args.shipped)
    for given, allowed, what in ((args.rows, ROWS, "row"), (args.precisions, PRECISIONS, "precision"),
                                 (args.shipped, SHIPPED_ENGINES, "shipped engine")):
        bad = [x for x in given if x not in allowed]
        if bad:
            p.error(f"unknown {what} {bad[0]!r}; allowed: {', '.join(allowed)}")
    if args.repeats < 1 or args.warmup < 0 or args.steps < 1 or not args.batches or min(args.batches) < 1:
        p.error("--repeats, --steps and --batches must be >= 1, --warmup >= 0")
    return args


def package_version(name: str) -> str:
    try:
        return importlib.import_module(name).__version__
    except ImportError:
        return "not installed"


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else 'unknown'."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def bf16_capability() -> dict[str, bool]:
    """Native bf16 as torch (oneDNN) and OpenVINO each detect it."""
    try:
        ov = openvino_has_bf16()
    except ValueError:  # openvino not installed: its rows are skipped anyway
        ov = False
    return {"torch": bf16_is_fast("cpu"), "openvino": ov}


def skip_reason(row: str, precision: str, bf16: dict[str, bool]) -> str | None:
    """Why (row, precision) does not run on this machine, or None."""
    if precision == "bf16":
        if row == "onnxruntime":
            return "skipped: not offered (ONNX Runtime's CPU provider has no bf16 kernels)"
        if row == "openvino" and not bf16["openvino"]:
            return "skipped: no native bf16 (OpenVINO lists no BF16 capability)"
        if row in ("torch", "compile", "diffusers") and not bf16["torch"]:
            return "skipped: no native bf16 (bf16_is_fast: emulated, tens of times slower)"
    if row == "diffusers" and precision == "int8":
        return "skipped: diffusers has no int8 path"
    return None


# ----------------------------------------------------------------------------
# the rows
# ----------------------------------------------------------------------------

def compiled_copy(model: torch.nn.Module, precisions: list[str]) -> torch.nn.Module:
    """A copy of the model with forward under torch.compile, and (for int8) its int8 copy
    compiled too. The Engine's int8 runner is core.precision.int8_model(model), cached per
    model: it is made and compiled here, since int8_model makes an eager copy (it drops a
    compiled forward, which would call the fp32 original)."""
    base = copy.deepcopy(model)
    if "int8" in precisions:
        q = int8_model(base)
        q.forward = torch.compile(q.forward)
    base.forward = torch.compile(base.forward)
    if "int8" in precisions and int8_model(base) is not q:
        raise RuntimeError("the int8 copy of the compiled model was not reused from core.precision's cache")
    return base


def make_engines(model: torch.nn.Module, encoder: RandomText, sample: SampleConfig,
                 rows: list[str], precisions: list[str]) -> tuple[dict[str, Engine], dict[str, float]]:
    """An Engine per ditkit row (torch, compile, onnxruntime, openvino) and the seconds each
    took to make (export for the graph engines). A row that cannot be made is left out, with
    the error printed."""
    cfg = {"model": model.config.to_dict(), "sample": sample.__dict__}
    makers = {"torch": lambda: model, "compile": lambda: compiled_copy(model, precisions),
              "onnxruntime": lambda: export_for_engine(model, cfg, "onnxruntime"),
              "openvino": lambda: export_for_engine(model, cfg, "openvino")}
    engines, setup = {}, {}
    for row in rows:
        if row not in makers:
            continue
        t0 = time.perf_counter()
        try:
            engines[row] = Engine(makers[row](), encoder, sample)
        except (ValueError, RuntimeError) as e:  # e.g. an engine package not installed
            print(f"  {row}: not available: {e}", flush=True)
            continue
        setup[row] = time.perf_counter() - t0
    return engines, setup


def ditkit_call(engine: Engine, prompts: list[str], sample: SampleConfig, precision: str) -> Callable[[], torch.Tensor]:
    """One generation of the prompts at batch len(prompts): (N, 3, H, W) in [-1, 1]."""
    request = GenerationRequest.from_sample(prompts, sample, seed=0, precision=precision, batch_size=len(prompts))
    return lambda: engine.generate(request)


def batch_cases(batch: int, args: argparse.Namespace, engines: dict[str, Engine], transformer: torch.nn.Module,
                encoder: RandomText, sample: SampleConfig, bf16: dict[str, bool]) -> list[Case]:
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
    cases = []
    for row in args.rows:
        for precision in args.precisions:
            case = Case(row, precision, batch, skipped=skip_reason(row, precision, bf16))
            if case.skipped is None:
                if row == "diffusers":
                    case.run = lambda p=precision: diffusers_run(transformer, encoder, prompts, args, p,
                                                                 torch.device("cpu"))
                elif row in engines:
                    case.run = ditkit_call(engines[row], prompts, sample, precision)
                else:
                    case.skipped = f"skipped: the {row} engine could not be set up (see above)"
            cases.append(case)
    return cases


def first_calls(cases: list[Case]) -> None:
    """The untimed first call of every runnable case (it exports, quantizes or compiles);
    a case whose first call fails is marked skipped with the error."""
    for case in cases:
        if case.run is None:
            continue
        t0 = time.perf_counter()
        try:
            case.run()
        except Exception as e:  # noqa: BLE001 - one broken row must not lose the others' numbers
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            case.skipped, case.run = f"failed: {type(e).__name__}: {first}", None
            print(f"  b{case.batch} {case.name}: {case.skipped}", flush=True)
            continue
        case.first_call_s = time.perf_counter() - t0
        print(f"  b{case.batch} {case.name}: first call {case.first_call_s:.1f} s", flush=True)


def time_cases(cases: list[Case], repeats: int, warmup: int) -> None:
    runnable = {c.name: c for c in cases if c.run is not None}

    def keep(r: int, name: str, sec: float, out: object) -> None:
        runnable[name].images = out
        print(f"  b{runnable[name].batch} round {r}: {name} {sec:.3f} s", flush=True)

    samples = time_interleaved({n: c.run for n, c in runnable.items()}, repeats, warmup, on_sample=keep)
    for name, s in samples.items():
        runnable[name].samples = s


# ----------------------------------------------------------------------------
# the columns
# ----------------------------------------------------------------------------

def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8, rounded exactly as saved images are (to_pil)."""
    return np.stack([np.asarray(im) for im in to_pil(x)])


def image_diffs(x: torch.Tensor, ref: torch.Tensor) -> tuple[float, int]:
    """(max |x - ref| of the raw samples, max |uint8(x) - uint8(ref)| in 1/255 steps). Raw, not
    clamped: about a third of a random-weight model's values lie outside [-1, 1], where a
    clamped difference would hide any disagreement."""
    unit = float((x.float() - ref.float()).abs().max())
    q = int(np.abs(to_uint8(x).astype(np.int16) - to_uint8(ref).astype(np.int16)).max())
    return unit, q


def forward_gflop(model: torch.nn.Module, encoder: RandomText, args: argparse.Namespace) -> float:
    """GFLOP of one velocity call of one image row (counted at batch 2: CFG's cond + uncond, halved)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, args.image_size, args.image_size, generator=g)
    t = torch.rand(2, generator=g)
    ctx, mask = encoder.encode(["", PROMPTS[0]], torch.device("cpu"))

    def call() -> None:
        with torch.no_grad():
            model(x, t, ctx, mask)

    return count_flops(call) / 2 / 1e9


def row_result(case: Case, ref: torch.Tensor | None, diffusers_s: float | None, gflop_per_image: float) -> dict:
    """The JSON record of one case; the numbers are None where the case did not run. The % of the
    matmul rate is filled in later (add_matmul_pct): the rate is sampled after the last row too."""
    res = dict(row=case.row, precision=case.precision, batch=case.batch, skipped=case.skipped,
               first_call_s=case.first_call_s, samples_s=case.samples, s_per_image=None, vs_diffusers_fp32=None,
               gflop_per_s=None, pct_of_fp32_matmul=None, max_abs_diff=None, max_abs_diff_255=None)
    if not case.samples:
        return res
    s = statistics.median(case.samples) / case.batch
    res.update(s_per_image=s, gflop_per_s=gflop_per_image / s)
    if diffusers_s is not None:
        res["vs_diffusers_fp32"] = diffusers_s / s
    if ref is not None and case.images is not None:
        res["max_abs_diff"], res["max_abs_diff_255"] = image_diffs(case.images, ref)
    return res


def measure_batch(batch: int, args: argparse.Namespace, engines: dict[str, Engine], transformer: torch.nn.Module,
                  encoder: RandomText, sample: SampleConfig, bf16: dict[str, bool],
                  gflop_per_image: float) -> list[dict]:
    print(f"\nbatch {batch}:", flush=True)
    cases = batch_cases(batch, args, engines, transformer, encoder, sample, bf16)
    first_calls(cases)
    time_cases(cases, args.repeats, args.warmup)
    ref = None  # torch fp32 images at this batch: the timed row's, or one untimed call when that row is not run
    torch_fp32 = next((c for c in cases if c.name == "torch fp32" and c.images is not None), None)
    if torch_fp32 is not None:
        ref = torch_fp32.images
    elif "torch" in engines:
        ref = ditkit_call(engines["torch"], [PROMPTS[i % len(PROMPTS)] for i in range(batch)], sample, "fp32")()
    diffusers = next((c for c in cases if c.name == "diffusers fp32" and c.samples), None)
    diffusers_s = statistics.median(diffusers.samples) / batch if diffusers else None
    return [row_result(c, ref, diffusers_s, gflop_per_image) for c in cases]


def add_matmul_pct(results: list[dict], rate: float) -> None:
    """Each timed row's GFLOP/s as a % of the measured fp32 matmul rate (GFLOP/s)."""
    for r in results:
        if r["gflop_per_s"] is not None:
            r["pct_of_fp32_matmul"] = 100 * r["gflop_per_s"] / rate


# ----------------------------------------------------------------------------
# the shipped model
# ----------------------------------------------------------------------------

def shipped_prompts(n: int) -> list[str]:
    """n shapes benchmark prompts spread over the categories (benchmark_prompts gives about n)."""
    prompts = benchmark_prompts("shapes", n, seed=0)
    return [prompts[i % len(prompts)] for i in range(n)]


def measure_shipped(args: argparse.Namespace) -> list[dict]:
    """s/image of ditkit.load(SHIPPED_MODEL, engine=E).generate at batch SHIPPED_BATCH (one image per
    prompt), each engine timed interleaved with the others; max uint8 difference to torch's images."""
    prompts = shipped_prompts(SHIPPED_BATCH)
    print(f"\nshipped {SHIPPED_MODEL}, batch {SHIPPED_BATCH}:", flush=True)
    pipes, load_s, first_s, results, images = {}, {}, {}, [], {}
    for engine in args.shipped:
        t0 = time.perf_counter()
        try:
            pipes[engine] = ditkit.load(SHIPPED_MODEL, engine=engine)
        except ValueError as e:
            results.append(dict(engine=engine, skipped=f"not available: {e}"))
            continue
        load_s[engine] = time.perf_counter() - t0
    calls = {e: (lambda p=p: p.generate(prompts, steps=args.steps, num_images=1, batch_size=SHIPPED_BATCH))
             for e, p in pipes.items()}
    for engine, call in calls.items():  # the first call loads the text encoder
        t0 = time.perf_counter()
        call()
        first_s[engine] = time.perf_counter() - t0
    def keep(r: int, engine: str, sec: float, out: list) -> None:  # PIL images -> (N, H, W, 3) uint8
        images[engine] = np.stack([np.asarray(im) for im in out])

    samples = time_interleaved(calls, args.repeats, args.warmup, on_sample=keep)
    ref = images.get("torch")
    for engine, sec in medians(samples).items():
        s = sec / SHIPPED_BATCH
        diff = int(np.abs(images[engine].astype(np.int16) - ref.astype(np.int16)).max()) if ref is not None else None
        results.append(dict(engine=engine, skipped=None, load_s=load_s[engine], first_call_s=first_s[engine],
                            samples_s=samples[engine], s_per_image=s, meets_target=s < SHIPPED_TARGET_S,
                            max_abs_diff_255_to_torch=diff))
        print(f"  {engine}: {s:.4f} s/image (load {load_s[engine]:.1f} s, first call {first_s[engine]:.1f} s)",
              flush=True)
    return results


# ----------------------------------------------------------------------------
# printing
# ----------------------------------------------------------------------------

def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def engine_table(results: list[dict]) -> str:
    rows = []
    for r in results:
        if r["s_per_image"] is None:
            rows.append([r["batch"], r["row"], r["precision"], r["skipped"] or "not timed", "-", "-", "-", "-"])
            continue
        rows.append([r["batch"], r["row"], r["precision"], f"{r['s_per_image']:.4f}",
                     fmt(r["vs_diffusers_fp32"], ".2f") + ("x" if r["vs_diffusers_fp32"] is not None else ""),
                     f"{r['pct_of_fp32_matmul']:.1f}%", fmt(r["max_abs_diff"], ".2e"), fmt(r["max_abs_diff_255"], "d")])
    return markdown_table(["batch", "row", "precision", "s/image", "diffusers fp32 s / row s", "% of fp32 matmul",
                           "max abs diff to torch fp32", "max abs diff (/255)"], rows, "rllrrrrr")


def shipped_table(results: list[dict]) -> str:
    rows = [[r["engine"], r["skipped"], "-", "-", "-"] if r.get("skipped") else
            [r["engine"], f"{r['s_per_image']:.4f}", "yes" if r["meets_target"] else "no",
             fmt(r["max_abs_diff_255_to_torch"], "d"), f"{r['load_s']:.1f}"] for r in results]
    return markdown_table(["engine", "s/image", f"< {SHIPPED_TARGET_S} s/image", "max abs diff to torch (/255)",
                           "load s"], rows, "lrlrr")


def verdict(results: list[dict], shipped: list[dict], batches: list[int]) -> list[str]:
    """The target lines (PASS / FAIL / not measured) and, as the last item, the overall verdict."""
    lines, ok = [], True
    fp32 = [r for r in results if r["precision"] == "fp32" and r["row"] != "diffusers" and r["s_per_image"]]
    others = [r for r in fp32 if r["row"] != "torch"]  # torch fp32 is the images' reference
    for batch, target in SPEED_TARGETS.items():
        timed = [r for r in fp32 if r["batch"] == batch and r["vs_diffusers_fp32"] is not None]
        if batch not in batches or not timed:
            lines.append(f"- batch {batch}: best ditkit fp32 engine >= {target}x diffusers fp32: not measured")
            ok = False
            continue
        best = max(timed, key=lambda r: r["vs_diffusers_fp32"])
        good = best["vs_diffusers_fp32"] >= target
        ok &= good
        lines.append(f"- batch {batch}: best ditkit fp32 engine {best['row']} at {best['vs_diffusers_fp32']:.2f}x "
                     f"diffusers fp32 (target >= {target}x): {'PASS' if good else 'FAIL'}")
    diffs = [r for r in others if r["max_abs_diff_255"] is not None]
    if diffs:
        worst = max(diffs, key=lambda r: r["max_abs_diff_255"])
        good = worst["max_abs_diff_255"] <= IMAGE_TARGET_255
        ok &= good
        lines.append(f"- images: every ditkit fp32 row within {IMAGE_TARGET_255}/255 of torch fp32 (worst: "
                     f"{worst['row']} at batch {worst['batch']}, {worst['max_abs_diff_255']}/255): "
                     f"{'PASS' if good else 'FAIL'}")
    timed = [r for r in shipped if not r.get("skipped")]
    if timed:
        best = min(timed, key=lambda r: r["s_per_image"])
        good = best["meets_target"]
        ok &= good
        lines.append(f"- shipped {SHIPPED_MODEL} at batch {SHIPPED_BATCH}: best engine {best['engine']} at "
                     f"{best['s_per_image']:.4f} s/image (target < {SHIPPED_TARGET_S}): {'PASS' if good else 'FAIL'}")
    lines.append(f"targets: {'all met' if ok else 'NOT all met'}")
    return lines


# ----------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    apply_threads(args)  # first: ONNX Runtime and OpenVINO read torch.get_num_threads() when they compile
    versions = {name: package_version(name) for name in ("torch", "onnxruntime", "openvino", "nncf", "diffusers")}
    bf16 = bf16_capability()
    print(f"# engine_speed: ditkit's engines vs diffusers{' (SMOKE: numbers mean nothing)' if args.smoke else ''}")
    print(", ".join(f"{k} {v}" for k, v in versions.items()) + f", threads {torch.get_num_threads()}")
    print(f"CPU {cpu_name()}; native bf16: torch {bf16['torch']}, openvino {bf16['openvino']}")
    print(f"model: pixart DiT width {args.width}, depth {args.depth}, heads {args.heads}, patch {args.patch}, "
          f"{args.image_size}x{args.image_size}; text: random {args.text_len} x {args.text_dim}; Euler {args.steps} "
          f"steps, CFG {args.guidance}; repeats {args.repeats}, warmup {args.warmup}")

    # The matmul rate is sampled before and after the rows; every row uses the median of all samples.
    mm_samples = matmul_gflops(args.matmul_size, "fp32", 3, torch.device("cpu"))
    model = build_model(args)
    transformer = to_diffusers(model)
    encoder = RandomText(args.text_len, args.text_dim)
    sample = SampleConfig(sampler="euler", steps=args.steps, guidance=args.guidance, size=args.image_size)
    gflop_per_image = forward_gflop(model, encoder, args) * 2 * args.steps  # NFE = 2 x steps (CFG)
    print(f"model GFLOP per image ({2 * args.steps} velocity rows): {gflop_per_image:.2f}")
    engines, setup = make_engines(model, encoder, sample, args.rows, args.precisions)
    print("engine setup (export / copy): " + ", ".join(f"{k} {v:.1f} s" for k, v in setup.items()), flush=True)

    results = [r for batch in args.batches
               for r in measure_batch(batch, args, engines, transformer, encoder, sample, bf16, gflop_per_image)]
    mm_samples += matmul_gflops(args.matmul_size, "fp32", 3, torch.device("cpu"))
    rate = statistics.median(mm_samples)
    add_matmul_pct(results, rate)
    shipped = measure_shipped(args) if args.shipped else []

    print(f"\nfp32 matmul {args.matmul_size}^3: {rate:.1f} GFLOP/s (median of {len(mm_samples)} samples, before and "
          f"after the rows); model {gflop_per_image:.2f} GFLOP per image\n")
    print(engine_table(results))
    print("\n(% of fp32 matmul: the model's fp32 FLOP count per image over the row's time, for int8 rows too; "
          "diffs: raw samples and uint8 images against ditkit torch fp32 at the same batch)")
    if shipped:
        print(f"\nshipped {SHIPPED_MODEL} (ditkit.load(..., engine=E), {args.steps} steps, its default guidance, batch "
              f"{SHIPPED_BATCH}, MiniLM text):\n")
        print(shipped_table(shipped))
    lines = verdict(results, shipped, args.batches)
    print("\n" + "\n".join(lines))
    if args.smoke:
        print("\n(--smoke: 2 steps, 1 repeat, batch 1: do not quote these numbers)")
    write_json(args.json, dict(versions=versions, threads=torch.get_num_threads(), cpu=cpu_name(), native_bf16=bf16,
                               smoke=args.smoke, steps=args.steps, guidance=args.guidance, repeats=args.repeats,
                               warmup=args.warmup, batches=args.batches,
                               sizes=dict(width=args.width, depth=args.depth, heads=args.heads, patch=args.patch,
                                          image_size=args.image_size, text_len=args.text_len, text_dim=args.text_dim),
                               matmul_size=args.matmul_size, matmul_gflops_samples=mm_samples, matmul_gflops=rate,
                               gflop_per_image=gflop_per_image, engine_setup_s=setup, rows=results,
                               shipped=shipped, verdict=lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
