"""OpenAI-Images-compatible endpoints: generations (JSON), edits and variations (multipart).

They run as jobs through the same workers as /v1/jobs and answer when the job ends:
{"created", "data": [{"b64_json"} | {"url"}]}. ditkit's own options (steps, guidance, seed,
sampler, apg; strength and alpha for edits/variations) are accepted as extra fields. OpenAI fields
that ditkit cannot honour but that change nothing essential are accepted and ignored
(IGNORED); the rest, and any unknown field, are refused with a 400 (docs/serving.md lists both).
"""

from __future__ import annotations

import base64
import time
from typing import Optional, Union

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict

from ditkit.serve.errors import ApiError
from ditkit.serve.forms import read_multipart
from ditkit.serve.job_routes import authorized
from ditkit.serve.jobs import Job
from ditkit.serve.params import alpha_mask, build_job, open_image
from ditkit.serve.service import Service

IGNORED = ("quality", "style", "user", "background", "moderation", "output_compression", "input_fidelity",
           "partial_images")
RESPONSE_FORMATS = ("b64_json", "url")
FORM_NUMBERS = {"n": int, "steps": int, "seed": int, "guidance": float, "strength": float, "alpha": float}
FORM_TEXT = ("prompt", "model", "size", "response_format", "sampler", "output_format")
FORM_FLAGS = ("apg", "stream")
FORM_FILES = ("image", "image[]", "mask")
FORM_FIELDS = frozenset(FORM_TEXT + tuple(FORM_NUMBERS) + FORM_FLAGS + FORM_FILES + IGNORED)


class ImageGenerationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    prompt: Optional[str] = None
    model: Optional[str] = None
    n: int = 1
    size: Optional[Union[str, int]] = "auto"
    response_format: Optional[str] = "b64_json"
    output_format: Optional[str] = None
    stream: Optional[bool] = None
    negative_prompt: Optional[str] = None
    steps: Optional[int] = None
    guidance: Optional[float] = None
    seed: Optional[int] = None
    sampler: Optional[str] = None
    apg: bool = False
    quality: Optional[str] = None
    style: Optional[str] = None
    user: Optional[str] = None
    background: Optional[str] = None
    moderation: Optional[str] = None
    output_compression: Optional[int] = None
    partial_images: Optional[int] = None


def check_openai_fields(fields: dict) -> str:
    """Refuse what ditkit cannot honour; return the response format."""
    fmt = fields.get("response_format") or "b64_json"
    if fmt not in RESPONSE_FORMATS:
        raise ApiError(400, f"response_format must be one of {', '.join(RESPONSE_FORMATS)}, got {fmt!r}",
                       "response_format", "invalid_value")
    if fields.get("output_format") not in (None, "png"):
        raise ApiError(400, "output_format: ditkit returns PNG only", "output_format", "invalid_value")
    if fields.get("stream"):
        raise ApiError(400, "stream is not supported here: use POST /v1/jobs and its event stream", "stream",
                       "invalid_value")
    if fields.get("negative_prompt"):
        raise ApiError(400, "negative_prompt is not supported: ditkit's guidance uses the empty prompt",
                       "negative_prompt", "invalid_value")
    return fmt


async def run_and_respond(svc: Service, job: Job, fmt: str, request: Request) -> dict:
    svc.submit(job)
    await svc.wait(job)
    if job.state != "completed":
        error = job.error or {"message": f"the job was {job.state}"}
        status = 400 if error.get("type") == "invalid_request_error" else 500
        raise ApiError(status, error["message"], error.get("param"), error.get("code"), error.get("type", "server_error"))
    if fmt == "url":
        base = str(request.base_url).rstrip("/")
        data = [{"url": f"{base}/v1/files/{job.id}/{k}.png"} for k in range(len(job.images))]
    else:
        data = [{"b64_json": base64.b64encode(png).decode()} for png in job.images]
    return {"created": int(time.time()), "data": data}


router = APIRouter(tags=["openai"])


@router.post("/v1/images/generations")
async def generations(body: ImageGenerationRequest, request: Request, svc: Service = Depends(authorized)):
    fields = body.model_dump()
    fmt = check_openai_fields(fields)
    job = build_job(svc.pipes, svc.settings, {**fields, "task": "generate"}, {})
    return await run_and_respond(svc, job, fmt, request)


MULTIPART_DOC = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["image"],
    "properties": {"image": {"type": "string", "format": "binary"}, "mask": {"type": "string", "format": "binary"},
                   "prompt": {"type": "string"}, "model": {"type": "string"}, "n": {"type": "integer"},
                   "size": {"type": "string"}, "response_format": {"type": "string", "enum": list(RESPONSE_FORMATS)},
                   "steps": {"type": "integer"}, "guidance": {"type": "number"}, "seed": {"type": "integer"},
                   "sampler": {"type": "string"}, "strength": {"type": "number"},
                   "alpha": {"type": "number"}}}}}}}


async def read_form(request: Request, svc: Service) -> tuple[dict, list, object]:
    """A multipart body -> (fields, images, mask image or None); numbers converted, sizes limited."""
    form, files = await read_multipart(request, svc.settings, FORM_FILES)
    unknown = sorted(set(form) - FORM_FIELDS)
    if unknown:
        raise ApiError(400, f"unknown field {unknown[0]!r}: this endpoint takes {', '.join(sorted(FORM_FIELDS))}",
                       unknown[0], "unknown_field")
    fields: dict = {key: form[key] for key in FORM_TEXT if key in form}
    for key, kind in FORM_NUMBERS.items():
        value = form.get(key)
        if value is not None and value != "":
            try:
                fields[key] = kind(value)
            except ValueError:
                raise ApiError(400, f"{key} must be {'an integer' if kind is int else 'a number'}, got {value!r}", key,
                               "invalid_value") from None
    for key in FORM_FLAGS:
        if key in form:
            fields[key] = form[key].lower() in ("1", "true", "yes")
    uploads = files.get("image", []) + files.get("image[]", [])
    if not uploads:
        raise ApiError(400, "image is required (one file as 'image', or several as 'image[]')", "image",
                       "missing_image")
    if len(files.get("mask", [])) > 1:
        raise ApiError(400, "more than one mask given", "mask", "invalid_mask")
    images = [open_image(data, "image", svc.settings) for data in uploads]
    mask = open_image(files["mask"][0], "mask", svc.settings) if files.get("mask") else None
    return fields, images, mask


@router.post("/v1/images/edits", openapi_extra=MULTIPART_DOC)
async def edits(request: Request, svc: Service = Depends(authorized)):
    """One image + mask: inpaint (kept pixels exact); one image: text+image variation; two: fusion."""
    fields, images, mask = await read_form(request, svc)
    fmt = check_openai_fields(fields)
    if len(images) > 2:
        raise ApiError(400, f"{len(images)} images given: edits take one (inpaint or vary) or two (fuse)", "image",
                       "too_many_images")
    if mask is not None:
        if len(images) != 1:
            raise ApiError(400, "a mask applies to one image", "mask", "invalid_mask")
        task, named = "inpaint", {"image": images[0], "mask": alpha_mask(mask, images[0].size)}
    elif len(images) == 2:
        task, named = "fuse", {"image": images[0], "image_b": images[1]}
    else:
        task, named = "vary", {"image": images[0]}
    job = build_job(svc.pipes, svc.settings, {**fields, "task": task}, named)
    return await run_and_respond(svc, job, fmt, request)


@router.post("/v1/images/variations", openapi_extra=MULTIPART_DOC)
async def variations(request: Request, svc: Service = Depends(authorized)):
    fields, images, _ = await read_form(request, svc)
    fmt = check_openai_fields(fields)
    if len(images) != 1:
        raise ApiError(400, "variations take one image", "image", "too_many_images")
    job = build_job(svc.pipes, svc.settings, {**fields, "task": "vary", "prompt": fields.get("prompt", "")},
                    {"image": images[0]})
    return await run_and_respond(svc, job, fmt, request)
