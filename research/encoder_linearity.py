"""Layer linearity of a real pretrained text encoder (Razzhigaev et al., ACL 2024) on real
English: the shipped all-MiniLM-L6-v2 by default, on sentences of Python's own
documentation (pydoc_data.topics ships with every CPython, so nothing is downloaded).

    python research/encoder_linearity.py --sentences 2000

Prints one row per layer transition: linearity, linearity with the residual removed,
block influence and update norm ratio, and the token count (the least-squares fit
needs many more tokens than features, 384 for MiniLM, or every score drifts to 1).
"""

from __future__ import annotations

import argparse
import json
import re

import torch

from ditkit.analysis.linearity import analyze_hf_encoder


def documentation_sentences(limit: int) -> list[str]:
    from pydoc_data.topics import topics

    text = " ".join(topics[k] for k in sorted(topics))
    text = re.sub(r"\s+", " ", text)
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text)]
    # prose only: sentences of 8-60 words, mostly letters (no code listings or tables)
    keep = [s for s in sentences if 8 <= len(s.split()) <= 60 and sum(c.isalpha() or c == " " for c in s) > 0.85 * len(s)]
    return keep[:limit]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--encoder", default=None, help="local Hugging Face folder (default: the shipped MiniLM)")
    p.add_argument("--sentences", type=int, default=2000)
    p.add_argument("--threads", type=int)
    p.add_argument("--json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sentences = documentation_sentences(args.sentences)
    r = analyze_hf_encoder(args.encoder, sentences)
    print(f"{len(sentences)} sentences, {r['tokens']} tokens\n")
    print("| transition | linearity | residual removed | influence | norm ratio |")
    print("|---|---|---|---|---|")
    for i in range(r["blocks"]):
        name = "embeddings -> layer 1" if i == 0 else f"layer {i} -> layer {i + 1}"
        print(f"| {name} | {r['linearity'][i]:.3f} | {r['linearity_residual_removed'][i]:.3f} | "
              f"{r['influence'][i]:.3f} | {r['norm_ratio'][i]:.3f} |")
    n = r["blocks"]
    print(f"| mean | {sum(r['linearity']) / n:.3f} | {sum(r['linearity_residual_removed']) / n:.3f} | | |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)


if __name__ == "__main__":
    main()
