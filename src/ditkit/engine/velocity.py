"""Prompts -> a guided velocity closure: the one place that encodes a batch of prompts and
the empty prompt and builds the CFG/APG velocity of core.guidance around a model.

Every caller that samples from text (the engine's generate, the editing tasks, analysis,
pruning recovery, distillation, reflow) takes its velocity from here."""

from __future__ import annotations

from typing import Sequence

import torch

from ditkit.core.guidance import APG, Context, Velocity, guided_velocity


def encode_with_empty(encoder, prompts: Sequence[str], device: torch.device) -> tuple[Context, Context]:
    """(cond, uncond) text contexts for a batch: the prompts' states and masks, and the empty
    prompt's repeated once per prompt (the unconditional branch of CFG)."""
    cond = encoder.encode(list(prompts), device)
    uncond = encoder.encode([""] * len(prompts), device)
    return cond, uncond


TEXT_LENGTH_QUANTUM = 16  # fixed-shape text states come in lengths of 16-token steps


def fixed_text_length(encoder, prompts: Sequence[str]) -> int:
    """The text length a fixed-shape batch of these prompts is padded to: their longest token
    count rounded up to a multiple of TEXT_LENGTH_QUANTUM (at most the encoder's max length).

    Why buckets and not always the max length: cross-attention over 64 keys where a shapes
    prompt has 5-15 tokens made a served batch ~30% slower than the same batch unpadded
    (benchmarks/serve_load.py). A bucket depends only on the prompts, so a server that batches
    only jobs of one bucket (serve.params) keeps an image independent of its batch-mates."""
    longest = max(encoder.encode([p])[0].shape[1] for p in prompts)
    q = TEXT_LENGTH_QUANTUM
    return min(encoder.max_length, -(-longest // q) * q)


def fixed_length_context(encoder, prompts: Sequence[str], device: torch.device,
                         length: int | None = None) -> Context:
    """The prompts' (states, mask) padded with masked zeros to `length` tokens (default: the
    encoder's max length), so the context's shape does not depend on which prompts share the
    batch (GenerationRequest.fixed_shape)."""
    states, mask = encoder.encode(list(prompts), device)
    length = encoder.max_length if length is None else length
    if states.shape[1] > length:
        raise ValueError(f"a prompt of {states.shape[1]} tokens does not fit the fixed text length {length}")
    extra = length - states.shape[1]
    if extra > 0:
        states = torch.cat([states, states.new_zeros(states.shape[0], extra, states.shape[2])], 1)
        mask = torch.cat([mask, mask.new_zeros(mask.shape[0], extra)], 1)
    return states, mask


def prompt_velocity(model: torch.nn.Module, encoder, prompts: Sequence[str], guidance: float,
                    apg: APG | None = None, interval: tuple[float, float] = (0.0, 1.0),
                    precision: str = "fp32", context: Context | None = None) -> Velocity:
    """The guided velocity v(x: (B, C, H, W), t) for B prompts (or a given text context of
    batch B, e.g. a mix of two prompts' states), CFG at `guidance` (APG if given) inside
    `interval`. `model` is any callable with the DiT's signature (a cache or task wrapper)."""
    device = next(iter(model.parameters())).device if hasattr(model, "parameters") else None
    if context is None:
        cond, uncond = encode_with_empty(encoder, prompts, device)
    else:
        cond, uncond = context, encoder.encode([""] * context[0].shape[0], device)
    return guided_velocity(model, cond, uncond, guidance, apg, interval, precision)
