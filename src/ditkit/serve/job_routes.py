"""The native job API (the web page's): POST /v1/jobs (every task, "video" included; JSON with
base64 images, or multipart/form-data with image files), GET /v1/jobs/{id}, its event stream,
cancel, result files (PNG; a video job's GIF and MP4), models, health and metrics."""

from __future__ import annotations

import json
from typing import Optional, Union

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.concurrency import run_in_threadpool

from ditkit.serve.errors import ApiError
from ditkit.serve.forms import JSON, MULTIPART, content_type, read_json_object, read_multipart, wrong_content_type
from ditkit.serve.jobs import TERMINAL, Job
from ditkit.serve.params import build_job, decode_base64, open_image
from ditkit.serve.service import Service


def service(request: Request) -> Service:
    return request.app.state.service


def authorized(request: Request) -> Service:
    svc = service(request)
    svc.check_key(request)
    return svc


class ControlItem(BaseModel):
    """One control of a generate job: kind (edges, boxes, seg: the embedded <model>-control-<kind>)
    or model (an embedded control model, or a folder the server was started with), the condition
    map as a base64 PNG (data URL accepted), and its scale (>= 0; 0 is the model alone)."""
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    kind: Optional[str] = None
    model: Optional[str] = None
    image: str
    scale: float = 1.0


class JobRequest(BaseModel):
    """POST /v1/jobs. In JSON, images are base64 PNGs (data URLs accepted); in a multipart form
    they are file parts and the other fields are text, typed by this model. The mask is white
    where to fill. frames and fps: task "video" (image is then its optional first frame). control:
    task "generate" (serve/control.py); in a form it is one text part holding the JSON list."""
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
    frames: Optional[int] = None
    fps: Optional[float] = None
    control: Optional[list[ControlItem]] = None


IMAGE_FIELDS = ("image", "image_b", "mask")
FORM_FILES = ("image", "image[]", "images", "image_b", "mask")  # image[] / images: one or two, repeated
FORM_TEXT_KEPT_EMPTY = ("prompt", "source_prompt")  # other empty form fields mean "not given" (an empty input)


def inline_refs(schema: dict) -> dict:
    """A pydantic JSON schema with its $defs written in place: the OpenAPI document has no
    "#/$defs" of its own for the references to point into."""
    defs = schema.get("$defs", {})

    def walk(node):
        if isinstance(node, dict):
            if "$ref" in node:
                return walk(defs[node["$ref"].rsplit("/", 1)[1]])
            return {k: walk(v) for k, v in node.items() if k != "$defs"}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)


def multipart_schema() -> dict:
    """The form's OpenAPI schema: JobRequest's fields as plain text parts, images as files, control
    as a text part holding its JSON list."""
    props = {}
    for name, prop in inline_refs(JobRequest.model_json_schema())["properties"].items():
        if name in IMAGE_FIELDS:
            continue
        if name == "control":
            props[name] = {"type": "string", "title": "Control",
                           "description": "the JSON list of controls, as in the JSON body"}
            continue
        kinds = [k for k in prop.get("anyOf", [prop]) if k.get("type") != "null"]
        plain = {k: v for k, v in prop.items() if k != "anyOf"}
        props[name] = plain | (kinds[0] if len(kinds) == 1 else {"anyOf": kinds})
    binary = {"type": "string", "format": "binary"}
    props |= {"image": binary, "image_b": binary, "mask": binary, "images": {"type": "array", "items": binary}}
    return {"type": "object", "properties": props}


JOB_BODY_DOC = {"requestBody": {"required": True, "content": {
    JSON: {"schema": inline_refs(JobRequest.model_json_schema())}, MULTIPART: {"schema": multipart_schema()}}}}

router = APIRouter()


def job_request(fields: dict) -> JobRequest:
    """The one typing and field check of both bodies (a form's text is converted as pydantic's lax
    mode converts it: "2" -> 2, "true" -> True); errors answer as FastAPI's do (400, naming the field)."""
    try:
        return JobRequest.model_validate(fields)
    except ValidationError as e:
        raise RequestValidationError(e.errors()) from None


def form_images(files: dict[str, list[bytes]]) -> dict[str, bytes]:
    """A form's files -> {"image", "image_b"?, "mask"?}: image, image[] or images give one or two
    images (the second is image_b, fusion's), image_b may also be its own part."""
    listed = files.get("image", []) + files.get("image[]", []) + files.get("images", []) + files.get("image_b", [])
    if len(listed) > 2:
        raise ApiError(400, f"{len(listed)} images given: a job takes one, or two for fusion", "image",
                       "too_many_images")
    if len(files.get("mask", [])) > 1:
        raise ApiError(400, "more than one mask given", "mask", "invalid_mask")
    out = dict(zip(("image", "image_b"), listed))
    if files.get("mask"):
        out["mask"] = files["mask"][0]
    return out


def form_json(text: str, param: str):
    """A form text part that holds JSON (control's list)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise ApiError(400, f"{param} in a form must be JSON text (a list of controls, as in the JSON body)", param,
                       "invalid_request") from None


def make_job(svc: Service, fields: dict, uploads: dict[str, bytes] | None) -> Job:
    """Decode the images (base64 fields when uploads is None) and build the checked job."""
    if uploads is None:
        uploads = {k: decode_base64(fields[k], k, svc.settings) for k in IMAGE_FIELDS if fields.get(k) is not None}
    images = {k: open_image(data, k, svc.settings) for k, data in uploads.items()}
    return build_job(svc.pipes, svc.settings, fields, images)


@router.post("/v1/jobs", status_code=202, tags=["jobs"], openapi_extra=JOB_BODY_DOC)
async def create_job(request: Request, svc: Service = Depends(authorized)):
    """A job from a JSON body (images in base64) or a multipart form (images as files)."""
    kind = content_type(request)
    if kind == MULTIPART:
        text, files = await read_multipart(request, svc.settings, FORM_FILES)
        fields = {k: v for k, v in text.items() if v != "" or k in FORM_TEXT_KEPT_EMPTY}
        if "control" in fields:
            fields["control"] = form_json(fields["control"], "control")
        uploads = form_images(files)
    elif kind in (JSON, "") or kind.endswith("+json"):
        fields, uploads = await read_json_object(request), None
    else:
        raise wrong_content_type(request, (JSON, MULTIPART))
    body = job_request(fields).model_dump()
    job = await run_in_threadpool(make_job, svc, body, uploads)  # decoding images must not block the event loop
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
            responses={200: {"content": {"image/png": {}, "image/gif": {}, "video/mp4": {}}}})
def get_file(job_id: str, name: str, svc: Service = Depends(authorized)):
    """Result k of a completed job: k.png (an image), k.gif or k.mp4 (a video job's clip)."""
    job = svc.job(job_id)
    found = job.file(name)
    if found is None:
        names = f"0.{job.media} .. {len(job.images) - 1}.{job.media}" if job.images else "none (not completed)"
        raise ApiError(404, f"no file {name!r} in job {job_id}: files are {names}"
                       + (f" and 0.mp4 .. {len(job.mp4) - 1}.mp4" if job.mp4 else ""), "name", "not_found")
    data, media_type = found
    return Response(data, media_type=media_type)


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
