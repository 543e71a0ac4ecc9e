"""The Python API: a thin facade over the engine (ditkit.engine) and the tasks (ditkit.tasks).

    import ditkit
    pipe = ditkit.load("shapes-64")            # an embedded model name, or a model folder
    images = pipe.generate("a red circle to the left of a blue square", seed=0)

Images are PIL at the edges and (B, C, H, W) tensors in [-1, 1] inside.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

from ditkit.accel.scaling import BestOfN, Verifier, candidate_seeds, get_verifier, score_candidates
from ditkit.core.checkpoint import WEIGHTS_DIR, embedded_models, load_model, resolve_model
from ditkit.core.config import SampleConfig
from ditkit.core.encoders import TextEncoder, get_text_encoder
from ditkit.core.lora import AdapterStack
from ditkit.core.guidance import APG
from ditkit.core.images import ImageLike, to_pil
from ditkit.core.images import load_image, to_tensor
from ditkit.core.limits import MAX_BEST_OF, MAX_FRAMES, MAX_NUM_IMAGES, check_int, check_seed
from ditkit.data.video import still_caption
from ditkit.core.precision import resolve_device
from ditkit.engine.cache import SCHEDULE_FILE
from ditkit.interop.engines import check_engine
from ditkit.interop.runtime import blocks_refusal, export_for_engine, is_exported, load_exported
from ditkit.engine.calibration import calibrate_smooth
from ditkit.engine.control import ControlSpec, applied_controls
from ditkit.engine.generate import Engine, ProgressCallback
from ditkit.engine.prompts import default_prompts, model_dataset
from ditkit.engine.request import GenerationRequest, check_frames_for, prompt_list
from ditkit.tasks import pipeline_edit as edits

# resolve_model and embedded_models live in core.checkpoint; re-exported as part of the Python API.
__all__ = ["Pipeline", "WEIGHTS_DIR", "embedded_models", "load", "resolve_model"]


class Pipeline:
    """A loaded model plus its text encoder and default sampling settings. The engine
    (self.engine) holds the model and what is derived from it (int8 copy, prior models), each
    loaded once; companion models (the embedded <name>-inpaint) are loaded once per pipeline."""

    def __init__(self, model: torch.nn.Module, config: dict, source: str, device: str | torch.device = "cpu"):
        # "torch", or the engine that runs an exported graph (interop.runtime; ditkit.load(engine=...))
        self.engine_name = getattr(model, "engine_name", "torch")
        self.config = config
        self.source = source
        self.device = resolve_device(device)
        self.defaults: SampleConfig = config["sample"]
        self.engine = Engine(model, self._load_encoder, self.defaults, source)
        self._companions: dict[str, Pipeline | None] = {}
        self._companion_lock = threading.Lock()
        self._loras: tuple[AdapterStack, torch.nn.Module] | None = None  # LoRA state and the model it built
        self._lora_lock = threading.Lock()

    @property
    def model(self) -> torch.nn.Module:
        return self.engine.model

    @model.setter
    def model(self, model: torch.nn.Module) -> None:
        self.engine = Engine(model, self._load_encoder, self.defaults, self.source)

    def _load_encoder(self) -> TextEncoder:
        return get_text_encoder(self.config.get("text_encoder", "minilm"), device=self.device)

    @property
    def text_encoder(self) -> TextEncoder:
        return self.engine.encoder

    def sample_config(self, steps=None, guidance=None, sampler=None, size=None, shift=None, apg=None,
                      interval=None, prior_until=None, prior_model=None) -> SampleConfig:
        return self.engine.sample_config(steps, guidance, sampler, size, shift, apg, interval, prior_until,
                                         prior_model)

    def companion(self, suffix: str) -> "Pipeline | None":
        """The embedded model named <this model>-<suffix> (shapes-64 -> shapes-64-inpaint), if any."""
        name = f"{Path(self.source).name}-{suffix}"
        if name not in embedded_models():
            return None
        with self._companion_lock:
            if name not in self._companions:
                self._companions[name] = load(name, device=self.device, engine=self.engine_name)
            return self._companions[name]

    def _companion_engine(self, suffix: str) -> Engine | None:
        pipe = self.companion(suffix)
        return pipe.engine if pipe is not None else None

    # -- text to image ---------------------------------------------------------------------------
    def generate(self, prompt: str | Sequence[str], steps: int | None = None, guidance: float | None = None,
                 apg: bool | APG | None = None, sampler: str | None = None, seed: int = 0, size: int | None = None,
                 num_images: int = 1, shift: float | None = None,
                 guidance_interval: tuple[float, float] | None = None, precision: str = "fp32",
                 batch_size: int = 16, callback: ProgressCallback | None = None,
                 best_of: int = 1, verifier: "str | Verifier | None" = None,
                 cache: str | None = None, prior_until: float | None = None,
                 prior_model: str | None = None,
                 control: Sequence[ControlSpec] | None = None) -> list[Image.Image]:
        """Generate num_images images per prompt. An empty prompt means unconditional.
        Image k of prompt j uses seed + j * num_images + k.

        best_of > 1: for each requested image, generate best_of candidates and keep
        the one the verifier ("shapes", "digits" or a callable (image, prompt) -> float)
        scores highest (see ditkit.accel.scaling; costs best_of times the sampling).

        precision: fp32, bf16, int8 (CPU) or fp16 (GPU). cache: feature caching across
        steps, "first-block:THRESHOLD", "smooth:calibrated" (the schedule saved in the
        model folder by calibrate_cache) or "smooth:PATH.json" (see ditkit.engine.cache).
        prior_until, prior_model: steps with t >= prior_until take x0 from the t = 1 prediction of
        prior_model ("" = the model itself; sampling.pure_noise_prior).
        callback(info) after every sampler step: info has step, steps, t, x and x0 (the
        denoised estimate, a preview) of the current batch, and done / total image-steps over
        the whole call (core.progress.progress_callback turns a bar(done, total) into one)."""
        prompts = prompt_list(prompt)
        num_images = check_int("num_images", num_images, 1, MAX_NUM_IMAGES)
        best_of = check_int("best_of", best_of, 1, MAX_BEST_OF)
        seed = check_seed(seed)
        flat = [p for p in prompts for _ in range(num_images)]
        kwargs = dict(steps=steps, guidance=guidance, apg=apg, sampler=sampler, seed=seed, size=size, shift=shift,
                      guidance_interval=guidance_interval, precision=precision, batch_size=batch_size,
                      callback=callback, cache=cache, prior_until=prior_until, prior_model=prior_model,
                      control=control)
        if best_of != 1 or verifier is not None:
            return self.generate_best_of(flat, best_of, verifier, **kwargs).images
        return to_pil(self._sample(flat, seed, **kwargs))  # image i: seed + i (request.seed_list)

    def generate_best_of(self, prompts: str | Sequence[str], n: int, verifier: "str | Verifier | None",
                         seed: int = 0, **kwargs) -> BestOfN:
        """Best-of-n per prompt (ditkit.accel.scaling): all candidates, their scores and the choice.
        Candidate k of prompt j uses seed + j + k * scaling.CANDIDATE_STRIDE (candidate 0 is
        the plain image). Takes the keyword arguments of generate."""
        n = check_int("best_of", n, 1, MAX_BEST_OF)
        if verifier is None:
            raise ValueError("best-of-N needs a verifier: 'shapes', 'digits' or a callable (image, prompt) -> float")
        get_verifier(verifier)  # fail on a bad name before sampling anything
        prompts = prompt_list(prompts)
        seed = check_seed(seed)
        flat = [p for p in prompts for _ in range(n)]
        images = to_pil(self._sample(flat, candidate_seeds(len(prompts), n, seed), **kwargs))
        return score_candidates(images, prompts, n, verifier)

    def request(self, prompts: Sequence[str], seeds: int | Sequence[int], steps=None, guidance=None, apg=None,
                sampler=None, size=None, shift=None, guidance_interval=None, precision="fp32", batch_size=16,
                cache=None, prior_until=None, prior_model=None, control=None) -> GenerationRequest:
        """The GenerationRequest of generate's arguments over this model's defaults (apg: True for
        the default APG settings, or an APG; control: see generate)."""
        apg_cfg = apg if isinstance(apg, APG) else (APG() if apg else None)
        sample = self.sample_config(steps, guidance, sampler, size, shift, apg_cfg is not None,
                                    prior_until=prior_until, prior_model=prior_model)
        request = GenerationRequest.from_sample(prompts, sample, seeds, apg_cfg, guidance_interval, precision,
                                                batch_size, cache)
        if control:
            request = replace(request, controls=applied_controls(self.engine, control, request.size))
        return request

    def _sample(self, prompts: list[str], seeds: int | list[int], callback: ProgressCallback | None = None,
                seed=None, **kwargs) -> torch.Tensor:
        return self.engine.generate(self.request(prompts, seeds, **kwargs), callback)

    # -- video (a video model: model.frames > 0; docs/video.md) ---------------------------------
    def generate_video(self, prompt: str | Sequence[str], frames: int | None = None,
                       image: "ImageLike | Sequence[ImageLike] | None" = None, image_model: "str | Pipeline | None" = None,
                       steps: int | None = None, guidance: float | None = None, sampler: str | None = None,
                       seed: int = 0, size: int | None = None, shift: float | None = None,
                       precision: str = "fp32", batch_size: int = 8,
                       callback: ProgressCallback | None = None) -> list[list[Image.Image]]:
        """One video per prompt, each a list of `frames` PIL frames (default: the model's clip
        length); video j uses seed + j.

        Text-to-video by default. image: image-to-video, the first frame (one image for every
        prompt, or one per prompt), resized to size x size; it comes back as frame 0 exactly.
        image_model: the Kandinsky chain text -> image -> video in one call: that image model
        (a name such as "shapes-64", or a Pipeline) draws each first frame from the prompt with its
        motions left out (data.video.still_caption), then this model animates it."""
        prompts = prompt_list(prompt)
        seed = check_seed(seed)
        model_frames = getattr(self.model.config, "frames", 0)
        if not model_frames:
            check_frames_for(self.model, 1)  # an image model: the error names a video model to use
        frames = check_int("frames", model_frames if frames is None else frames, 1, MAX_FRAMES)
        request = self.request(prompts, seed, steps=steps, guidance=guidance, sampler=sampler, size=size, shift=shift,
                               precision=precision, batch_size=batch_size)
        request = replace(request, frames=frames)
        request.check_for(self.model)
        if image is not None and image_model is not None:
            raise ValueError("give image (the first frame) or image_model (which draws it), not both")
        if image_model is not None:
            image = self._first_frames_from(image_model, prompts, seed, request.size)
        if image is not None:
            request = replace(request, first_frames=self._first_frames(image, len(prompts), request.size))
        clips = self.engine.generate(request, callback)  # (N, F, C, S, S)
        return [to_pil(clip) for clip in clips]

    @staticmethod
    def _first_frames(image, n: int, size: int) -> torch.Tensor:
        """One image or one per prompt -> (n, 3, size, size) in [-1, 1]."""
        images = list(image) if isinstance(image, (list, tuple)) else [image]
        if len(images) not in (1, n):
            raise ValueError(f"image: give one first frame or one per prompt ({n}), got {len(images)}")
        tensors = [to_tensor(load_image(im, "first frame"), (size, size)) for im in images]
        return torch.cat(tensors * (n if len(tensors) == 1 else 1))

    def _first_frames_from(self, image_model: "str | Pipeline", prompts: list[str], seed: int,
                           size: int) -> list[Image.Image]:
        """First frames drawn by an image model from the prompts' still captions."""
        if isinstance(image_model, Pipeline):
            pipe = image_model
        else:  # loaded once per pipeline, as the companions are (a server animates many first frames)
            with self._companion_lock:
                key = f"image_model:{image_model}"
                if key not in self._companions:
                    self._companions[key] = load(image_model, device=self.device, engine=self.engine_name)
                pipe = self._companions[key]
        if getattr(pipe.model.config, "frames", 0):
            raise ValueError(f"image_model {pipe.source!r} is a video model; it must be an image model (e.g. shapes-64)")
        stills = [still_caption(p) for p in prompts]
        images = pipe.generate(stills, seed=seed)
        return [im.resize((size, size), Image.LANCZOS) if im.size != (size, size) else im for im in images]

    # -- editing tasks (ditkit.tasks.pipeline_edit) ----------------------------------------------
    def vary(self, image: ImageLike, prompt: str = "", strength: float = 0.6, num_images: int = 1,
             seed: int = 0, steps: int | None = None, guidance: float | None = None, sampler: str | None = None,
             shift: float | None = None, precision: str = "fp32",
             callback: ProgressCallback | None = None) -> list[Image.Image]:
        """SDEdit variations of an image (with a prompt: text+image fusion, "add a red circle").
        strength 0 keeps the image, 1 ignores it. Output at the model's size.
        callback (every editing method): after each sampler step, {step, steps, t, x, x0} with
        steps counted over the whole call (ditkit.tasks.pipeline_edit.vary)."""
        return edits.vary(self.engine, image, prompt, strength, num_images, seed, steps, guidance, sampler, shift,
                          precision, callback)

    def edit(self, image: ImageLike, source_prompt: str, prompt: str, strength: float = 1.0,
             steps: int | None = None, guidance: float | None = None, shift: float | None = None,
             precision: str = "fp32", callback: ProgressCallback | None = None) -> Image.Image:
        """Invert the image under source_prompt (the ODE from the image towards noise, to
        t = strength) and re-generate it under prompt from there."""
        return edits.edit(self.engine, image, source_prompt, prompt, strength, steps, guidance, shift, precision,
                          callback)

    def inpaint(self, image: ImageLike, mask: ImageLike, prompt: str = "", method: str = "auto",
                seed: int = 0, steps: int | None = None, guidance: float | None = None, sampler: str | None = None,
                shift: float | None = None, resample: int = 0, precision: str = "fp32",
                callback: ProgressCallback | None = None) -> Image.Image:
        """Fill the mask's white region. method: 'model' (the inpainting model, this one or the
        embedded <name>-inpaint), 'blend' (training-free, any model), 'auto' (model if there is
        one). resample: RePaint resampling rounds per step. The output has the input's size and
        its pixels outside the mask are the input's, byte for byte."""
        return edits.inpaint(self.engine, image, mask, prompt, method, seed, steps, guidance, sampler, shift,
                             resample, precision, companion=self._companion_engine, callback=callback)

    def outpaint(self, image: ImageLike, prompt: str = "", left: int = 0, right: int = 0, top: int = 0,
                 bottom: int = 0, method: str = "auto", seed: int = 0, steps: int | None = None,
                 guidance: float | None = None, sampler: str | None = None, shift: float | None = None,
                 resample: int = 0, precision: str = "fp32", callback: ProgressCallback | None = None) -> Image.Image:
        """Extend the canvas by the given pixels on each side (the new canvas at most twice the
        image's width and height) and fill the new area. Canvases larger than the model's
        size are sampled in overlapping windows. The original pixels are kept byte for byte."""
        return edits.outpaint(self.engine, image, prompt, left, right, top, bottom, method, seed, steps, guidance,
                              sampler, shift, resample, precision, companion=self._companion_engine, callback=callback)

    def fuse(self, image_a: ImageLike, image_b: ImageLike, alpha: float = 0.5, prompt: str | None = None,
             prompt_a: str = "", prompt_b: str = "", mode: str = "pixels", condition: str = "join",
             strength: float | None = None, seed: int = 0, steps: int | None = None, guidance: float | None = None,
             shift: float | None = None, precision: str = "fp32",
             callback: ProgressCallback | None = None) -> Image.Image:
        """One image carrying content of both A and B (alpha 0 is A, 1 is B); see
        ditkit.tasks.pipeline_edit.fuse for the modes and conditions."""
        return edits.fuse(self.engine, image_a, image_b, alpha, prompt, prompt_a, prompt_b, mode, condition,
                          strength, seed, steps, guidance, shift, precision, callback)

    def upscale(self, image: ImageLike, prompt: str = "", seed: int = 0, steps: int | None = None,
                guidance: float | None = None, sampler: str | None = None, precision: str = "fp32",
                callback: ProgressCallback | None = None) -> Image.Image:
        """2x super-resolution with an upscaling model (e.g. shapes-upscale). Inputs with sides
        not a multiple of 4 are resized to one (with a warning); inputs over 512 px are refused.
        Outputs larger than 2x the training size are sampled in overlapping windows."""
        return edits.upscale(self.engine, image, prompt, seed, steps, guidance, sampler, precision, callback)

    # -- LoRA adapters (ditkit.core.lora; docs/lora.md) -----------------------------------------
    # Every change builds a new model from the untouched base and swaps it in as one assignment
    # (core.lora.AdapterStack): a generation running in another thread (the HTTP server shares a
    # pipeline) finishes on the model it started with; changes are serialised by a lock.
    def load_lora(self, name_or_path: str | Path, scale: float = 1.0) -> "Pipeline":
        """Add a LoRA adapter: a folder (peft's adapter_config.json + adapter_model.safetensors and
        ditkit_base.json, as `ditkit train` with train.lora writes it) or an embedded adapter
        (shapes-64-lora-pink). scale multiplies its update (0 = off, 1 = as trained). Adapters add
        up; one trained on another base is refused. Returns self."""
        return self._change_loras(lambda stack: stack.with_adapter(name_or_path, scale))

    def set_lora_scale(self, scale: float, index: int | None = None) -> "Pipeline":
        """Change the scale of the adapter loaded index-th (every adapter when None). Returns self."""
        return self._change_loras(lambda stack: stack.with_scale(scale, index))

    def merge_lora(self) -> "Pipeline":
        """Fold the loaded adapters into the weights (W + scale * alpha / r * B A): plain Linear
        layers, as fast as the base model. Returns self."""
        return self._change_loras(lambda stack: stack.with_merged(True))

    def unmerge_lora(self) -> "Pipeline":
        """Undo merge_lora: the adapters run as separate layers again, exactly as before merging
        (rebuilt from the base weights, not by subtraction). Returns self."""
        return self._change_loras(lambda stack: stack.with_merged(False))

    def unload_lora(self) -> "Pipeline":
        """Remove every adapter: the base model again, bit for bit. Returns self."""
        return self._change_loras(lambda stack: stack.without_adapters())

    # the names diffusers users know
    load_lora_weights, fuse_lora, unfuse_lora, unload_lora_weights = load_lora, merge_lora, unmerge_lora, unload_lora

    @property
    def loras(self) -> list[tuple[str, float]]:
        """(folder, scale) of each loaded adapter, in loading order."""
        current = self._loras
        return current[0].describe() if current is not None and current[1] is self.model else []

    def _change_loras(self, change) -> "Pipeline":
        self._needs_torch("LoRA adapters")
        with self._lora_lock:
            current = self._loras
            # A stack applies to the model it built; a model set since (pipe.model = ...) is a new base.
            embedded = Path(self.source).parent == WEIGHTS_DIR  # named as the user names it
            stack = current[0] if current is not None and current[1] is self.model else \
                AdapterStack.on(self.model, Path(self.source).name if embedded else self.source)
            new = change(stack)
            compiled = getattr(self.model, "_ditkit_compiled", False)
            model = new.build()
            self.model = model  # one assignment: a new Engine around the new model
            self._loras = (new, model)
            if compiled:
                self.compile()
        return self

    # -- speed -----------------------------------------------------------------------------------
    def compile(self) -> "Pipeline":
        """torch.compile the model in place (about 40 s on first use; measured ~9% faster on
        this project's CPU, so off by default). Returns self."""
        self._needs_torch("torch.compile")
        if not getattr(self.model, "_ditkit_compiled", False):
            self.model.forward = torch.compile(self.model.forward)
            self.model._ditkit_compiled = True
        return self

    def calibrate_cache(self, steps: int | None = None, sampler: str | None = None, alpha: float = 0.15,
                        prompts: Sequence[str] | None = None, out: str | Path | None = None, seed: int = 0) -> Path:
        """Calibrate a SmoothCache schedule for this model at a step count and sampler and save it
        (default: cache_schedule.json in the model folder, which "smooth:calibrated" loads)."""
        self._needs_torch("cache calibration")
        if prompts is None:
            prompts = default_prompts(model_dataset(self.config))
        sample = self.sample_config(steps=steps, sampler=sampler)
        schedule = calibrate_smooth(self.model, self.text_encoder, list(prompts), sample, alpha, seed)
        path = Path(out) if out is not None else Path(self.source) / SCHEDULE_FILE
        schedule.save(path)
        return path

    def _needs_torch(self, feature: str) -> None:
        if self.engine_name != "torch":
            raise ValueError(blocks_refusal(self.engine_name, feature))

    def __repr__(self) -> str:
        if self.engine_name != "torch":
            return f"Pipeline(source={self.source!r}, engine={self.engine_name})"
        return f"Pipeline(source={self.source!r}, params={sum(p.numel() for p in self.model.parameters()):,})"



def load(name_or_path: str | Path = "shapes-64", device: str | torch.device = "cpu",
         engine: str | None = None) -> Pipeline:
    """Load an embedded model by name, a model folder or an exported folder (ditkit export).

    engine: what runs the model's velocity call. "torch" (the default for model folders),
    "onnxruntime" or "openvino" (CPU; a model folder is exported to ONNX on load, about 3 s for
    shapes-64). An exported folder loads with its own format's engine unless told otherwise
    (OpenVINO also reads ONNX exports). Samplers, guidance and tasks are ditkit's either way."""
    device = resolve_device(device)  # before any loading: `tpu` or a missing GPU is a clear error
    if engine is not None:
        check_engine(engine)
    folder = resolve_model(name_or_path)
    if engine not in (None, "torch") and device.type != "cpu":
        raise ValueError(f"the {engine} engine runs on the CPU here; use --engine torch on {device}")
    if is_exported(folder):
        model, cfg = load_exported(folder, engine)
        return Pipeline(model, cfg, str(folder), "cpu")
    model, cfg = load_model(folder, device)
    if engine not in (None, "torch"):
        model = export_for_engine(model, cfg, engine)
    return Pipeline(model, cfg, str(folder), device)
