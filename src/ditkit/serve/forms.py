"""Reading request bodies: the content type, a multipart/form-data body's text fields and
files (each within the upload limit), and a JSON body's object.

The OpenAI endpoints (serve.openai_routes) and POST /v1/jobs (serve.job_routes) share this;
what the fields mean and how they are typed stays with each endpoint. Files are read into
memory (bounded by max_upload_bytes each, and the whole body by app.py's Content-Length
check) and decoded later by params.open_image; nothing is written to disk by us (Starlette
spools large parts to a temporary file that it deletes when the form closes)."""

from __future__ import annotations

import json

from fastapi import Request
from starlette.datastructures import UploadFile

from ditkit.serve.errors import ApiError
from ditkit.serve.settings import ServeSettings

MULTIPART = "multipart/form-data"
JSON = "application/json"
MAX_FORM_FILES = 8  # more parts than any endpoint takes, so "too many images" gets its own message
MAX_FORM_FIELDS = 64


def content_type(request: Request) -> str:
    """The media type without parameters, lower case ("" when absent)."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def wrong_content_type(request: Request, allowed: tuple[str, ...]) -> ApiError:
    got = content_type(request) or "no content type"
    return ApiError(400, f"{request.url.path} takes {' or '.join(allowed)}, got {got!r}", None,
                    "invalid_content_type")


async def read_json_object(request: Request) -> dict:
    """The body as a JSON object (Python's parser: NaN and Infinity parse, the checks refuse them)."""
    body = await request.body()
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "the request body is not valid JSON", None, "invalid_request") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(data).__name__}", None,
                       "invalid_request")
    return data


async def read_multipart(request: Request, settings: ServeSettings, file_fields: tuple[str, ...]
                         ) -> tuple[dict[str, str], dict[str, list[bytes]]]:
    """A multipart/form-data body -> (text fields, files by field name in order). A file under a
    name not in file_fields, text under a file name, or a text field given twice is a 400; a
    file over max_upload_bytes is a 413 (params.open_image checks the bytes it gets)."""
    if content_type(request) != MULTIPART:
        raise wrong_content_type(request, (MULTIPART,))
    try:
        form = await request.form(max_files=MAX_FORM_FILES, max_fields=MAX_FORM_FIELDS)
    except Exception as e:  # noqa: BLE001 - a malformed multipart body (or too many parts) is the client's error
        message = getattr(e, "detail", None) or str(e) or e.__class__.__name__
        raise ApiError(400, f"malformed multipart body: {message}", None, "invalid_request") from None
    try:
        fields: dict[str, str] = {}
        files: dict[str, list[bytes]] = {}
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key not in file_fields:
                    raise ApiError(400, f"{key!r} is not a file field: files go in {', '.join(file_fields)}", key,
                                   "unknown_field")
                data = await value.read(settings.max_upload_bytes + 1)  # one byte over is enough to refuse
                if len(data) > settings.max_upload_bytes:
                    raise ApiError(413, f"{key} is over the upload limit of {settings.max_upload_bytes} bytes "
                                   "(max_upload_bytes)", key, "upload_too_large")
                files.setdefault(key, []).append(data)
            elif key in file_fields:
                raise ApiError(400, f"{key} must be a file upload (a form part with a filename)", key, "invalid_image")
            elif key in fields:
                raise ApiError(400, f"{key} is given more than once", key, "invalid_value")
            else:
                fields[key] = value
        return fields, files
    finally:
        await form.close()
