"""The server's settings and request limits (one frozen object, made by `ditkit serve`)."""

from __future__ import annotations

from dataclasses import dataclass

from ditkit.core.limits import MAX_FRAMES, MAX_IMAGE_PIXELS, check_int, check_number


@dataclass(frozen=True)
class ServeSettings:
    """max_queue: queued jobs per model before 429; max_batch: images per sampler batch (every
    batch runs at exactly this many rows, so results do not depend on batching); results_ttl:
    seconds a finished job and its images are kept; api_key: bearer key or None (no auth);
    cors_origin: the one allowed origin or None (CORS off). The max_* fields bound what one
    request may ask for; each refusal is a 4xx naming the limit. preview_every: a live preview
    every k sampler steps, made only while an event stream follows the job. batch_wait_ms: how
    long the worker waits for compatible jobs to fill a generate batch before starting it
    (0: start with what is queued; more trades latency at light load for fuller batches).
    max_output_pixels: the largest result of an editing task (an outpaint's canvas); an upscale's
    result side is held to max_size. max_frames: the most frames of one video (task "video"); a
    clip costs about its frame count times an image, so it is held well below ditkit's own limit.
    control_models: control model folders (or embedded names) a job's control may name in its
    "model" field, beside the embedded control models; a request never opens any other path."""
    max_queue: int = 32
    max_batch: int = 4
    results_ttl: float = 600.0
    api_key: str | None = None
    cors_origin: str | None = None
    max_upload_bytes: int = 8 * 2 ** 20
    max_prompt_chars: int = 1000
    max_n: int = 8
    max_steps: int = 200
    max_size: int = 512
    max_guidance: float = 50.0
    max_output_pixels: int = MAX_IMAGE_PIXELS  # a result is never larger than the largest input accepted
    max_frames: int = 16
    preview_every: int = 1
    batch_wait_ms: float = 50.0
    control_models: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_int("max_queue", self.max_queue, 1, 100_000)
        check_int("max_batch", self.max_batch, 1, 256)
        check_number("results_ttl", self.results_ttl, 0.0, lo_open=True)
        check_int("preview_every", self.preview_every, 1)
        check_number("batch_wait_ms", self.batch_wait_ms, 0.0, 10_000.0)
        check_number("max_guidance", self.max_guidance, 0.0)
        check_int("max_output_pixels", self.max_output_pixels, 1)
        check_int("max_frames", self.max_frames, 1, MAX_FRAMES)
        if isinstance(self.control_models, str):
            raise ValueError(f"control_models must be a list of control model folders, got the string {self.control_models!r}")
        object.__setattr__(self, "control_models", tuple(self.control_models))  # frozen: a list becomes a tuple
        if not all(isinstance(c, str) and c.strip() for c in self.control_models):
            raise ValueError(f"control_models must be control model folders or names, got {self.control_models!r}")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("the API key is empty: put the key in the file, or start without --api-key-file")
