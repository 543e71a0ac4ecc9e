"""Did a LoRA teach shapes-64 a new concept without losing the old ones? (docs/lora.md)

Two measurements, each with and without the adapter, on the same prompts and seeds:

(a) the new concept: the shapes world's extra-color prompts (data.shapes.extra_color_prompts:
    single objects and two objects naming an extra color, e.g. "a pink circle", "a pink square
    and a blue triangle"), --per-category prompts of each, --images seeds per prompt, each image
    judged correct or not by ShapesEval's detector and clause rules (the detector then knows the
    extra colors the caption names). Target with the adapter: >= 0.8.
(b) the old world: ShapesEval (ditkit eval shapes) at --eval-per-category prompts per category.
    Target: the adapter's overall within 0.03 of the base's.

    python benchmarks/lora_concept.py --lora shapes-64-lora-pink --threads 1
    python benchmarks/lora_concept.py --lora runs/shapes-64-lora-pink/lora --grid pink.png

Sampling is the model's default (shapes-64: Euler, 25 steps, guidance 4), fp32.
"""

from __future__ import annotations

import time

from common import apply_threads, markdown_table, parser, write_json

import ditkit
from ditkit.data.shapes import extra_color_prompts
from ditkit.evaluation.evaluate import shapes_eval
from ditkit.evaluation.outputs import image_grid
from ditkit.evaluation.shapes_scoring import score_image


def concept_scores(pipe, pairs: list[tuple[str, str]], images: int, seed: int) -> tuple[dict, list]:
    """Fraction of correct images per category and overall (mean over images), and the images."""
    prompts = [p for _, p in pairs]
    result = pipe.generate(prompts, num_images=images, seed=seed)  # image k of prompt j: seed + j * images + k
    per: dict[str, list[bool]] = {}
    for i, image in enumerate(result):
        category, prompt = pairs[i // images]
        per.setdefault(category, []).append(score_image(image, prompt))
    scores = {c: sum(v) / len(v) for c, v in per.items()}
    scores["overall"] = sum(sum(v) for v in per.values()) / sum(len(v) for v in per.values())
    return scores, result


def old_world(pipe, per_category: int, seed: int) -> dict:
    res = shapes_eval(pipe.model, pipe.text_encoder, pipe.sample_config(), per_category=per_category, seed=seed)
    return {"overall": res["overall"], **res["categories"]}


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--model", default="shapes-64")
    p.add_argument("--lora", required=True, help="the adapter: a folder or an embedded adapter name")
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--per-category", type=int, default=10, help="extra-color prompts per category (default 10)")
    p.add_argument("--images", type=int, default=3, help="seeds per extra-color prompt (default 3)")
    p.add_argument("--eval-per-category", type=int, default=50, help="ShapesEval prompts per category (default 50)")
    p.add_argument("--skip-base", action="store_true", help="measure only with the adapter")
    p.add_argument("--grid", help="save the extra-color images as a PNG (a row per prompt: base, then adapter)")
    args = p.parse_args()
    apply_threads(args)

    pipe = ditkit.load(args.model)
    pairs = extra_color_prompts(args.per_category, seed=args.seed)
    runs = [("base", False)] if not args.skip_base else []
    runs.append((f"+ LoRA {args.lora} (scale {args.scale:g})", True))
    rows, out, grids = [], {}, []
    for label, with_lora in runs:
        if with_lora:
            pipe.load_lora(args.lora, args.scale)
        t0 = time.time()
        concept, images = concept_scores(pipe, pairs, args.images, args.seed)
        old = old_world(pipe, args.eval_per_category, args.seed)
        seconds = time.time() - t0
        out[label] = {"concept": concept, "shapes_eval": old, "seconds": seconds}
        grids.append(images)
        rows.append([label, f"{concept['overall']:.3f}", f"{concept.get('single_object', float('nan')):.2f}",
                     f"{concept.get('two_object', float('nan')):.2f}", f"{old['overall']:.3f}",
                     " / ".join(f"{old[c]:.2f}" for c in ("single_object", "two_object", "counting", "position")),
                     f"{seconds:.0f}"])
        print(f"{label}: concept {concept['overall']:.3f}, ShapesEval {old['overall']:.3f} ({seconds:.0f} s)", flush=True)
    n_concept = len(pairs) * args.images
    print()
    print(markdown_table(["model", f"extra-color prompts correct ({n_concept} images)", "single", "two",
                          f"ShapesEval overall ({4 * args.eval_per_category} images)",
                          "single / two / counting / position", "seconds"], rows))
    if len(runs) == 2:
        delta = out[runs[1][0]]["shapes_eval"]["overall"] - out["base"]["shapes_eval"]["overall"]
        print(f"\nShapesEval change with the adapter: {delta:+.3f} (target: within 0.03); "
              f"extra-color prompts with the adapter: {out[runs[1][0]]['concept']['overall']:.3f} (target: >= 0.8)")
        out["shapes_eval_delta"] = delta
    out["settings"] = {"model": args.model, "lora": args.lora, "scale": args.scale, "per_category": args.per_category,
                       "images": args.images, "eval_per_category": args.eval_per_category, "seed": args.seed,
                       "prompts": pairs}
    write_json(args.json, out)
    if args.grid:
        # one row per prompt: the base's images, then the adapter's
        tiles = [im for j in range(len(pairs)) for run in grids for im in run[j * args.images:(j + 1) * args.images]]
        image_grid(tiles, columns=args.images * len(grids)).save(args.grid)
        print(f"wrote {args.grid}")


if __name__ == "__main__":
    main()
