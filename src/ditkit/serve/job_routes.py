"""The native job API (the web page's): POST /v1/jobs, GET /v1/jobs/{id}, its event stream,
cancel, result files, models, health and metrics."""

from __future__ import annotations

import json
import re
from typing import Optional, Union

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict

from ditkit.serve.errors import ApiError
from ditkit.serve.jobs import TERMINAL
from ditkit.serve.params import build_job, decode_base64, open_image
from ditkit.serve.service import Service

FILE_NAME = re.compile(r"^(\d{1,4})\.png$")


def service(request: Request) -> Service:
    return request.app.state.service


def authorized(request: Request) -> Service:
    svc = service(request)
    svc.check_key(request)
    return svc


class JobRequest(BaseModel):
    """POST /v1/jobs. Images are base64 PNGs (data URLs accepted); the mask is white where to fill."""
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    task: str = "generate"
    model: Optional[str] = None
    prompt: Optional[str] = None
    n: int = 1
    size: Optional[Union[str, int]] = None
    steps: Optional[int] = None
    guidance: Optional[float] = None
    seed: Optional[int] = None
    sampler: Optional[str] = None
    apg: bool = False
    image: Optional[str] = None
    image_b: Optional[str] = None
    mask: Optional[str] = None
    strength: Optional[float] = None
    left: int = 0
    right: int = 0
    top: int = 0
    bottom: int = 0
    alpha: Optional[float] = None
    source_prompt: Optional[str] = None
    method: Optional[str] = None


router = APIRouter()


@router.post("/v1/jobs", status_code=202, tags=["jobs"])
def create_job(body: JobRequest, svc: Service = Depends(authorized)):
    fields = body.model_dump()
    images = {k: open_image(decode_base64(fields[k], k, svc.settings), k, svc.settings)
              for k in ("image", "image_b", "mask") if fields.get(k) is not None}
    job = build_job(svc.pipes, svc.settings, fields, images)
    position = svc.submit(job)
    return JSONResponse({"id": job.id, "state": job.state, "queue_position": position}, status_code=202)


@router.get("/v1/jobs/{job_id}", tags=["jobs"])
def get_job(job_id: str, svc: Service = Depends(authorized)):
    return svc.view(svc.job(job_id))


@router.post("/v1/jobs/{job_id}/cancel", tags=["jobs"])
def cancel_job(job_id: str, svc: Service = Depends(authorized)):
    job = svc.job(job_id)
    if not svc.workers[job.model].cancel(job):  # checks and cancels atomically: a job finishing meanwhile is 409
        raise ApiError(409, f"job {job_id} is already {job.state}: only queued or running jobs can be cancelled",
                       "id", "job_finished")
    return svc.view(job)


@router.get("/v1/jobs/{job_id}/events", tags=["jobs"])
async def job_events(job_id: str, previews: bool = True, svc: Service = Depends(authorized)):
    """Server-sent events: queued {position}, progress {progress, step, steps, preview?}, then
    completed {result}, failed {error} or cancelled. A client that goes away only ends its stream.
    previews=false: no previews for this stream (the job makes them only while some stream wants them)."""
    job = svc.job(job_id)

    async def stream():
        sent = 0
        if previews:
            job.watch(+1)
        try:
            while True:
                events = job.events[sent:]
                for name, data in events:
                    if not previews and "preview" in data:
                        data = {k: v for k, v in data.items() if k != "preview"}
                    yield f"event: {name}\ndata: {json.dumps(data)}\n\n"
                sent += len(events)
                if job.state in TERMINAL and sent >= len(job.events):
                    return
                await job.wait_events(sent)
        finally:  # also when the client goes away (the generator is closed)
            if previews:
                job.watch(-1)

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


@router.get("/v1/files/{job_id}/{name}", tags=["jobs"], response_class=Response,
            responses={200: {"content": {"image/png": {}}}})
def get_file(job_id: str, name: str, svc: Service = Depends(authorized)):
    m = FILE_NAME.match(name)
    job = svc.job(job_id)
    k = int(m.group(1)) if m else -1
    if not 0 <= k < len(job.images):
        raise ApiError(404, f"no file {name!r} in job {job_id}: files are 0.png .. {len(job.images) - 1}.png",
                       "name", "not_found")
    return Response(job.images[k], media_type="image/png")


@router.get("/v1/models", tags=["models"])
def list_models(svc: Service = Depends(authorized)):
    return {"object": "list", "data": svc.models()}


@router.get("/healthz", tags=["health"])
def healthz(request: Request):
    svc = service(request)
    return {"status": "ok", "models": list(svc.pipes)}


@router.get("/metrics", response_class=PlainTextResponse, tags=["health"])
def metrics(svc: Service = Depends(authorized)):
    return PlainTextResponse(svc.metrics_text(), media_type="text/plain; version=0.0.4")
