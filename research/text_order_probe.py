"""Does the text encoder tell the DiT which clause a word belongs to? A least-squares linear
probe on the token state of each color word of ShapesEval's position captions ("a red circle
to the left of a blue square") predicts whether the word is in the first or the second
clause. Two splits: a random quarter of the color tokens held out (colors seen in fitting),
and each color held out in turn (the probe must generalise to an unseen color).

A second probe asks what the DiT needs for layout: on the horizontal captions, is this color's
object the one on the left? That is the conjunction of the clause and the relation word
("red ... to the left of ..." and "... to the right of ... red" both put red on the left), so
it reads whether the encoder binds the relation to each object in the token state itself,
where a cross-attention key (a linear map of one token state) could use it.

    .venv/bin/python research/text_order_probe.py
"""

from __future__ import annotations

import json

import numpy as np

from ditkit.data import shapes
from ditkit.core.encoders import get_text_encoder


def probe_accuracy(x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray) -> float:
    """Fit sign(w . [x, 1]) to y in {0, 1} by least squares on `train`; accuracy on `test`."""
    design = np.c_[x[train], np.ones(int(train.sum()))]
    w = np.linalg.lstsq(design, 2.0 * y[train] - 1.0, rcond=None)[0]
    pred = (np.c_[x[test], np.ones(int(test.sum()))] @ w) > 0
    return float((pred == y[test].astype(bool)).mean())


def main() -> None:
    encoder = get_text_encoder()
    captions = shapes.all_captions("position")
    states, _ = encoder.encode(captions)
    colors = set(shapes.PALETTE)
    feats, clause, color, left = [], [], [], []
    for i, caption in enumerate(captions):
        tokens = encoder.tokenizer.convert_ids_to_tokens(encoder.tokenizer(caption)["input_ids"])
        at = [j for j, tok in enumerate(tokens) if tok in colors]
        if len(at) != 2:  # a color split into word pieces: skip the caption
            continue
        for k, j in enumerate(at):
            feats.append(states[i, j].float().numpy())
            clause.append(k)
            color.append(tokens[j])
            relation = shapes.parse_caption(caption)["relation"]
            left.append({"to the left of": 1 - k, "to the right of": k}.get(relation, -1))
    x, y, color, left = np.stack(feats), np.array(clause), np.array(color), np.array(left)
    test = np.zeros(len(y), dtype=bool)
    test[np.random.default_rng(0).permutation(len(y))[: len(y) // 4]] = True
    row = {"tokens": int(len(y)), "random_quarter_held_out": round(probe_accuracy(x, y, ~test, test), 3),
           "color_held_out": {c: round(probe_accuracy(x, y, color != c, color == c), 3) for c in sorted(set(color))}}
    horizontal = left >= 0
    row["left_object_random_quarter_held_out"] = round(probe_accuracy(x, left, horizontal & ~test, horizontal & test), 3)
    print(json.dumps(row))


if __name__ == "__main__":
    main()
