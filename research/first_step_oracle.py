"""Is the first sampling step where position and counting are lost? An oracle test.

At t = 1 the input is pure noise, so the best x0 prediction for a caption is the mean of
all images the caption allows, E[x0 | caption]. The shapes world can draw that mean
exactly (the generator's own scenes for the prompt). This script samples ShapesEval's
prompts twice from the same noise, with the model's default settings: once as is, and
once with the first step's conditional and unconditional x0 predictions replaced by those
means (CFG applied to them as usual). Every later step is the model's own.

`--oracle-until T` uses the oracle for every step with t >= T (a model that has learnt the
caption's mean layout at high noise and ignores x_t there), to see how far the first steps
can carry. If the oracle lifts a category, a model that predicts E[x0 | caption] well at t = 1 would
lift it too, which is what `train.pure_noise_fraction` trains for. If it does not, the
layout is lost later, and training at t = 1 cannot fix it.

    OMP_NUM_THREADS=2 .venv/bin/python research/first_step_oracle.py --model shapes-64 --threads 2
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

import ditkit
from ditkit.data import shapes
from ditkit.evaluation.shapes_scoring import evaluate
from ditkit.core.guidance import guided_velocity
from ditkit.core.images import to_pil
from ditkit.engine import initial_noise
from ditkit.core.sampling import get_sampler, pure_noise_prior, timesteps


def caption_means(captions: list[str], scenes: int, seed: int, size: int) -> torch.Tensor:
    """E[x0 | caption] per caption, from `scenes` generator draws ("" = the training mix)."""
    rng = np.random.default_rng(seed)
    return torch.stack([shapes.reference_images(c, rng, scenes, size).mean(0) for c in captions])


def sample(pipe, prompts: list[str], seeds: list[int], oracle_scenes: int, until: float, batch: int, seed: int) -> list:
    model, encoder, cfg = pipe.model.eval(), pipe.text_encoder, pipe.sample_config()
    sampler, ts = get_sampler(cfg.sampler), timesteps(cfg.steps, cfg.shift)
    noise = initial_noise(len(prompts), (model.config.in_channels, cfg.size, cfg.size), seeds, "cpu")
    uncond_mean = caption_means([""], oracle_scenes, seed, cfg.size)[0] if oracle_scenes else None
    images = []
    for i in range(0, len(prompts), batch):
        chunk = prompts[i:i + batch]
        cond, uncond = encoder.encode(chunk, "cpu"), encoder.encode([""] * len(chunk), "cpu")
        velocity = guided_velocity(model, cond, uncond, cfg.guidance)
        if oracle_scenes:
            means = caption_means(chunk, oracle_scenes, seed + 1 + i, cfg.size)
            # CFG is linear, so guiding the two oracle means gives the guided x0 directly; the
            # steps at t >= until then follow the straight path to it, as with a learnt prior.
            x0_guided = uncond_mean + cfg.guidance * (means - uncond_mean)
            velocity = pure_noise_prior(velocity, until, prior=lambda x, t, x0=x0_guided: x - x0)
        with torch.no_grad():
            images.extend(to_pil(sampler(velocity, noise[i:i + len(chunk)], ts)))
    return images


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="shapes-64")
    p.add_argument("--per-category", type=int, default=50)
    p.add_argument("--categories", default="counting,position")
    p.add_argument("--oracle-scenes", type=int, default=256, help="generator scenes per caption mean")
    p.add_argument("--oracle-until", type=float, default=1.0,
                   help="use the oracle for every step with t >= this (1.0: the first step only)")
    p.add_argument("--skip-model", action="store_true", help="only the oracle run")
    p.add_argument("--seed", type=int, default=0, help="ShapesEval's seed: prompts and noise as `ditkit eval shapes`")
    p.add_argument("--batch", type=int, default=25)
    p.add_argument("--threads", type=int)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    wanted = args.categories.split(",")
    pairs = shapes.benchmark_prompts(args.per_category, args.seed)
    chosen = [(i, c, p) for i, (c, p) in enumerate(pairs) if c in wanted]
    seeds = [args.seed + i for i, _, _ in chosen]  # image i of ShapesEval starts from seed + i
    prompts, categories = [p for _, _, p in chosen], [c for _, c, _ in chosen]
    pipe = ditkit.load(args.model)
    result = {"model": args.model, "per_category": args.per_category, "oracle_scenes": args.oracle_scenes,
              "oracle_until": args.oracle_until}
    runs = (("model", 0),) * (not args.skip_model) + (("oracle", args.oracle_scenes),)
    for name, scenes in runs:
        images = sample(pipe, prompts, seeds, scenes, args.oracle_until, args.batch, args.seed)
        result[name] = evaluate(images, prompts, categories)["categories"]
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
