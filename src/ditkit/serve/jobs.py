"""Jobs and the in-memory store of jobs and their results (deleted after the TTL).

Results live only in memory as file bytes (PNG images; a video job's GIFs and MP4s) under
server-made ids: no client-supplied path ever reaches the filesystem. All state changes go
through the job's lock; the event list only grows, so an event stream reads it by index
without holding anything."""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

TERMINAL = ("completed", "failed", "cancelled")
MEDIA_TYPES = {"png": "image/png", "gif": "image/gif", "mp4": "video/mp4"}


@dataclass(eq=False)  # identity: two jobs are never "equal" (the queue finds and removes a job by identity)
class Job:
    """One request. task_args: the keyword arguments of the Pipeline method (images decoded);
    seeds: one per image. batch_key: jobs with equal keys may share a sampler batch (None: never).
    step of steps counts sampler steps (unit "step", the only unit) of the current sampler batch
    (generate) or task call (an editing job's image; vary's one batched call); progress covers the
    whole job. watchers: the event streams open on the job now; previews are made only while it
    is above 0. images: the result files in order, each of format `media` ("png"; "gif" for a
    video job, whose clips have `frames` frames each and whose MP4s, when imageio-ffmpeg is
    installed, are in mp4)."""
    task: str
    model: str
    task_args: dict
    seeds: list[int]
    batch_key: tuple | None = None
    id: str = field(default_factory=lambda: "job_" + secrets.token_hex(12))
    state: str = "queued"
    progress: float = 0.0
    step: int = 0
    steps: int = 0
    unit: str = "step"
    images: list[bytes] = field(default_factory=list)
    media: str = "png"
    frames: int = 0
    mp4: list[bytes] = field(default_factory=list)
    error: dict | None = None
    created: float = field(default_factory=time.time)
    finished_at: float | None = None  # on the store's clock
    cancel_requested: bool = False
    events: list[tuple[str, dict]] = field(default_factory=list)
    watchers: int = 0
    _waiters: list = field(default_factory=list, repr=False)  # (event loop, asyncio.Event) of waiting streams
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def n(self) -> int:
        return len(self.seeds)

    def emit(self, name: str, data: dict) -> None:
        self.events.append((name, data))
        for loop, ready in tuple(self._waiters):  # wake the waiting streams (from the worker's thread)
            try:
                loop.call_soon_threadsafe(ready.set)
            except RuntimeError:  # that loop has closed: its stream is gone
                pass

    async def wait_events(self, seen: int, timeout: float = 1.0) -> None:
        """Return once the job has more than `seen` events (woken by emit: no polling), or after
        `timeout` seconds as a safety net."""
        if len(self.events) > seen:
            return
        waiter = (asyncio.get_running_loop(), asyncio.Event())
        self._waiters.append(waiter)
        try:
            if len(self.events) <= seen:  # an event emitted before we were listed
                await asyncio.wait_for(waiter[1].wait(), timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            self._waiters.remove(waiter)

    def report(self, step: int, progress: float, preview: str | None = None) -> None:
        """Record and emit a progress event: {progress, step, steps, unit, preview?}."""
        self.step, self.progress = step, progress
        event = {"progress": progress, "step": step, "steps": self.steps, "unit": self.unit}
        if preview is not None:
            event["preview"] = preview
        self.emit("progress", event)

    def watch(self, delta: int) -> None:
        """An event stream opened (+1) or closed (-1)."""
        with self.lock:
            self.watchers += delta

    def view(self) -> dict:
        """The job as GET /v1/jobs/{id} returns it; a video job also has frames (per clip) and mp4
        (the MP4 URLs, empty when the server cannot write MP4)."""
        out = {"id": self.id, "task": self.task, "model": self.model, "state": self.state,
               "progress": self.progress, "step": self.step, "steps": self.steps, "unit": self.unit,
               "result": [f"/v1/files/{self.id}/{k}.{self.media}" for k in range(len(self.images))],
               "error": self.error, "seeds": list(self.seeds), "created": int(self.created)}
        if self.task == "video":
            out["frames"] = self.frames
            out["mp4"] = [f"/v1/files/{self.id}/{k}.mp4" for k in range(len(self.mp4))]
        return out

    def file(self, name: str) -> tuple[bytes, str] | None:
        """A result file by its name ("0.png", "0.gif", "0.mp4") -> (bytes, media type), or None."""
        stem, _, suffix = name.partition(".")
        files = {self.media: self.images, "mp4": self.mp4}.get(suffix)
        if files is None or not (stem.isascii() and stem.isdigit()) or len(stem) > 4 or int(stem) >= len(files):
            return None
        return files[int(stem)], MEDIA_TYPES[suffix]


class JobStore:
    """Jobs by id; finished ones are dropped results_ttl seconds after they finish (on `clock`,
    time.monotonic unless a test gives another)."""

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic):
        self.ttl, self.clock = ttl, clock
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def add(self, job: Job) -> None:
        self.purge()  # also here, not only on lookups: clients that never look up (OpenAI's) must not fill memory
        with self._lock:
            self._jobs[job.id] = job

    def remove(self, job_id: str) -> None:
        with self._lock:
            self._jobs.pop(job_id, None)

    def get(self, job_id: str) -> Job | None:
        self.purge()
        with self._lock:
            return self._jobs.get(job_id)

    def all(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

    def finish(self, job: Job, state: str, images: list[bytes] | None = None, error: dict | None = None,
               mp4: list[bytes] | None = None) -> None:
        """Move a job to a terminal state (once) and emit its last event (images, mp4: the result
        files of a completed job)."""
        with job.lock:
            if job.state in TERMINAL:
                return
            if state == "completed" and job.cancel_requested:  # a cancel accepted (200) always ends cancelled
                state = "cancelled"
            job.state, job.finished_at = state, self.clock()
            if state == "completed":
                job.images, job.mp4, job.progress = list(images or []), list(mp4 or []), 1.0
                job.emit("completed", {"result": job.view()["result"]})
            elif state == "failed":
                job.error = error
                job.emit("failed", {"error": error})
            else:
                job.emit("cancelled", {})

    def purge(self) -> None:
        now = self.clock()
        with self._lock:
            old = [i for i, j in self._jobs.items() if j.finished_at is not None and now - j.finished_at >= self.ttl]
            for i in old:
                del self._jobs[i]
