"""create_app: the FastAPI application over loaded pipelines.

    app = create_app({"shapes-64": ditkit.load("shapes-64")}, ServeSettings(max_batch=4))
    uvicorn.run(app, host="127.0.0.1", port=8000)            # what `ditkit serve` does
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse

from ditkit.api import Pipeline
from ditkit.serve import job_routes, openai_routes
from ditkit.serve.errors import ApiError, error_response, install_error_handlers
from ditkit.serve.service import Service
from ditkit.serve.settings import ServeSettings

STATIC = Path(__file__).resolve().parent / "static"
MULTIPART_SLACK = 64 * 1024  # form fields and boundaries around the files of one upload
MAX_FILES = 3  # image, image_b / image[], mask


def create_app(pipes: dict[str, Pipeline], settings: ServeSettings | None = None,
               clock: Callable[[], float] = time.monotonic) -> FastAPI:
    """The app; app.state.service holds the workers (call app.state.service.close() to stop them)."""
    settings = settings or ServeSettings()
    app = FastAPI(title="ditkit", version="1", description="ditkit's image API: OpenAI-compatible and native jobs "
                  "(docs/serving.md)")
    app.state.service = Service(pipes, settings, clock)
    install_error_handlers(app)
    app.include_router(openai_routes.router)
    app.include_router(job_routes.router)
    body_limit = settings.max_upload_bytes * MAX_FILES * 4 // 3 + MULTIPART_SLACK  # base64 grows bytes by 4/3

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        """Refuse a declared body over the limit before reading it (each file is checked again)."""
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > body_limit):
            return error_response(413, f"request body over the limit of {body_limit} bytes "
                                  f"({MAX_FILES} uploads of max_upload_bytes={settings.max_upload_bytes})",
                                  code="upload_too_large")
        return await call_next(request)

    if settings.cors_origin:
        app.add_middleware(CORSMiddleware, allow_origins=[settings.cors_origin], allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])

    @app.get("/", include_in_schema=False)
    def index():
        return static_file("index.html")

    @app.get("/static/{path:path}", include_in_schema=False)
    def static(path: str):
        return static_file(path)

    return app


def static_file(path: str) -> FileResponse:
    """A file under serve/static only: the resolved path must stay inside that folder."""
    target = (STATIC / path).resolve()
    if not target.is_relative_to(STATIC) or not target.is_file():
        raise ApiError(404, f"no static file {path!r}", None, "not_found")
    return FileResponse(target)
