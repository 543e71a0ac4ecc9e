"""One worker thread per loaded model: a bounded queue, dynamic batching, cancel, failure isolation.

Compatible queued generate jobs (same model, size, steps, guidance, sampler, APG) run as one
GenerationRequest of up to max_batch images (a job with controls runs alone: a sampler batch
shares one condition map). The request has fixed_shape set, so every sampler
batch has exactly max_batch rows and fixed-length text states: an image is byte-identical
whether its job ran alone or beside others. Editing tasks run one job at a time. A batch that
raises is re-run job by job, so a failing job fails alone; a cancelled job stops between
sampler steps (the engine's callback raises once every job in the batch is cancelled).
With batch_wait_ms the worker holds a generate batch that is not full for up to that long,
so jobs submitted a moment apart share it. Previews (a small PNG of the x0 estimate) are
made only for a job some event stream follows, every preview_every steps. The editing tasks
report their sampler steps, previews and cancels the same way, one job at a time; so does a
video job (its n clips in one Pipeline.generate_video call, each written as a GIF, and as an MP4
when imageio-ffmpeg is installed; its preview is a grid of the first clip's frames).
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import importlib.util
import io
import tempfile
import threading
import time
from pathlib import Path

import torch

from ditkit.api import Pipeline
from ditkit.core.images import to_pil
from ditkit.core.video_io import write_video
from ditkit.serve.jobs import TERMINAL, Job, JobStore
from ditkit.serve.metrics import Metrics
from ditkit.serve.settings import ServeSettings


class QueueFull(Exception):
    """The model's queue holds max_queue jobs (the API answers 429 with Retry-After)."""


class Cancelled(Exception):
    """Raised from the sampler callback when every job of the batch asked to cancel."""


PREVIEW_SIDE = 128  # previews larger than this are shrunk: they are a glance, not the result
PREVIEW_COLUMNS = 4  # a video's preview: its frames in a grid this wide (8 frames of 32 px: 128 x 64)


def png_bytes(image, compress_level: int = 6) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


class ModelWorker:
    """Runs one model's jobs in order on its own daemon thread."""

    def __init__(self, name: str, pipe: Pipeline, settings: ServeSettings, store: JobStore, metrics: Metrics):
        self.name, self.pipe, self.settings, self.store, self.metrics = name, pipe, settings, store, metrics
        self._queue: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._stop = False
        self.batches_run = 0  # sampler batches (or task jobs) run so far: tests see jobs share a batch
        self._thread = threading.Thread(target=self._loop, name=f"ditkit-serve-{name}", daemon=True)
        self._thread.start()

    # -- the queue ---------------------------------------------------------------------------------
    def submit(self, job: Job) -> int:
        """Queue a job; returns its position (0 = next). Raises QueueFull."""
        with self._cond:
            if len(self._queue) >= self.settings.max_queue:
                raise QueueFull(f"the queue of model {self.name!r} is full ({self.settings.max_queue} jobs, "
                                "--max-queue); retry later")
            self._queue.append(job)
            position = len(self._queue) - 1
            job.emit("queued", {"position": position})
            self._cond.notify()
        return position

    def position(self, job: Job) -> int | None:
        with self._cond:
            return next((i for i, j in enumerate(self._queue) if j is job), None)

    def queue_length(self) -> int:
        return len(self._queue)

    def cancel(self, job: Job) -> bool:
        """Cancel now if queued; else ask the running batch to stop at its next step. False (and
        nothing done) when the job has already finished. The check and the request happen under
        the job's lock, and JobStore.finish turns a later "completed" into "cancelled", so an
        accepted cancel always ends the job cancelled."""
        with self._cond, job.lock:
            if job.state in TERMINAL:
                return False
            job.cancel_requested = True
            queued = job in self._queue
            if queued:
                self._queue.remove(job)
        if queued:
            self.store.finish(job, "cancelled")
            self.metrics.finished(job)
        return True

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()

    def join(self, timeout: float) -> None:
        """Wait up to timeout seconds for the thread to end (after stop, once its batch ends)."""
        self._thread.join(timeout)

    def _take(self) -> list[Job] | None:
        """The next job and the queued jobs that can share its sampler batch (waiting up to
        batch_wait_ms for more while a generate batch is not full)."""
        wait_s = self.settings.batch_wait_ms / 1000.0
        with self._cond:
            deadline = None
            while True:
                while not self._queue and not self._stop:
                    deadline = None  # (the first job may have been cancelled while we waited)
                    self._cond.wait()
                if self._stop:
                    return None
                batch = self._compatible()
                now = time.monotonic()
                deadline = now + wait_s if deadline is None else deadline
                full = sum(j.n for j in batch) >= self.settings.max_batch
                if full or batch[0].batch_key is None or now >= deadline:
                    for job in batch:
                        self._queue.remove(job)
                    return batch
                self._cond.wait(deadline - now)  # a submit wakes us to look again

    def _compatible(self) -> list[Job]:
        """The first queued job and the queued jobs after it with its batch key, up to max_batch images."""
        first = self._queue[0]
        batch, images = [first], first.n
        if first.batch_key is not None:
            for job in list(self._queue)[1:]:
                if job.batch_key == first.batch_key and images + job.n <= self.settings.max_batch:
                    batch.append(job)
                    images += job.n
        return batch

    # -- running -----------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            for job in batch:
                with job.lock:
                    job.state = "running"
                job.report(0, 0.0)
            started = time.monotonic()
            self.batches_run += 1
            if batch[0].task == "generate":
                self._run_generate(batch)
            elif batch[0].task == "video":
                self._run_video(batch[0])
            else:
                self._run_task(batch[0])
            self.metrics.batch_done(sum(j.n for j in batch if j.state == "completed"), time.monotonic() - started)
            for job in batch:
                self.metrics.finished(job)

    def _fail(self, job: Job, error: Exception) -> None:
        kind = "invalid_request_error" if isinstance(error, ValueError) else "server_error"
        message = str(error) or error.__class__.__name__
        for source in {str(s) for s in (self.pipe.source, self.pipe.engine.source) if s}:
            message = message.replace(source, self.name)  # a client sees the model id, never the server's folder
        self.store.finish(job, "failed", error={"message": message, "type": kind,
                                                "param": None, "code": error.__class__.__name__})

    def _run_generate(self, batch: list[Job]) -> None:
        try:
            images = self._generate(batch)
        except Cancelled:
            for job in batch:
                self.store.finish(job, "cancelled")
            return
        except Exception as e:  # noqa: BLE001 - one job's error must not take the others (or the worker) down
            if len(batch) == 1:
                self._fail(batch[0], e)
                return
            for job in batch:  # re-run alone: fixed_shape gives the same images, and only the bad job fails
                if not job.cancel_requested:
                    self._run_generate([job])
                else:
                    self.store.finish(job, "cancelled")
            return
        offset = 0
        for job in batch:
            mine = images[offset:offset + job.n]
            offset += job.n
            self.store.finish(job, "cancelled" if job.cancel_requested else "completed", [png_bytes(im) for im in mine])

    def _generate(self, batch: list[Job]) -> list:
        args = batch[0].task_args
        prompts = [p for job in batch for p in job.task_args["prompts"]]
        seeds = [s for job in batch for s in job.seeds]
        request = self.pipe.request(prompts, seeds, steps=args["steps"], guidance=args["guidance"], apg=args["apg"],
                                    sampler=args["sampler"], size=args["size"], batch_size=self.settings.max_batch)
        # a control job runs alone (params.build_job gives it no batch key): its controls are its batch's
        request = dataclasses.replace(request, fixed_shape=True, controls=args.get("controls", ()))
        offsets, start = [], 0
        for job in batch:
            offsets.append(start)
            start += job.n
        every = self.settings.preview_every

        def callback(info: dict) -> None:
            if all(job.cancel_requested for job in batch):
                raise Cancelled()
            progress = info["done"] / max(info["total"], 1)
            rows = info["x0"].shape[0]
            for job, first in zip(batch, offsets):
                if job.cancel_requested:
                    continue
                job.steps = info["steps"]
                # the job's first image in this sampler batch (a job over max_batch images spans batches)
                row = max(first, info["index"]) - info["index"]
                shown = (job.watchers > 0 and info["step"] % every == 0 and row < rows
                         and info["index"] + row < first + job.n)  # no stream open: no preview work at all
                job.report(info["step"], progress, preview_png(info["x0"][row]) if shown else None)

        return to_pil(self.pipe.engine.generate(request, callback))

    def _run_task(self, job: Job) -> None:
        method = getattr(self.pipe, job.task)
        try:
            if job.task == "vary":  # one batched call: image k uses seed + k
                images = method(**job.task_args, num_images=job.n, seed=job.seeds[0],
                                callback=self._task_callback(job, 0, 1))
            else:  # image by image
                images = []
                for k, seed in enumerate(job.seeds):
                    if job.cancel_requested:
                        raise Cancelled()
                    extra = {} if job.task == "edit" else {"seed": seed}  # edit inverts the image: no noise
                    images.append(method(**job.task_args, **extra, callback=self._task_callback(job, k, job.n)))
        except Cancelled:
            self.store.finish(job, "cancelled")
            return
        except Exception as e:  # noqa: BLE001 - a failing request fails alone
            self._fail(job, e)
            return
        self.store.finish(job, "cancelled" if job.cancel_requested else "completed", [png_bytes(im) for im in images])

    def _run_video(self, job: Job) -> None:
        """A video job: its n clips in one generate_video call (clip j from seed + j, max_batch clips
        per sampler batch); step s of S is the sampler step of the current batch, progress covers
        the whole job, and a cancel stops it before the next sampler step."""
        args = {k: v for k, v in job.task_args.items() if k != "fps"}
        every = self.settings.preview_every

        def callback(info: dict) -> None:
            if job.cancel_requested:
                raise Cancelled()
            job.steps = info["steps"]
            shown = job.watchers > 0 and info["step"] % every == 0
            job.report(info["step"], info["done"] / max(info["total"], 1),
                       preview_png(info["x0"][0]) if shown else None)  # the job's first clip of this batch

        try:
            clips = self.pipe.generate_video(**args, seed=job.seeds[0], batch_size=self.settings.max_batch,
                                             callback=callback)
            gifs, mp4s = video_files(clips, job.task_args["fps"])
        except Cancelled:
            self.store.finish(job, "cancelled")
            return
        except Exception as e:  # noqa: BLE001 - a failing request fails alone
            self._fail(job, e)
            return
        self.store.finish(job, "cancelled" if job.cancel_requested else "completed", gifs, mp4=mp4s)

    def _task_callback(self, job: Job, part: int, parts: int):
        """The sampler callback of an editing task's call `part` of `parts` (one per image, or one
        for vary's batch): step s of S of that call, progress over the whole job, a preview of the
        x0 estimate (the job's first image in the call) every preview_every steps while a stream
        watches, and a cancel that stops the task before its next sampler step."""
        every = self.settings.preview_every

        def callback(info: dict) -> None:
            if job.cancel_requested:
                raise Cancelled()
            job.steps = info["steps"]  # the task's own count (edit: inversion + re-generation)
            shown = job.watchers > 0 and info["step"] % every == 0
            job.report(info["step"], (part + info["step"] / info["steps"]) / parts,
                       preview_png(info["x0"][0]) if shown else None)

        return callback


def video_files(clips: list[list], fps: float) -> tuple[list[bytes], list[bytes]]:
    """Each clip (a list of PIL frames) as GIF bytes, and as MP4 bytes when imageio-ffmpeg is
    installed (else no MP4s). core.video_io writes files, so each goes through a private temporary
    folder the server names (removed at once); nothing a client sent is part of a path."""
    mp4 = importlib.util.find_spec("imageio_ffmpeg") is not None
    gifs, mp4s = [], []
    with tempfile.TemporaryDirectory(prefix="ditkit-serve-") as folder:
        for k, clip in enumerate(clips):
            gifs.append(write_video(clip, Path(folder) / f"{k}.gif", fps).read_bytes())
            if mp4:
                mp4s.append(write_video(clip, Path(folder) / f"{k}.mp4", fps).read_bytes())
    return gifs, mp4s


def preview_png(x0: torch.Tensor) -> str:
    """A (C, H, W) estimate in [-1, 1] (or a clip's (F, C, H, W): its frames in a grid of
    PREVIEW_COLUMNS, row by row) as a base64 PNG (the live preview of the event stream): at most
    PREVIEW_SIDE pixels a side, fastest zlib level (previews are sent, never stored)."""
    x0 = x0.detach().float().clamp(-1, 1)
    if x0.ndim == 4:  # a clip: pad to whole rows (blank frames are white) and tile
        f, c, h, w = x0.shape
        cols = min(f, PREVIEW_COLUMNS)
        rows = -(-f // cols)
        x0 = torch.cat([x0, x0.new_ones(rows * cols - f, c, h, w)])
        x0 = x0.reshape(rows, cols, c, h, w).permute(2, 0, 3, 1, 4).reshape(c, rows * h, cols * w)
    image = to_pil(x0[None])[0]
    if max(image.size) > PREVIEW_SIDE:
        image.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
    return base64.b64encode(png_bytes(image, compress_level=1)).decode()


def is_finished(job: Job) -> bool:
    return job.state in TERMINAL
