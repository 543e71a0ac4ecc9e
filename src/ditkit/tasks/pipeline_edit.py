"""The editing tasks at the image level (vary, edit, inpaint, outpaint, fuse, upscale): PIL
in, PIL out, as plain functions over an engine (ditkit.engine.Engine: the model, its text
encoder and default settings). Sizes, masks and paste-back are handled here; the sampling
is ditkit.tasks.editing. Pipeline's methods of the same names call these."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from ditkit.core.conditions import inpaint_condition, upscale_condition
from ditkit.core.config import SampleConfig
from ditkit.core.images import (ImageLike, check_strength, load_image, load_mask, mask_tensor, paste_kept, to_pil,
                                to_tensor, working_size)
from ditkit.core.limits import MAX_NUM_IMAGES, MAX_RESAMPLE, check_int, check_number
from ditkit.core.sampling import Callback, get_sampler
from ditkit.core.sampling import sample as integrate
from ditkit.engine.generate import Engine, check_finite, initial_noise
from ditkit.tasks import editing as tasks

INPAINT_METHODS = ("auto", "blend", "model")
FUSE_MODES = ("pixels", "noise")
FUSE_CONDITIONS = ("join", "mix")
MAX_UPSCALE_INPUT = 512

# A companion lookup: suffix ("inpaint") -> the engine of the embedded model <name>-<suffix>, or None.
Companion = Callable[[str], "Engine | None"]


def _int_amount(name: str, value) -> int:
    """Pixels to add on one side (outpaint); the upper bound (at most doubling) needs the image."""
    return check_int(name, value, 0)


def check_resample(resample) -> int:
    """RePaint rounds per step: each costs a full step, hence the bound (limits.MAX_RESAMPLE)."""
    return check_int("resample", resample, 0, MAX_RESAMPLE)


def task_settings(engine: Engine, kind: str, steps=None, guidance=None, sampler=None, shift=None,
                  size=None) -> SampleConfig:
    """Check that the engine's model can do a task ("text", "inpaint", "upscale": by its
    condition channels) and return its sampling settings with the overrides."""
    want = {"text": 0, "inpaint": 4, "upscale": 3}[kind]
    have = engine.model.config.cond_channels
    if have != want:
        names = {0: "a text-to-image model (e.g. shapes-64)", 4: "an inpainting model (e.g. shapes-64-inpaint)",
                 3: "an upscaling model (e.g. shapes-upscale)"}
        raise ValueError(f"this task needs {names[want]}; {engine.source} is {names.get(have, 'another kind of model')}")
    return engine.sample_config(steps=steps, guidance=guidance, sampler=sampler, size=size, shift=shift)


def _noise(engine: Engine, n: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return initial_noise(n, shape, seed, engine.device)


# -- variations and prompt edits -------------------------------------------------------------
@torch.no_grad()
def vary(engine: Engine, image: ImageLike, prompt: str = "", strength: float = 0.6, num_images: int = 1,
         seed: int = 0, steps: int | None = None, guidance: float | None = None, sampler: str | None = None,
         shift: float | None = None, precision: str = "fp32", callback: Callback | None = None) -> list[Image.Image]:
    """SDEdit variations of an image (with a prompt: text+image fusion, "add a red circle").
    strength 0 keeps the image, 1 ignores it. Output at the model's size.

    callback (here and in every task below): after every sampler step, the sampler's StepInfo
    {step, steps, t, x, x0} (core.sampling) with step counted over the whole call (1 .. steps:
    a task of several phases, such as edit's inversion and re-generation, numbers them all);
    x0 is the denoised estimate, a live preview. It never changes the result; raising in it
    stops the task between two steps."""
    s = check_strength(strength)
    num_images = check_int("num_images", num_images, 1, MAX_NUM_IMAGES)
    sample = task_settings(engine, "text", steps, guidance, sampler, shift)
    im = load_image(image)
    work = working_size(im.size, sample.size)
    x0 = to_tensor(im, work).to(engine.device).repeat(num_images, 1, 1, 1)
    eps = _noise(engine, num_images, tuple(x0.shape[1:]), seed)
    vel = tasks.text_velocity(engine.runner(precision), engine.encoder, [prompt] * num_images, sample, precision=precision)
    return to_pil(check_finite(tasks.sdedit(vel, x0, eps, s, sample, callback), engine.source))


@torch.no_grad()
def edit(engine: Engine, image: ImageLike, source_prompt: str, prompt: str, strength: float = 1.0,
         steps: int | None = None, guidance: float | None = None, shift: float | None = None,
         precision: str = "fp32", callback: Callback | None = None) -> Image.Image:
    """Invert the image under source_prompt (the ODE from the image towards noise, to
    t = strength) and re-generate it under prompt from there."""
    t_max = check_strength(strength)
    if t_max == 0:
        raise ValueError("strength must be > 0 for an edit (0 would return the image unchanged)")
    sample = task_settings(engine, "text", steps, guidance, "euler", shift)
    im = load_image(image)
    x0 = to_tensor(im, working_size(im.size, sample.size)).to(engine.device)
    source = tasks.text_velocity(engine.runner(precision), engine.encoder, [source_prompt], sample, guidance=1.0,
                                 precision=precision)
    ts = tasks.partial_schedule(sample, t_max)
    inverting, regenerating = tasks.phase_callbacks(callback, len(ts) - 1, len(ts) - 1)
    noise = tasks.invert(source, x0, len(ts) - 1, float(ts[0]), inverting)
    target = tasks.text_velocity(engine.runner(precision), engine.encoder, [prompt], sample, precision=precision)
    return to_pil(check_finite(get_sampler(sample.sampler)(target, noise, ts, regenerating), engine.source))[0]


# -- inpainting and outpainting ---------------------------------------------------------------
def _inpaint_tensor(engine: Engine, x0: torch.Tensor, fill: torch.Tensor, prompt: str, method: str, seed: int,
                    steps, guidance, sampler, shift, resample: int, precision: str, window: int | None,
                    companion: Companion | None, callback: Callback | None = None) -> torch.Tensor:
    if method not in INPAINT_METHODS:
        raise ValueError(f"unknown inpainting method {method!r}; allowed: {', '.join(INPAINT_METHODS)}")
    resample = check_resample(resample)
    use = engine
    if method in ("auto", "model") and engine.model.config.cond_channels != 4:
        use = companion("inpaint") if companion is not None else None
        if use is None:
            if method == "model":
                raise ValueError(f"no inpainting model for {engine.source} (an embedded "
                                 f"'{Path(engine.source).name}-inpaint'); use method 'blend' or load one")
            use = engine
    use_model = use.model.config.cond_channels == 4
    if method == "blend" and engine.model.config.cond_channels != 0:
        raise ValueError("method 'blend' needs a text-to-image model; this is a conditioned model")
    sample = use.sample_config(steps=steps, guidance=guidance, sampler=sampler, shift=shift)
    eps = _noise(engine, 1, tuple(x0.shape[1:]), seed)
    if use_model:
        vel = tasks.text_velocity(use.runner(precision), use.encoder, [prompt], sample, precision=precision,
                                  cond=inpaint_condition(x0, fill), window=window)
        if resample:
            x = tasks.blend_inpaint(vel, x0, eps, fill, sample, resample, torch.Generator().manual_seed(seed), callback)
        else:
            x = sample_with(vel, eps, sample, callback)
    else:
        vel = tasks.text_velocity(use.runner(precision), use.encoder, [prompt], sample, precision=precision, window=window)
        x = tasks.blend_inpaint(vel, x0, eps, fill, sample, resample, torch.Generator().manual_seed(seed), callback)
    return check_finite(x, use.source)


@torch.no_grad()
def inpaint(engine: Engine, image: ImageLike, mask: ImageLike, prompt: str = "", method: str = "auto",
            seed: int = 0, steps: int | None = None, guidance: float | None = None, sampler: str | None = None,
            shift: float | None = None, resample: int = 0, precision: str = "fp32",
            companion: Companion | None = None, callback: Callback | None = None) -> Image.Image:
    """Fill the mask's white region. method: 'model' (the inpainting model: this one, or the
    one `companion("inpaint")` returns), 'blend' (training-free, any model), 'auto' (model if
    there is one). resample: RePaint resampling rounds per step. The output has the input's
    size and its pixels outside the mask are the input's, byte for byte."""
    check_resample(resample)  # before reading any image
    im = load_image(image)
    fill_full = load_mask(mask, im.size)
    if fill_full.all():
        warnings.warn("the mask covers the whole image: this is plain generation from the prompt")
    side = engine.defaults.size
    work = working_size(im.size, side)
    x0 = to_tensor(im, work).to(engine.device)
    fill = mask_tensor(fill_full, work).to(engine.device)
    x = _inpaint_tensor(engine, x0, fill, prompt, method, seed, steps, guidance, sampler, shift, resample, precision,
                        None, companion, callback)
    return paste_kept(to_pil(x)[0], im, fill_full)


@torch.no_grad()
def outpaint(engine: Engine, image: ImageLike, prompt: str = "", left: int = 0, right: int = 0, top: int = 0,
             bottom: int = 0, method: str = "auto", seed: int = 0, steps: int | None = None,
             guidance: float | None = None, sampler: str | None = None, shift: float | None = None,
             resample: int = 0, precision: str = "fp32", companion: Companion | None = None,
             callback: Callback | None = None) -> Image.Image:
    """Extend the canvas by the given pixels on each side (the new canvas at most twice the
    image's width and height) and fill the new area. Canvases larger than the model's
    size are sampled in overlapping windows. The original pixels are kept byte for byte."""
    check_resample(resample)
    im = load_image(image)
    w, h = im.size
    l, r, t, b = check_outpaint(im.size, left, right, top, bottom)
    side, p = engine.defaults.size, engine.model.config.patch_size
    f = side / max(w, h)  # the original's longer side becomes the model's size
    ow, oh = max(1, round(w * f)), max(1, round(h * f))
    ox, oy = round(l * f), round(t * f)
    cw = math.ceil((ox + ow + r * f) / p) * p
    ch = math.ceil((oy + oh + b * f) / p) * p
    canvas = torch.zeros(1, 3, ch, cw)
    canvas[..., oy:oy + oh, ox:ox + ow] = to_tensor(im, (ow, oh))
    fill = torch.ones(1, 1, ch, cw)
    fill[..., oy:oy + oh, ox:ox + ow] = 0
    x = _inpaint_tensor(engine, canvas.to(engine.device), fill.to(engine.device), prompt, method, seed, steps,
                        guidance, sampler, shift, resample, precision, side, companion, callback)
    gen = to_pil(x)[0]
    # Back to the requested canvas: crop the rounding margin, scale to full resolution.
    gen = gen.crop((0, 0, round((w + l + r) * f), round((h + t + b) * f))).resize((w + l + r, h + t + b), Image.BICUBIC)
    fill_full = np.ones((h + t + b, w + l + r), bool)
    fill_full[t:t + h, l:l + w] = False
    original = Image.new("RGB", gen.size, (255, 255, 255))
    original.paste(im, (l, t))
    return paste_kept(gen, original, fill_full)


def check_outpaint(size: tuple[int, int], left, right, top, bottom) -> tuple[int, int, int, int]:
    """The pixels outpaint adds to an image of PIL size (W, H): integers >= 0, at least one > 0,
    the canvas at most twice the image's width and height. Returns (left, right, top, bottom)."""
    l, r, t, b = (_int_amount(n, v) for n, v in (("left", left), ("right", right), ("top", top), ("bottom", bottom)))
    w, h = size
    if l + r + t + b == 0:
        raise ValueError("outpaint needs at least one of left/right/top/bottom > 0")
    if l + r > w or t + b > h:
        raise ValueError(f"outpaint may at most double the image: left+right <= {w} and top+bottom <= {h}, "
                         f"got {l + r} and {t + b}")
    return l, r, t, b


# -- fusion ----------------------------------------------------------------------------------
@torch.no_grad()
def fuse(engine: Engine, image_a: ImageLike, image_b: ImageLike, alpha: float = 0.5, prompt: str | None = None,
         prompt_a: str = "", prompt_b: str = "", mode: str = "pixels", condition: str = "join",
         strength: float | None = None, seed: int = 0, steps: int | None = None, guidance: float | None = None,
         shift: float | None = None, precision: str = "fp32", callback: Callback | None = None) -> Image.Image:
    """One image carrying content of both A and B (alpha 0 is A, 1 is B), regenerated under
    `prompt`, or else under both prompts: condition "join" (default) puts the token states
    of prompt_a and prompt_b side by side, "mix" interpolates them with alpha.

    mode "pixels" (default): multiply-blend the images (tasks.multiply_blend: on light
    backgrounds both contents survive) and re-generate from t = strength (default 0.5),
    SDEdit-style. mode "noise": invert A and B under their prompts to t = strength
    (default 1, pure noise), interpolate the noises spherically and regenerate; it
    measured far lower on the shapes world (docs/editing.md)."""
    a = check_number("alpha", alpha, 0.0, 1.0)
    if mode not in FUSE_MODES:
        raise ValueError(f"unknown fusion mode {mode!r}; allowed: {', '.join(FUSE_MODES)}")
    t_max = check_strength(strength if strength is not None else (0.5 if mode == "pixels" else 1.0))
    if t_max == 0:
        raise ValueError("strength must be > 0 for fusion")
    sample = task_settings(engine, "text", steps, guidance, "euler", shift)
    enc, device = engine.encoder, engine.device
    xs = []
    for img, what in ((image_a, "image A"), (image_b, "image B")):
        im = load_image(img, what)
        xs.append(to_tensor(im, working_size(im.size, sample.size, what)).to(device))
    if condition not in FUSE_CONDITIONS:
        raise ValueError(f"unknown fusion condition {condition!r}; allowed: {', '.join(FUSE_CONDITIONS)}")
    if prompt is not None:
        context = enc.encode([prompt], device)
    elif condition == "join":
        context = tasks.join_contexts(enc.encode([prompt_a], device), enc.encode([prompt_b], device))
    else:
        context = tasks.mix_contexts(enc.encode([prompt_a], device), enc.encode([prompt_b], device), a)
    vel = tasks.text_velocity(engine.runner(precision), enc, [], sample, precision=precision, context=context)
    if mode == "pixels":
        mixed = tasks.multiply_blend(xs[0], xs[1], a)
        x = tasks.sdedit(vel, mixed, _noise(engine, 1, tuple(mixed.shape[1:]), seed), t_max, sample, callback)
        return to_pil(check_finite(x, engine.source))[0]
    ts = tasks.partial_schedule(sample, t_max)
    phases = tasks.phase_callbacks(callback, len(ts) - 1, len(ts) - 1, len(ts) - 1)  # invert A, invert B, sample
    noises = [tasks.invert(tasks.text_velocity(engine.runner(precision), enc, [pr], sample, guidance=1.0, precision=precision),
                           x, len(ts) - 1, float(ts[0]), phase)
              for x, pr, phase in zip(xs, (prompt_a, prompt_b), phases)]
    noise = tasks.slerp(noises[0], noises[1], a)
    return to_pil(check_finite(get_sampler(sample.sampler)(vel, noise, ts, phases[2]), engine.source))[0]


# -- upscaling -------------------------------------------------------------------------------
@torch.no_grad()
def upscale(engine: Engine, image: ImageLike, prompt: str = "", seed: int = 0, steps: int | None = None,
            guidance: float | None = None, sampler: str | None = None, precision: str = "fp32",
            callback: Callback | None = None) -> Image.Image:
    """2x super-resolution with an upscaling model (e.g. shapes-upscale, trained 32->64 and
    64->128). Inputs with sides not a multiple of 4 are resized to one (with a warning);
    inputs over 512 px are refused. Outputs larger than 2x the training size are sampled
    in overlapping windows."""
    sample = task_settings(engine, "upscale", steps, guidance, sampler)
    im = load_image(image)
    w, h = im.size
    if max(w, h) > MAX_UPSCALE_INPUT:
        raise ValueError(f"image of {w}x{h} is too large to upscale (at most {MAX_UPSCALE_INPUT} px a side); "
                         "downscale it first")
    q = engine.model.config.patch_size // 2
    ww, hh = max(q, int(w / q + 0.5) * q), max(q, int(h / q + 0.5) * q)
    if (ww, hh) != (w, h):
        warnings.warn(f"image of {w}x{h} resized to {ww}x{hh} (sides must be multiples of {q})")
    low = to_tensor(im, (ww, hh)).to(engine.device)
    cond = upscale_condition(low)
    eps = _noise(engine, 1, tuple(cond.shape[1:]), seed)
    window = 2 * engine.model.config.sample_size
    vel = tasks.text_velocity(engine.runner(precision), engine.encoder, [prompt], sample, precision=precision, cond=cond,
                              window=window)
    return to_pil(check_finite(sample_with(vel, eps, sample, callback), engine.source))[0]


def sample_with(velocity, noise: torch.Tensor, settings, callback: Callback | None = None) -> torch.Tensor:
    """A full t = 1 -> 0 run with a SampleConfig's sampler, steps and shift."""
    return integrate(velocity, noise, settings.sampler, settings.steps, settings.shift, callback)


def bicubic_upscale(image: ImageLike) -> Image.Image:
    """The baseline an upscaler is compared with."""
    im = load_image(image)
    return im.resize((2 * im.size[0], 2 * im.size[1]), Image.BICUBIC)


def psnr(a: Image.Image, b: Image.Image) -> float:
    x = np.asarray(a.convert("RGB"), np.float64)
    y = np.asarray(b.convert("RGB"), np.float64)
    mse = float(((x - y) ** 2).mean())
    return float("inf") if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


__all__: Sequence[str] = ("FUSE_CONDITIONS", "FUSE_MODES", "INPAINT_METHODS", "bicubic_upscale", "check_outpaint", "edit",
                          "fuse", "inpaint", "outpaint", "psnr", "task_settings", "upscale", "vary")
