"""How a model gets ShapesEval's counting prompts wrong: for each counting prompt ("three red
circles"), the number of detected objects of the named color and shape against the asked
number, and whether the other detections have the right color but the wrong shape (a shape
drawn badly), the right shape but the wrong color, or neither. A model that cannot count
spreads the detected numbers; one that draws the right number of blobs but malformed ones
shows right-color-wrong-shape detections instead.

    OMP_NUM_THREADS=2 .venv/bin/python research/counting_errors.py --model shapes-64 --num 50 --threads 2
"""

from __future__ import annotations

import collections
import json

from position_errors import category_images  # research/ is on sys.path when run as a script

from ditkit.data import shapes
from ditkit.evaluation.shapes_detector import detect


def tally(images, captions) -> dict:
    """Asked x found counts and the kinds of stray detections, over counting prompts."""
    confusion: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    strays = collections.Counter()
    correct = 0
    for image, caption in zip(images, captions):
        (clause,) = shapes.parse_caption(caption)["clauses"]
        dets = detect(image)
        found = sum(1 for d in dets if d.color == clause["color"] and d.shape == clause["shape"])
        confusion[str(clause["count"])][str(found)] += 1
        correct += found == clause["count"] and len(dets) == found
        for d in dets:
            if d.color == clause["color"] and d.shape == clause["shape"]:
                continue
            strays["right_color_wrong_shape" if d.color == clause["color"] else
                   "right_shape_wrong_color" if d.shape == clause["shape"] else "other"] += 1
    return {"prompts": len(captions), "exact_and_nothing_else": correct,
            "asked_to_found": {k: dict(sorted(v.items())) for k, v in sorted(confusion.items())},
            "stray_detections": dict(strays)}


def main() -> None:
    args, captions, images = category_images(__doc__, "counting")
    print(json.dumps({"model": args.model, **tally(images, captions)}))


if __name__ == "__main__":
    main()
