"""The default text encoder: the real MiniLM shipped in a package, loaded with no network."""

from __future__ import annotations

import socket
import warnings
from pathlib import Path

import pytest
import torch

from ditkit.core.encoders import TextEncoder, get_text_encoder, resolve_text_encoder_path

LEFT = "a red circle to the left of a blue square"
RIGHT = "a red circle to the right of a blue square"


@pytest.fixture(scope="module")
def offline():
    """A MiniLM encoder loaded while every socket connection fails; records the attempts."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args[1:] or kwargs)
        raise OSError("network is unreachable (blocked by the test)")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket.socket, "connect_ex", refuse)
        mp.setattr(socket, "create_connection", refuse)
        mp.setattr(socket, "getaddrinfo", refuse)
        encoder = TextEncoder("minilm")
        states, mask = encoder.encode([LEFT, RIGHT])
    return encoder, attempts, (states, mask)


def test_default_encoder_loads_with_the_network_unreachable(offline):
    encoder, attempts, (states, mask) = offline
    assert attempts == []
    assert encoder.dim == 384
    assert torch.isfinite(states).all() and mask.all()


def test_word_order_reaches_the_states(offline):
    encoder, _, (states, mask) = offline
    assert states.shape[1] == mask.shape[1] and mask[0].sum() == mask[1].sum()
    diff = (states[0] - states[1]).abs().amax(-1)  # per token
    assert diff.max() > 0.1
    # the encoder is bidirectional: context changes tokens other than "left"/"right" too
    assert (diff > 1e-3).sum() > 2


def test_states_shape_and_mask(offline):
    encoder = offline[0]
    states, mask = encoder.encode(["a circle", LEFT, "three small green triangles"])
    assert states.dtype == torch.float32 and mask.dtype == torch.bool
    assert states.shape == (3, int(mask.sum(1).max()), 384) and mask.shape == states.shape[:2]
    lengths = mask.sum(1)
    assert lengths[0] < lengths[2] < lengths[1]
    for i, n in enumerate(lengths.tolist()):
        assert mask[i, :n].all() and not mask[i, n:].any()
        assert torch.count_nonzero(states[i, n:]) == 0
        assert (states[i, :n].abs().amax(-1) > 0).all()
    one, one_mask = encoder.encode("a circle")
    assert one.shape == (1, int(lengths[0]), 384)
    torch.testing.assert_close(one[0], states[0, : int(lengths[0])], rtol=0, atol=0)


def test_empty_prompt_has_real_tokens(offline):
    """The unconditional prompt still has special tokens, so cross-attention is never fully masked."""
    states, mask = offline[0].encode([""])
    assert mask.sum() >= 1 and torch.isfinite(states).all()


def test_cache_returns_identical_tensors_without_recomputing(offline, monkeypatch):
    encoder = offline[0]
    prompts = ["two purple squares and a yellow circle", "a big orange triangle"]
    first = encoder.encode(prompts)
    calls = []
    original = encoder._encode_uncached
    monkeypatch.setattr(encoder, "_encode_uncached", lambda ps: calls.append(ps) or original(ps))
    second = encoder.encode(list(reversed(prompts)))
    assert calls == []
    assert torch.equal(second[0][0], first[0][1]) and torch.equal(second[0][1], first[0][0])
    again = encoder.encode(prompts)
    assert calls == []
    assert torch.equal(again[0], first[0]) and torch.equal(again[1], first[1])
    # whitespace is normalised before the cache lookup
    assert torch.equal(encoder.encode(["  a big orange triangle "])[0][0],
                       first[0][1][: int(first[1][1].sum())])
    assert calls == []


def test_states_do_not_depend_on_the_batch_they_were_encoded_in(offline):
    """A caption's states are the same bits whichever batch first encodes it (a resumed training
    run meets its captions in other batches than the run it continues). Padded batches changed
    them by ~1e-6, so this compares with torch.equal, not a tolerance."""
    encoder = offline[0]
    prompt = "a red circle"
    others = (["a very long prompt " * 5], ["two small blue squares above a green triangle", "a cat"], [])
    seen = []
    for batch in others:
        encoder.cache.clear()
        states, mask = encoder.encode(batch + [prompt] + batch)
        i = len(batch)
        seen.append(states[i, : int(mask[i].sum())])
    assert all(torch.equal(s, seen[-1]) for s in seen)
    assert torch.equal(encoder._encode_uncached([prompt, *others[0]])[0], seen[-1])


def test_overlong_prompt_is_truncated_with_a_warning(offline):
    encoder = offline[0]
    prompt = " ".join(f"word{i % 17}" for i in range(300))
    with pytest.warns(UserWarning, match="truncated"):
        states, mask = encoder.encode([prompt, "a circle"])
    assert states.shape[1] == encoder.max_length == 64
    assert mask[0].all()
    # a short prompt warns about nothing
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encoder.encode(["a short new prompt"])


def test_nonexistent_local_folder_raises(tmp_path):
    with pytest.raises(ValueError, match="neither 'minilm' nor a local folder"):
        TextEncoder(str(tmp_path / "no-such-model"))
    with pytest.raises(ValueError, match="local folder"):
        get_text_encoder("sentence-transformers/all-MiniLM-L6-v2")


def test_folder_without_config_raises(tmp_path):
    with pytest.raises(ValueError, match="config.json"):
        resolve_text_encoder_path(str(tmp_path))


def test_shared_encoder_is_reused():
    assert get_text_encoder("minilm") is get_text_encoder(None)


# ----------------------------------------------------------------------------
# safetensors only: a folder of pickled weights is refused before anything is unpickled
# ----------------------------------------------------------------------------

PICKLED = r"holds only pickled weights \(pytorch_model.bin\); convert it to safetensors"


@pytest.fixture
def pickled_encoder_folder(tmp_path):
    """MiniLM's config and tokenizer beside a pytorch_model.bin (and no safetensors)."""
    import shutil

    src = Path(resolve_text_encoder_path("minilm"))
    folder = tmp_path / "pickled-minilm"
    folder.mkdir()
    for f in src.iterdir():
        if f.is_file() and f.suffix != ".safetensors":
            shutil.copy(f, folder / f.name)
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x02not really a pickle")
    return folder


def test_text_encoder_folder_with_only_pickled_weights_is_refused(pickled_encoder_folder):
    with pytest.raises(ValueError, match=PICKLED):
        TextEncoder(str(pickled_encoder_folder))
    with pytest.raises(ValueError, match=PICKLED):
        get_text_encoder(str(pickled_encoder_folder))


def test_minilm_dir_with_only_pickled_weights_is_refused(pickled_encoder_folder, monkeypatch):
    monkeypatch.setenv("DITKIT_MINILM_DIR", str(pickled_encoder_folder))
    with pytest.raises(ValueError, match=PICKLED) as e:
        get_text_encoder("minilm")
    assert "DITKIT_MINILM_DIR" in str(e.value)


def test_model_naming_a_pickled_text_encoder_is_one_cli_line(pickled_encoder_folder, tiny_model_dir, tmp_path, capsys):
    import json
    import shutil

    from ditkit.cli.main import main

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    cfg = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**cfg, "text_encoder": str(pickled_encoder_folder)}))
    out = tmp_path / "x.png"
    code = main(["generate", "a red circle", "--model", str(model), "-o", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "pytorch_model.bin" in err[0] and "convert it to safetensors" in err[0], err
    assert not out.exists()
