"""Client input -> a checked Job: models, tasks, limits, sizes and uploaded images.

Every check runs before a job is queued, so a bad request is a 4xx at once and never
occupies the queue. Numbers go through ditkit's own checks (core.limits via SampleConfig and
GenerationRequest), so the server refuses what the API and the CLI refuse, with the same
message; the server's tighter limits (ServeSettings.max_*) come first and name the limit.
Uploads are decoded with Pillow's decompression-bomb guard after core.images.check_pixels
has seen the header; nothing is unpickled and nothing touches the filesystem."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import re
import secrets
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from ditkit.api import Pipeline
from ditkit.core.config import SampleConfig
from ditkit.core.images import check_pixels, check_strength
from ditkit.core.limits import check_int, check_number, check_seed
from ditkit.core.sampling import SAMPLER_NAMES
from ditkit.core.video_io import DEFAULT_FPS, check_fps
from ditkit.core.video_model import is_video_model
from ditkit.engine.control import applied_controls
from ditkit.engine.request import GenerationRequest, check_frames_for
from ditkit.engine.velocity import fixed_text_length
from ditkit.serve.control import check_controls, check_kinds, client_message
from ditkit.serve.errors import ApiError
from ditkit.serve.jobs import Job
from ditkit.serve.settings import ServeSettings
from ditkit.tasks.pipeline_edit import INPAINT_METHODS, check_outpaint

TASKS = ("generate", "inpaint", "outpaint", "vary", "edit", "fuse", "upscale", "video")
SIZE = re.compile(r"^\s*(\d{1,5})\s*[xX]\s*(\d{1,5})\s*$")
SEED_DRAW = 2 ** 31  # a random seed when the client gives none (returned in the job's seeds)


def tasks_for(pipe: Pipeline) -> list[str]:
    """What a model serves: a video model (config.frames > 0) only "video"; an image model by the
    condition channels it was trained with (tasks.pipeline_edit)."""
    if is_video_model(pipe.model):
        return ["video"]
    cond = pipe.model.config.cond_channels
    if cond == 4:
        return ["inpaint", "outpaint"]
    if cond == 3:
        return ["upscale"]
    return ["generate", "inpaint", "outpaint", "vary", "edit", "fuse"]


def pick_model(pipes: dict[str, Pipeline], name: str | None, task: str) -> str:
    if task not in TASKS:
        raise ApiError(400, f"unknown task {task!r}: one of {', '.join(TASKS)}", "task", "unknown_task")
    if name is None or name == "":
        name = next((m for m, p in pipes.items() if task in tasks_for(p)), next(iter(pipes)))
    if name not in pipes:
        raise ApiError(404, f"model {name!r} is not loaded: one of {', '.join(pipes)} (ditkit serve --models)",
                       "model", "model_not_found")
    served = tasks_for(pipes[name])
    if task not in served:
        why = ""
        if task == "video":
            why = " (videos need a video model, such as shapes-video, loaded with ditkit serve --models)"
        elif served == ["video"]:
            why = " (it is a video model: images need an image model, such as shapes-64)"
        raise ApiError(400, f"model {name!r} does not serve task {task!r}; it serves {', '.join(served)}{why}",
                       "task", "unsupported_task")
    return name


def _field(check, *args, param: str | None, limit: str | None = None, **kwargs):
    """A core.limits check whose ValueError becomes a 400 naming the parameter (and the
    ServeSettings field that bounds it, when one does)."""
    try:
        return check(*args, **kwargs)
    except ValueError as e:
        raise ApiError(400, f"{e} (the server's limit {limit})" if limit else str(e), param, "invalid_value") from None


def parse_size(size, pipe: Pipeline, settings: ServeSettings) -> int | None:
    """"WxH" (square), an int, or "auto"/None (the model's size) -> the side in pixels."""
    if size is None or size == "auto":
        return None
    if isinstance(size, str):
        m = SIZE.match(size)
        if not m:
            raise ApiError(400, f"size must be 'WxH' (e.g. '64x64') or 'auto', got {size!r}", "size", "invalid_size")
        w, h = int(m.group(1)), int(m.group(2))
        if w != h:
            raise ApiError(400, f"size must be square (the models sample square images), got {size!r}", "size",
                           "invalid_size")
        size = w
    side = _field(check_int, "size", size, 1, settings.max_size, param="size", limit="max_size")
    p = pipe.model.config.patch_size
    if side % p:
        raise ApiError(400, f"size {side} must be a multiple of the model's patch size {p}", "size", "invalid_size")
    return side


def check_prompt(prompt, settings: ServeSettings, required: bool, param: str = "prompt") -> str:
    if prompt is None:
        if required:
            raise ApiError(400, f"{param} is required", param, "missing_prompt")
        return ""
    if not isinstance(prompt, str):
        raise ApiError(400, f"{param} must be a string", param, "invalid_value")
    if len(prompt) > settings.max_prompt_chars:
        raise ApiError(400, f"{param} is {len(prompt)} characters, over the limit of {settings.max_prompt_chars} "
                       "(max_prompt_chars)", param, "prompt_too_long")
    return prompt


def decode_base64(data: str, param: str, settings: ServeSettings) -> bytes:
    """A base64 string or a data URL (data:image/png;base64,...) -> bytes, within the upload limit."""
    if not isinstance(data, str):
        raise ApiError(400, f"{param} must be a base64 PNG string", param, "invalid_image")
    if data.startswith("data:"):
        data = data.partition(",")[2]
    if len(data) * 3 // 4 > settings.max_upload_bytes:
        raise ApiError(413, f"{param} is over the upload limit of {settings.max_upload_bytes} bytes (max_upload_bytes)",
                       param, "upload_too_large")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{param} is not valid base64", param, "invalid_image") from None


def open_image(data: bytes, param: str, settings: ServeSettings) -> Image.Image:
    """Uploaded bytes -> a decoded PIL image; size and pixel limits checked before decoding."""
    if len(data) > settings.max_upload_bytes:
        raise ApiError(413, f"{param} is {len(data)} bytes, over the upload limit of {settings.max_upload_bytes} bytes "
                       "(max_upload_bytes)", param, "upload_too_large")
    try:
        with warnings.catch_warnings():  # Pillow warns at its bomb threshold; ours (check_pixels) is lower
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            check_pixels(im.size, param)  # from the header, before decoding
            im.load()
    except ValueError as e:
        raise ApiError(400, str(e), param, "image_too_large") from None
    except Image.DecompressionBombError:
        raise ApiError(400, f"{param} has too many pixels (Pillow's decompression-bomb guard)", param,
                       "image_too_large") from None
    except (UnidentifiedImageError, OSError, SyntaxError, EOFError) as e:
        raise ApiError(400, f"{param} is not an image Pillow can read (a PNG, JPEG, ...): {e.__class__.__name__}",
                       param, "invalid_image") from None
    return im


def alpha_mask(mask: Image.Image, size: tuple[int, int]) -> Image.Image:
    """OpenAI's mask (fully transparent pixels = the region to change) -> ditkit's (white = fill)."""
    if mask.mode not in ("RGBA", "LA", "PA") and not (mask.mode == "P" and "transparency" in mask.info):
        raise ApiError(400, "mask must have an alpha channel: fully transparent pixels mark the region to change",
                       "mask", "invalid_mask")
    check_same_size(mask, size)
    alpha = np.asarray(mask.convert("RGBA"))[..., 3]
    return Image.fromarray(np.where(alpha == 0, 255, 0).astype(np.uint8))


def check_same_size(mask: Image.Image, size: tuple[int, int]) -> None:
    if mask.size != tuple(size):
        raise ApiError(400, f"mask is {mask.size[0]}x{mask.size[1]}, the image {size[0]}x{size[1]}: they must match",
                       "mask", "invalid_mask")


def check_result(task: str, width: int, height: int, settings: ServeSettings) -> None:
    """Editing results follow the input's size (inpaint: the same, outpaint: the extended canvas,
    upscale: twice it): bound them before queueing, so one request cannot hold a worker (or memory)
    for long. An upscale samples its whole result in windows, so its side is held to max_size like
    a generated image's; the others sample at the model's size and only resize, so their bound is
    max_output_pixels."""
    if task == "upscale" and max(width, height) > settings.max_size:
        raise ApiError(400, f"upscale doubles the image: its result would be {width}x{height}, over the server's limit "
                       f"of {settings.max_size} px a side (max_size): send at most {settings.max_size // 2} px a side",
                       "image", "output_too_large")
    if width * height > settings.max_output_pixels:
        raise ApiError(400, f"the {task} result would be {width}x{height} = {width * height:,} pixels, over the "
                       f"server's limit of {settings.max_output_pixels:,} (max_output_pixels)", "image",
                       "output_too_large")


def seeds_for(seed, n: int) -> list[int]:
    first = secrets.randbelow(SEED_DRAW) if seed is None else _field(check_seed, seed, param="seed")
    _field(check_seed, first + n - 1, "seed + n - 1", param="seed")
    return [first + i for i in range(n)]


def build_job(pipes: dict[str, Pipeline], settings: ServeSettings, body: dict, images: dict[str, Image.Image]) -> Job:
    """A checked Job from the request's fields (body) and its decoded images ({"image", "image_b", "mask"})."""
    task = body.get("task") or "generate"
    name = pick_model(pipes, body.get("model"), task)
    pipe = pipes[name]
    n = _field(check_int, "n", body.get("n", 1) if body.get("n") is not None else 1, 1, settings.max_n, param="n",
               limit="max_n")
    if task == "edit" and n != 1:  # an edit inverts the image: no noise, so every image would be the same
        raise ApiError(400, f"task 'edit' makes one image (it inverts the image, no seed): n must be 1, got {n}",
                       "n", "invalid_value")
    steps = body.get("steps")
    if steps is not None:
        steps = _field(check_int, "steps", steps, 1, settings.max_steps, param="steps", limit="max_steps")
    size = parse_size(body.get("size"), pipe, settings)
    guidance, sampler, apg = body.get("guidance"), body.get("sampler"), bool(body.get("apg") or False)
    if guidance is not None:
        guidance = _field(check_number, "guidance", guidance, 0.0, settings.max_guidance, param="guidance",
                          limit="max_guidance")
    if sampler is not None and sampler not in SAMPLER_NAMES:
        raise ApiError(400, f"unknown sampler {sampler!r}; allowed: {', '.join(SAMPLER_NAMES)}", "sampler",
                       "invalid_value")
    sample = pipe.sample_config(steps=steps, guidance=guidance, sampler=sampler, size=size, apg=apg)  # ValueError -> 400
    seeds = seeds_for(body.get("seed"), n)
    # text-to-video needs a prompt; image-to-video may animate its first frame without one
    prompt = check_prompt(body.get("prompt"), settings,
                          required=task == "generate" or (task == "video" and "image" not in images))
    if body.get("control") is not None and task != "generate":
        raise ApiError(400, f"control applies to task 'generate' only, not {task!r}", "control", "invalid_control")
    if task == "video":
        return video_job(pipe, name, settings, body, images.get("image"), sample, seeds, prompt)
    need = {"inpaint": ("image", "mask"), "outpaint": ("image",), "vary": ("image",), "edit": ("image",),
            "fuse": ("image", "image_b"), "upscale": ("image",)}.get(task, ())
    for key in need:
        if key not in images:
            raise ApiError(400, f"task {task!r} needs {key!r} (a base64 PNG)", key, "missing_image")
    if "mask" in images:
        check_same_size(images["mask"], images["image"].size)
    common = dict(steps=sample.steps, guidance=sample.guidance)
    if task == "generate":
        request = pipe.request([prompt] * n, seeds, steps=sample.steps, guidance=sample.guidance, apg=apg,
                               sampler=sample.sampler, size=sample.size)
        request.check_for(pipe.model)
        args = dict(prompts=[prompt] * n, sampler=sample.sampler, size=sample.size, apg=apg, **common)
        if body.get("control") is not None:
            # A sampler batch shares one condition across its rows, so a control job runs alone (no batch key).
            args["controls"] = job_controls(pipe, name, settings, body["control"], request)
            return Job(task, name, args, seeds, steps=sample.steps)
        # The text-length bucket is part of the key: a batch pads every prompt to one length
        # (GenerationRequest.fixed_shape), so jobs of one bucket batch without changing a pixel.
        bucket = fixed_text_length(pipe.engine.encoder, [prompt])
        key = (name, task, sample.size, sample.steps, sample.guidance, sample.sampler, apg, bucket)
        return Job(task, name, args, seeds, batch_key=key, steps=sample.steps)
    method = body.get("method") or "auto"
    if method not in INPAINT_METHODS:  # checked here too, so the job is refused before it is queued
        raise ApiError(400, f"unknown inpainting method {method!r}; allowed: {', '.join(INPAINT_METHODS)}", "method",
                       "invalid_value")
    strength = body.get("strength")
    if strength is not None:
        strength = _field(check_strength, strength, param="strength")
    if task == "inpaint":
        check_result(task, *images["image"].size, settings)
        args = dict(image=images["image"], mask=images["mask"], prompt=prompt, method=method, sampler=sample.sampler,
                    **common)
    elif task == "outpaint":
        sides = {s: _field(check_int, s, body.get(s) or 0, 0, settings.max_size, param=s, limit="max_size")
                 for s in ("left", "right", "top", "bottom")}
        _field(check_outpaint, images["image"].size, **sides, param=None)  # the library's rules, before queueing
        w, h = images["image"].size
        check_result(task, w + sides["left"] + sides["right"], h + sides["top"] + sides["bottom"], settings)
        args = dict(image=images["image"], prompt=prompt, method=method, sampler=sample.sampler, **sides, **common)
    elif task == "vary":
        args = dict(image=images["image"], prompt=prompt, strength=0.6 if strength is None else strength,
                    sampler=sample.sampler, **common)
    elif task == "edit":
        source = check_prompt(body.get("source_prompt"), settings, required=True, param="source_prompt")
        args = dict(image=images["image"], source_prompt=source, prompt=prompt,
                    strength=1.0 if strength is None else strength, **common)
    elif task == "fuse":
        alpha = _field(check_number, "alpha", 0.5 if body.get("alpha") is None else body["alpha"], 0.0, 1.0,
                       param="alpha")
        args = dict(image_a=images["image"], image_b=images["image_b"], alpha=alpha, prompt=prompt or None,
                    strength=strength, **common)
    else:  # upscale
        check_result(task, *(2 * side for side in images["image"].size), settings)
        args = dict(image=images["image"], prompt=prompt, sampler=sample.sampler, **common)
    return Job(task, name, args, seeds)  # steps: the task's own sampler count, known at its first step (serve.worker)


def job_controls(pipe: Pipeline, name: str, settings: ServeSettings, raw, request: GenerationRequest) -> tuple:
    """A generate job's control field -> the request's AppliedControls (the worker sets them on its
    GenerationRequest): the fields checked, each condition image decoded as an upload, each control
    model loaded once per engine and checked against the model, all before the job is queued."""
    items = check_controls(raw, pipe, name, settings)
    images = []
    for k, item in enumerate(raw):
        param = f"control.{k}.image"
        images.append(open_image(decode_base64(item.get("image"), param, settings), param, settings))
    try:  # a map of another size is resized to the output's (nearest neighbour), as Pipeline.generate does
        applied = applied_controls(pipe.engine, [(what, im, scale) for (what, scale, _), im in zip(items, images)],
                                   request.size)
        dataclasses.replace(request, controls=applied).check_for(pipe.model)
    except ValueError as e:  # a control model for another base, a broken control folder, ...
        raise ApiError(400, client_message(e, name, pipe), "control", "invalid_control") from None
    check_kinds(applied, [kind for _, _, kind in items], pipe)
    return applied


def video_job(pipe: Pipeline, name: str, settings: ServeSettings, body: dict, first: Image.Image | None,
              sample: SampleConfig, seeds: list[int], prompt: str) -> Job:
    """A checked video job: n clips of `frames` frames (the model's clip length by default, at most
    max_frames), clip j from seed + j; first: image-to-video's first frame (resized to the clip's
    size by Pipeline.generate_video, and frame 0 of every clip exactly). Its task_args are
    Pipeline.generate_video's keywords plus fps (of the GIF and MP4 the worker writes)."""
    frames = body.get("frames")
    frames = _field(check_int, "frames", pipe.model.config.frames if frames is None else frames, 1,
                    settings.max_frames, param="frames", limit="max_frames")
    _field(check_frames_for, pipe.model, frames, param="frames")  # a multiple of the temporal patch
    if first is not None:
        _field(check_frames_for, pipe.model, frames, True, param="image")  # a model that takes a first frame
    fps = _field(check_fps, DEFAULT_FPS if body.get("fps") is None else body["fps"], param="fps")
    n = len(seeds)
    request = pipe.request([prompt] * n, seeds, steps=sample.steps, guidance=sample.guidance, sampler=sample.sampler,
                           size=sample.size)
    dataclasses.replace(request, frames=frames).check_for(pipe.model)  # the engine's own checks, before queueing
    args = dict(prompt=[prompt] * n, frames=frames, image=first, steps=sample.steps, guidance=sample.guidance,
                sampler=sample.sampler, size=sample.size, fps=fps)
    return Job("video", name, args, seeds, steps=sample.steps, media="gif", frames=frames)
