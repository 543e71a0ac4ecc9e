"""The server's state: loaded pipelines, one worker each, the job store and the metrics."""

from __future__ import annotations

import hmac
import time
from typing import Callable

from fastapi import Request

from ditkit.api import Pipeline
from ditkit.core.sampling import SAMPLER_NAMES
from ditkit.core.video_model import is_video_model
from ditkit.serve.control import served_controls
from ditkit.serve.errors import ApiError
from ditkit.serve.jobs import TERMINAL, Job, JobStore
from ditkit.serve.metrics import Metrics
from ditkit.serve.params import tasks_for
from ditkit.serve.settings import ServeSettings
from ditkit.serve.worker import ModelWorker, QueueFull

RETRY_AFTER_S = 2


class Service:
    def __init__(self, pipes: dict[str, Pipeline], settings: ServeSettings, clock: Callable[[], float] = time.monotonic):
        if not pipes:
            raise ValueError("no models to serve: give at least one with --models")
        self.pipes, self.settings = pipes, settings
        self.store = JobStore(settings.results_ttl, clock)
        self.metrics = Metrics()
        # the control models each text-to-image model can use (read once: a broken folder fails the start)
        self.controls = {name: served_controls(name, pipe, settings) if "generate" in tasks_for(pipe) else []
                         for name, pipe in pipes.items()}
        self.workers = {name: ModelWorker(name, pipe, settings, self.store, self.metrics) for name, pipe in pipes.items()}

    def submit(self, job: Job) -> int:
        self.store.add(job)
        try:
            return self.workers[job.model].submit(job)
        except QueueFull as e:
            self.store.remove(job.id)
            raise ApiError(429, str(e), None, "queue_full", "rate_limit_error",
                           headers={"Retry-After": str(RETRY_AFTER_S)}) from None

    def job(self, job_id: str) -> Job:
        job = self.store.get(job_id)
        if job is None:
            raise ApiError(404, f"no job {job_id!r} (unknown, or its results expired after the TTL)", "id",
                           "job_not_found")
        return job

    def view(self, job: Job) -> dict:
        out = job.view()
        if job.state == "queued":
            out["queue_position"] = self.workers[job.model].position(job)
        return out

    async def wait(self, job: Job) -> Job:
        """Wait (without blocking the event loop) until the job finishes; the worker runs on regardless."""
        while True:
            seen = len(job.events)  # before the state: a finish in between is then an event past `seen`
            if job.state in TERMINAL:
                return job
            await job.wait_events(seen)

    def models(self) -> list[dict]:
        out = []
        for name, pipe in self.pipes.items():
            d = pipe.defaults
            defaults = {"steps": d.steps, "guidance": d.guidance, "sampler": d.sampler, "size": f"{d.size}x{d.size}"}
            if is_video_model(pipe.model):  # a video model's clip length (task "video" defaults to it)
                defaults["frames"] = pipe.model.config.frames
            out.append({"id": name, "object": "model", "owned_by": "ditkit", "tasks": tasks_for(pipe),
                        "samplers": list(SAMPLER_NAMES),  # every model samples with each (task "edit" uses euler)
                        "defaults": defaults, "controls": self.controls[name],
                        "engine": pipe.engine_name})
        return out

    def metrics_text(self) -> str:
        states: dict[str, int] = {}
        self.store.purge()  # the gauge counts only jobs still held
        for job in self.store.all():
            states[job.state] = states.get(job.state, 0) + 1
        return self.metrics.render({m: w.queue_length() for m, w in self.workers.items()}, states)

    def check_key(self, request: Request) -> None:
        """Bearer auth when a key is set, compared in constant time."""
        key = self.settings.api_key
        if key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'", None,
                           "invalid_api_key", "authentication_error", headers={"WWW-Authenticate": "Bearer"})

    def close(self, timeout: float = 10.0) -> None:
        """Stop the workers: queued jobs stay queued, running ones are cancelled (they stop at their
        next sampler step), and each worker thread gets up to timeout seconds to end, so the process
        does not exit while a thread is inside torch (which can abort it)."""
        for w in self.workers.values():
            w.stop()
        for job in self.store.all():
            if job.state == "running":
                self.workers[job.model].cancel(job)
        for w in self.workers.values():
            w.join(timeout)
