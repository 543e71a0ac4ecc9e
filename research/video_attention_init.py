"""How close is a video model initialised from an image model to that model, with factorized
and with full attention? The measured reason for model.video_attention's default (docs/video.md).

    python research/video_attention_init.py --image-model shapes-64 --batches 4 --threads 2

For each attention kind: the video model of shapes-video's config with the image model's weights
(core.video_model.inflate_image_weights), then (a) the largest difference between its velocity and
the image model's on every frame of a clip, and (b) the flow-matching loss of both on moving-shapes
training batches (seeded, fixed times and noise), beside the image model's own loss on the frames.
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from ditkit.core.checkpoint import load_model, resolve_model
from ditkit.core.encoders import get_text_encoder
from ditkit.core.flow import interpolate
from ditkit.core.video_model import VideoDiT, inflate_image_weights
from ditkit.data.video import make_video_batch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image-model", default="shapes-64")
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    image, cfg = load_model(resolve_model(args.image_model))
    encoder = get_text_encoder(cfg.get("text_encoder", "minilm"))
    models = {}
    for kind in ("factorized", "full"):
        video = VideoDiT(dataclasses.replace(image.config, frames=args.frames, video_attention=kind,
                                             sample_size=args.size)).eval()
        with torch.no_grad():
            inflate_image_weights(video, image.state_dict())
        models[kind] = video
    losses = {"image model per frame": [], "factorized": [], "full": []}
    max_diff = {"factorized": 0.0, "full": 0.0}
    for step in range(args.batches):
        x0, captions = make_video_batch(1234, step, args.batch_size, args.size, args.frames)
        g = torch.Generator().manual_seed(step)
        eps = torch.randn(x0.shape, generator=g)
        t = torch.rand(args.batch_size, generator=g)
        xt = interpolate(x0, eps, t)
        states, mask = encoder.encode(captions)
        b, f = x0.shape[:2]
        with torch.no_grad():
            v_image = image(xt.flatten(0, 1), t.repeat_interleave(f), states.repeat_interleave(f, 0),
                            mask.repeat_interleave(f, 0)).reshape(x0.shape)
            losses["image model per frame"].append(float(((v_image - (eps - x0)) ** 2).mean()))
            for kind, video in models.items():
                v = video(xt, t, states, mask)
                max_diff[kind] = max(max_diff[kind], float((v - v_image).abs().max()))
                losses[kind].append(float(((v - (eps - x0)) ** 2).mean()))
    print(f"| video_attention | max abs(v_video - v_image) | flow loss on {args.batches} x {args.batch_size} clips |")
    print("|---|---:|---:|")
    print(f"| (the image model on each frame) | 0 | {sum(losses['image model per frame']) / args.batches:.4f} |")
    for kind in ("factorized", "full"):
        print(f"| {kind} | {max_diff[kind]:.2e} | {sum(losses[kind]) / args.batches:.4f} |")


if __name__ == "__main__":
    main()
