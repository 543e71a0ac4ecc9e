"""Training speed with and without precomputed text features (data.features) on a folder data set:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/data_features.py --threads 1

Writes a folder of --images shapes-world scenes (PNG + same-name .txt, mostly distinct
captions), runs `ditkit data prepare` on it once (timed), then `ditkit train` in fresh
processes, alternately without and with data.features, --repeats times each, for two model
sizes: "tiny" (width 64, depth 2, 32 px) and "shapes-64" (the shipped architecture: width
256, depth 8, 64 px), fp32, batch --batch, --epochs passes over the data. Reported per
setting (medians): the whole run's wall seconds (process start to exit: imports, loading the
text encoder or the features, indexing the folder, training, the final checkpoint), and the
training loop's steps per second (from log.jsonl's sec_per_step; each step's text encoding
is inside it). Without features each caption is encoded once, the first time a batch meets
it (the encoder's cache), so the difference is largest in the first epoch."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from ditkit.data import make_batch

from common import markdown_table, parser, write_json

MODELS = {
    "tiny": ({"width": 64, "depth": 2, "heads": 2, "patch_size": 8, "stem_channels": 4, "sample_size": 32}, 32),
    "shapes-64": ({"width": 256, "depth": 8, "heads": 4, "patch_size": 8, "stem_channels": 16, "sample_size": 64}, 64),
}


def write_folder(folder: Path, n: int, size: int, seed: int) -> int:
    """n shapes-world scenes as PNG + .txt; returns the number of distinct captions."""
    folder.mkdir(parents=True)
    captions = []
    for start in range(0, n, 64):
        x, caps = make_batch("shapes", seed, start // 64, min(64, n - start), size)
        pixels = ((x + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
        for i, (image, caption) in enumerate(zip(pixels, caps)):
            Image.fromarray(np.ascontiguousarray(image)).save(folder / f"{start + i:05d}.png")
            (folder / f"{start + i:05d}.txt").write_text(caption)
            captions.append(caption)
    return len(set(captions))


def config(path: Path, run: Path, model: str, folder: Path, features: Path | None, steps: int, batch: int,
           seed: int) -> Path:
    arch, size = MODELS[model]
    data = {"kind": "folder", "path": str(folder), "size": size}
    if features is not None:
        data["features"] = str(features)
    path.write_text(yaml.safe_dump({
        "model": {**arch, "text_dim": 384},
        "data": data,
        "train": {"output_dir": str(run), "steps": steps, "batch_size": batch, "lr": 5.0e-4, "warmup_steps": 10,
                  "precision": "fp32", "checkpoint_every": steps, "log_every": 1, "eval_every": 0, "seed": seed,
                  "device": "cpu"},
        "sample": {"size": size},
    }))
    return path


def ditkit(*args: str, threads: int | None) -> float:
    """Run the ditkit CLI in a fresh process; its wall seconds."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ditkit", *args], check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def loop_steps_per_s(run: Path) -> float:
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    per_step = [r["sec_per_step"] for r in rows if "sec_per_step" in r]
    return len(per_step) / sum(per_step)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--models", default="tiny,shapes-64")
    args = p.parse_args()
    steps = args.epochs * args.images // args.batch
    results: dict = {"images": args.images, "batch": args.batch, "steps": steps, "models": {}}
    with tempfile.TemporaryDirectory(prefix="ditkit-data-features-") as tmp:
        tmp = Path(tmp)
        rows = []
        for model in args.models.split(","):
            folder, features = tmp / f"{model}-images", tmp / f"{model}-features"
            distinct = write_folder(folder, args.images, MODELS[model][1], args.seed)
            prepare_s = ditkit("data", "prepare", str(config(tmp / "prep.yaml", tmp / "unused", model, folder, None,
                                                               steps, args.batch, args.seed)),
                               "-o", str(features), threads=args.threads)
            samples: dict[str, dict[str, list[float]]] = {"encoder": {"wall": [], "loop": []},
                                                          "features": {"wall": [], "loop": []}}
            for r in range(args.repeats):
                for name in (("encoder", "features") if r % 2 == 0 else ("features", "encoder")):
                    run = tmp / f"run-{model}-{name}-{r}"
                    cfg = config(tmp / f"{name}.yaml", run, model, folder, features if name == "features" else None,
                                 steps, args.batch, args.seed)
                    samples[name]["wall"].append(ditkit("train", str(cfg), "--no-progress", threads=args.threads))
                    samples[name]["loop"].append(loop_steps_per_s(run))
                    print(f"# {model} {name} round {r}: {samples[name]['wall'][-1]:.1f} s, "
                          f"{samples[name]['loop'][-1]:.2f} steps/s", file=sys.stderr, flush=True)
            med = {name: {k: statistics.median(v) for k, v in s.items()} for name, s in samples.items()}
            results["models"][model] = {"distinct_captions": distinct, "prepare_s": prepare_s, "median": med,
                                        "samples": samples}
            rows.append([model, distinct, prepare_s, med["encoder"]["wall"], med["features"]["wall"],
                         f"{med['encoder']['wall'] / med['features']['wall']:.2f}x", med["encoder"]["loop"],
                         med["features"]["loop"], f"{med['features']['loop'] / med['encoder']['loop']:.2f}x"])
    print(json.dumps(results))
    print(markdown_table(["model", "captions", "prepare s", "run s (encoder)", "run s (features)", "run speedup",
                          "steps/s (encoder)", "steps/s (features)", "loop speedup"], rows))
    write_json(args.json, results)


if __name__ == "__main__":
    main()
