"""FastAPI app for `encore serve`: routes only. The work lives in `service.JobService` and the worker processes.

`create_app(settings)` builds the app; it never imports torch. Every route needs the API key except
`auth.PUBLIC_ROUTES`; the `auth.Guard` middleware enforces that, plus origin, content-type and size rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.security import HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException

from encore import __version__
from encore.frontends.server import loras, schemas
from encore.frontends.server.auth import Guard
from encore.frontends.server.official import build_official_router
from encore.frontends.server.schemas import ERROR_RESPONSES, SUBMIT_RESPONSES
from encore.frontends.server.service import ApiError, JobService, field_error, owner
from encore.frontends.server.settings import ServerSettings
from encore.frontends.server.store import TERMINAL_STATES, SQLiteJobStore
from encore.pipeline import request as rq

logger = logging.getLogger(__name__)

JobId = Annotated[str, Path(max_length=64, description="Job id (uuid).")]
SSE_POLL_S = 0.25
SSE_KEEPALIVE_S = 10.0
bearer = HTTPBearer(auto_error=False, description="API key (`Authorization: Bearer <key>`); checked by the guard.")


def create_app(settings: ServerSettings, store: SQLiteJobStore | None = None) -> FastAPI:
    """Build the API app over `store` (default: the SQLite store in `settings.data_dir`)."""
    store = store or SQLiteJobStore(settings.db_path)
    service = JobService(settings, store)
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        watcher = asyncio.create_task(service.watch_event_loop())  # /metrics reports the loop's lag
        try:
            yield
        finally:
            watcher.cancel()

    app = FastAPI(title="Encore API", version=__version__, lifespan=lifespan,
                  description="Music generation jobs (own `/v1` API) plus ACE-Step 1.5 compatible routes.")
    app.state.service = service
    app.state.settings = settings
    _install_error_handlers(app, service)
    app.add_middleware(Guard, settings=settings)
    secured = [Depends(bearer)]

    @app.get("/health", tags=["health"], summary="Liveness (official envelope); public.")
    def health() -> dict[str, Any]:
        return envelope({"status": "ok", "service": "encore", "version": __version__})

    @app.get("/ready", tags=["health"], response_model=schemas.ReadyReport,
             responses={503: {"model": schemas.ReadyReport, "description": "Not ready; `reasons` says why."}},
             summary="Readiness: a generation can run now; public.")
    def ready() -> JSONResponse:
        report = service.ready()
        return JSONResponse(report, status_code=200 if report["ready"] else 503)

    @app.get("/metrics", tags=["health"], dependencies=secured, response_class=PlainTextResponse,
             responses=ERROR_RESPONSES, summary="Prometheus metrics.")
    def metrics() -> PlainTextResponse:
        return PlainTextResponse(service.metrics(), media_type="text/plain; version=0.0.4")

    _add_upload_route(app, service, secured)
    _add_job_routes(app, service, secured)

    @app.get("/v1/loras", tags=["loras"], dependencies=secured, response_model=schemas.LoraList,
             responses=ERROR_RESPONSES, summary="LoRA adapters a generation may name in `loras[].path`.")
    def list_loras() -> dict[str, Any]:
        return loras.list_adapters(settings.lora_dir)

    app.include_router(build_official_router(service), dependencies=secured)
    return app


def envelope(data: Any, code: int = 200, error: str | None = None) -> dict[str, Any]:
    """The official response envelope."""
    return {"data": data, "code": code, "error": error, "timestamp": int(time.time() * 1000), "extra": None}


def _install_error_handlers(app: FastAPI, service: JobService) -> None:
    def reply(request: Request, status: int, code: str, detail: Any, headers: dict[str, str] | None = None) -> Any:
        service.responses[status] += 1
        rid = request.scope.get("state", {}).get("request_id")
        return JSONResponse({"detail": detail, "code": code, "request_id": rid}, status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Any:
        return reply(request, exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Any:
        detail = [{"loc": _clean_loc(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                  for e in exc.errors()]
        return reply(request, 422, "invalid_request", detail)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Any:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return reply(request, exc.status_code, code, exc.detail, dict(exc.headers or {}))

    @app.exception_handler(MultiPartException)
    async def bad_multipart(request: Request, exc: MultiPartException) -> Any:
        return reply(request, 400, "bad_multipart", exc.message)


_MODE_TAGS = frozenset({"generate", "format", "sample", "understand", "codes"})


def _clean_loc(loc: Any) -> list[Any]:
    """Drop pydantic's union tags from an error location so it is the field path the client sent."""
    out = list(loc)
    if len(out) > 1 and out[0] == "body" and out[1] in _MODE_TAGS:
        del out[1]
    for i in range(len(out) - 1, 0, -1):
        if out[i - 1] == "task" and out[i] in rq.TASK_KINDS:
            del out[i]
    return out


def _add_upload_route(app: FastAPI, service: JobService, secured: list[Any]) -> None:
    upload_body = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["file"], "additionalProperties": False,
        "properties": {"file": {"type": "string", "format": "binary"}}}}}}}

    @app.post("/v1/uploads", tags=["jobs"], dependencies=secured, status_code=201, response_model=schemas.UploadInfo,
              responses={**ERROR_RESPONSES, 507: {"model": schemas.ErrorBody, "description": "Disk full."}},
              openapi_extra=upload_body, summary="Upload an audio file; returns an opaque id for job fields.")
    async def upload(request: Request) -> JSONResponse:
        ctype = request.headers.get("content-type", "")
        if not ctype.startswith("multipart/form-data"):
            raise ApiError(415, "unsupported_media_type", "send multipart/form-data with one part named 'file'")
        form = await request.form(max_files=1, max_fields=1, max_part_size=64 * 1024)
        try:
            extra = [k for k in form if k != "file"]
            part = form.get("file")
            if extra or part is None or isinstance(part, str):
                raise field_error(("body", "file"), "send exactly one file part named 'file'")
            item = await asyncio.to_thread(service.store_upload, owner(request), part.file, part.filename)
        finally:
            await form.close()
        info = {"id": item.id, "filename": item.filename, "size": item.size, "duration_s": item.duration_s,
                "sample_rate": item.sample_rate, "channels": item.channels}
        return JSONResponse(info, status_code=201)


def submit_body(service: JobService, body: Any, own: str) -> tuple[str, dict[str, Any]]:
    """(mode, worker payload) for a validated submission body."""
    if isinstance(body, schemas.GenerateJob):
        data = body.request.model_dump(mode="json", exclude_unset=True)
        return "generate", service.validate_generation(data, own)
    args = body.model_dump(mode="json", exclude={"mode"})
    uploads = {}
    if isinstance(body, (schemas.UnderstandJob, schemas.CodesJob)):
        service.check_upload(body.audio, own, ("body", "audio"))
        uploads = {"audio": body.audio}
    return body.mode, {"args": args, "uploads": uploads}


def _add_job_routes(app: FastAPI, service: JobService, secured: list[Any]) -> None:
    @app.post("/v1/jobs", tags=["jobs"], dependencies=secured, status_code=202, response_model=schemas.JobStatus,
              responses={**SUBMIT_RESPONSES, 200: {"model": schemas.JobStatus,
                                                   "description": "Replay of an earlier Idempotency-Key."}},
              summary="Submit a generation (any task) or a planner job.")
    def submit(request: Request, body: Annotated[schemas.JobSubmission, Body()],
               idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)] = None,
               ) -> JSONResponse:
        own = owner(request)
        service.check_accepting(own if own != "local" else (request.client.host if request.client else "?"))
        mode, payload = submit_body(service, body, own)
        job, created = service.submit(own, mode, payload, idempotency_key,
                                      body.model_dump(mode="json", exclude_unset=True))
        return JSONResponse(service.status(job), status_code=202 if created else 200,
                            headers={"Location": f"/v1/jobs/{job.id}"})

    @app.get("/v1/jobs", tags=["jobs"], dependencies=secured, response_model=schemas.JobList,
             responses=ERROR_RESPONSES, summary="This client's jobs, newest first.")
    def list_jobs(request: Request, limit: Annotated[int, Query(ge=1, le=100)] = 50) -> dict[str, Any]:
        return {"jobs": [service.status(j) for j in service.store.list_jobs(owner(request), limit)]}

    @app.get("/v1/jobs/{job_id}", tags=["jobs"], dependencies=secured, response_model=schemas.JobStatus,
             responses=ERROR_RESPONSES, summary="Status, progress, error and outputs of a job.")
    def get_job(request: Request, job_id: JobId) -> dict[str, Any]:
        return service.status(service.get_job(job_id, owner(request)))

    @app.post("/v1/jobs/{job_id}/cancel", tags=["jobs"], dependencies=secured, response_model=schemas.JobStatus,
              responses=ERROR_RESPONSES, summary="Cancel: queued jobs end now, running ones at the next step.")
    def cancel(request: Request, job_id: JobId) -> dict[str, Any]:
        own = owner(request)
        service.get_job(job_id, own)
        job = service.store.cancel(job_id, own)
        assert job is not None
        return service.status(job)

    @app.get("/v1/jobs/{job_id}/outputs", tags=["jobs"], dependencies=secured,
             response_model=list[schemas.OutputInfo], responses=ERROR_RESPONSES, summary="Output files of a job.")
    def outputs(request: Request, job_id: JobId) -> list[dict[str, Any]]:
        return list(service.status(service.get_job(job_id, owner(request)))["outputs"])

    @app.get("/v1/jobs/{job_id}/audio/{index}", tags=["jobs"], dependencies=secured, response_class=FileResponse,
             responses={**schemas.DOWNLOAD_RESPONSES,
                        200: {"content": {"audio/*": {}}, "description": "The audio file."}},
             summary="Download output `index` of a job.")
    def audio(request: Request, job_id: JobId, index: Annotated[int, Path(ge=0, le=63)]) -> FileResponse:
        path, media = service.output_file(service.get_job(job_id, owner(request)), index)
        return FileResponse(path, media_type=media, filename=f"{job_id}-{index}{path.suffix}")

    @app.get("/v1/jobs/{job_id}/events", tags=["jobs"], dependencies=secured, response_class=StreamingResponse,
             responses={**ERROR_RESPONSES, 200: {"content": {"text/event-stream": {}},
                                                 "description": "`progress` events, then one `end` event."}},
             summary="Server-sent events with the job's progress until it ends.")
    async def events(request: Request, job_id: JobId) -> StreamingResponse:
        own = owner(request)
        job = await asyncio.to_thread(service.get_job, job_id, own)
        return StreamingResponse(_event_stream(service, request, job.id, own), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


async def _event_stream(service: JobService, request: Request, job_id: str, own: str) -> Any:
    """Emit the status whenever it changes; bounded by the job deadline (plus queueing slack)."""
    s = service.settings
    deadline = time.monotonic() + s.job_timeout_s * (s.max_attempts + 1) + 60
    last, last_sent = None, time.monotonic()
    while time.monotonic() < deadline:
        if await request.is_disconnected():
            return
        job = await asyncio.to_thread(service.store.get, job_id, own)
        if job is None:
            yield "event: end\ndata: {\"state\": \"gone\"}\n\n"
            return
        view = await asyncio.to_thread(service.status, job)
        key = (view["state"], view["progress"], view["stage"], view["queue_position"])
        if key != last:
            last, last_sent = key, time.monotonic()
            name = "end" if job.state in TERMINAL_STATES else "progress"
            yield f"event: {name}\ndata: {json.dumps(view)}\n\n"
            if name == "end":
                return
        elif time.monotonic() - last_sent > SSE_KEEPALIVE_S:
            last_sent = time.monotonic()
            yield ": keep-alive\n\n"
        await asyncio.sleep(SSE_POLL_S)
    yield "event: end\ndata: {\"state\": \"stream_timeout\"}\n\n"
