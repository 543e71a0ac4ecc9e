"""GenerationRequest.fixed_shape: an image does not depend on the other prompts of its request
(within one text-length bucket), which is what lets the server batch jobs (serve.params)."""

import dataclasses

import pytest
import torch

import ditkit
from ditkit.engine.velocity import TEXT_LENGTH_QUANTUM, fixed_length_context, fixed_text_length

SHORT = "a red circle"
SAME_BUCKET = "two big blue squares above a small green triangle"
LONG = "a red circle " * 8


@pytest.fixture(scope="module")
def pipe():
    return ditkit.load("shapes-64")


def sample(pipe, prompts, seeds, batch_size=4):
    request = dataclasses.replace(pipe.request(prompts, seeds, steps=2, batch_size=batch_size), fixed_shape=True)
    return pipe.engine.generate(request)


def test_text_length_buckets(pipe):
    enc = pipe.engine.encoder
    assert fixed_text_length(enc, [SHORT]) == fixed_text_length(enc, [SAME_BUCKET]) == TEXT_LENGTH_QUANTUM
    assert fixed_text_length(enc, [LONG]) == 2 * TEXT_LENGTH_QUANTUM
    assert fixed_text_length(enc, [SHORT, LONG]) == 2 * TEXT_LENGTH_QUANTUM
    assert fixed_text_length(enc, ["word " * 500]) == enc.max_length  # truncated prompts stop at the limit
    states, mask = fixed_length_context(enc, [SHORT], "cpu", 16)
    assert states.shape[1] == 16 and mask.sum() == enc.encode([SHORT])[1].sum()
    with pytest.raises(ValueError, match="fixed text length 16"):
        fixed_length_context(enc, [LONG], "cpu", 16)


def test_image_is_identical_alone_or_with_other_prompts_of_its_bucket(pipe):
    alone = sample(pipe, [SHORT], [5])
    batched = sample(pipe, [SAME_BUCKET, SHORT, SAME_BUCKET], [11, 5, 12])
    assert torch.equal(alone[0], batched[1])
    # A longer bucket pads further: the result may then move in the last bits, which is why the
    # server never batches jobs of different buckets; it stays the same image up to rounding.
    mixed = sample(pipe, [LONG, SHORT], [1, 5])
    assert torch.allclose(alone[0], mixed[1], atol=1e-3)
