"""torch.compile against eager for shapes-64 sampling (issue 4, item 4):

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/compile_speed.py --threads 2 [--model shapes-64]

Seconds per image at batch 1 and 16 (median of 3, default sampling: Euler 25, CFG 4),
eager first, then compiled (the one-off compile time is reported separately)."""

from __future__ import annotations

import json
import time

import ditkit

from common import apply_threads, markdown_table, medians, parser, ratio, time_interleaved, write_json

PROMPTS = ["a red circle to the left of a blue square", "three green triangles"]


def seconds_per_image(pipe, batch: int, repeats: int, warmup: int) -> float:
    """Median seconds per image of pipe.generate at the model's default sampling."""
    prompts = (PROMPTS * batch)[:batch]
    seed = iter(range(10**6))
    run = lambda: pipe.generate(prompts, seed=next(seed), batch_size=batch)  # noqa: E731
    return medians(time_interleaved({"run": run}, repeats, warmup))["run"] / batch


def main() -> None:
    p = parser(__doc__, seed=False)
    p.add_argument("--model", default="shapes-64", help="embedded model name or model folder (default shapes-64)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    apply_threads(args)
    pipe = ditkit.load(args.model)
    eager = {b: seconds_per_image(pipe, b, args.repeats, warmup=1) for b in (1, 16)}
    t0 = time.perf_counter()
    pipe.compile()
    for batch in (1, 16):
        seconds_per_image(pipe, batch, 1, warmup=0)  # compiles (a graph per batch shape)
    compile_s = time.perf_counter() - t0
    compiled = {b: seconds_per_image(pipe, b, args.repeats, warmup=0) for b in (1, 16)}
    result = {"seconds_per_image": {**{f"eager b{b}": t for b, t in eager.items()},
                                    **{f"compiled b{b}": t for b, t in compiled.items()}},
              "compile_and_first_runs_s": compile_s}
    print(json.dumps(result))
    print(markdown_table(["batch", "eager s/img", "compiled s/img", "speedup"],
                         [[b, eager[b], compiled[b], ratio(compiled[b], eager[b])] for b in (1, 16)], "rrrr"))
    write_json(args.json, result)


if __name__ == "__main__":
    main()
