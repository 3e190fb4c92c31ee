"""The FastAPI application of ``changeclip serve`` (built by :func:`create_app`).

Every route except the liveness probe (:data:`protocol.PATH_LIVE`) needs the bearer
token, the OpenAPI document included; FastAPI's interactive docs are switched off.
Nothing from a request is executed or evaluated: a job request becomes a validated
:class:`~changeclip.protocol.DetectParams` whose paths are checked on the file
system before the job is queued.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import os
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, HTTPException, Path, Query, Request, Response, status
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from changeclip import __version__, protocol
from changeclip.errors import ChangeClipError
from changeclip.server.auth import token_matches
from changeclip.server.input_probe import probe_inputs
from changeclip.server.job_kinds import preflight_job, run_dataset, run_train
from changeclip.server.job_request import JOB_REQUEST_OPENAPI, install_job_request_schemas, read_job_request
from changeclip.server.jobs import JobConflict, JobManager, Runner, UnknownJob
from changeclip.server.journal import JobJournal
from changeclip.server.middleware import GuardMiddleware
from changeclip.server.preflight import PreflightError, preflight
from changeclip.server.schemas import (
    JobEventsModel,
    JobInfoModel,
    JobListModel,
    JobResultModel,
    LiveModel,
    MessageModel,
    StatusModel,
)
from changeclip.server.settings import MAX_BODY_BYTES, ServerSettings
from changeclip.server.system import ModelCacheLike, SystemInfo

log = logging.getLogger(__name__)

JobId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$", description="job id (32 hex digits)")]
_bearer = HTTPBearer(auto_error=False, description="the token from the file named in the handshake line")
_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": MessageModel, "description": "missing or wrong bearer token"},
}


def create_app(settings: ServerSettings, *, runner: Runner | None = None, cache: ModelCacheLike | None = None,
               system: SystemInfo | None = None, runners: dict[str, Runner] | None = None,
               describe_cache: ModelCacheLike | None = None) -> FastAPI:
    """Build the server application.

    Args:
        settings: token, default device and limits.
        runner: runs one job; default: :func:`changeclip.pipeline.run_detection` with
            ``cache`` bound (tests inject a deterministic one).
        cache: the model cache shared by all jobs; default: a new
            :class:`changeclip.inference.cache.ModelCache` bounded by the settings.
        system: device and model information for ``/v1/status`` (default: the real one).
        runners: the runners of the ``dataset`` and ``train`` kinds (default: the dataset maker
            and the trainer, :mod:`changeclip.server.job_kinds`; tests inject scripted ones).
        describe_cache: the cache of describe CLIP encoders shared by all jobs, a sibling of
            ``cache`` with the same bounds; default: a new one bounded by the settings.

    Raises:
        InputError: ``settings.state_dir`` cannot hold the job journal.

    Returns:
        The FastAPI app. ``app.state.manager`` is its :class:`JobManager`;
        ``app.state.request_shutdown`` is set by the process that serves it.
    """
    system = system or SystemInfo(settings.default_device)
    if runner is None:
        cache = cache if cache is not None else system.new_cache(settings)
        describe_cache = describe_cache if describe_cache is not None else system.new_describe_cache(settings)
        runner = _pipeline_runner(cache, system, settings.max_model_memory_gb, describe_cache=describe_cache)
    kinds: dict[str, Runner] = {"dataset": run_dataset, "train": run_train, **(runners or {})}  # type: ignore[dict-item]
    journal = JobJournal(settings.state_dir, uuid.uuid4().hex) if settings.state_dir is not None else None
    manager = JobManager(runner, system.resolve_device, max_finished=settings.max_finished_jobs, journal=journal,
                         stuck_grace_s=settings.stuck_job_grace_s, runners=kinds)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
            log.info("stopping: cancelling jobs")
            await asyncio.to_thread(manager.shutdown, settings.shutdown_timeout_s)
        finally:
            if journal is not None:
                journal.close()

    app = FastAPI(title="ChangeCLIP backend", version=__version__, lifespan=lifespan,
                  openapi_url=None, docs_url=None, redoc_url=None,
                  description="Change detection jobs on the local GPU/CPU. Every route except "
                              f"{protocol.PATH_LIVE} needs 'Authorization: Bearer <token>'.")
    app.state.manager = manager
    app.state.settings = settings
    app.state.request_shutdown = None
    app.add_middleware(GuardMiddleware, token=settings.token, public_paths=(protocol.PATH_LIVE,),
                       max_body_bytes=MAX_BODY_BYTES)

    def authorised(creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
        # The middleware refuses wrong tokens before routing; this dependency checks again
        # (defence in depth) and documents the scheme in the OpenAPI document.
        if creds is None or not token_matches(f"{creds.scheme} {creds.credentials}", settings.token):
            raise HTTPException(status_code=401, detail="missing or wrong bearer token",
                                headers={"WWW-Authenticate": "Bearer"})

    auth = [Depends(authorised)]

    @app.exception_handler(UnknownJob)
    async def _unknown(request: Request, exc: UnknownJob) -> JSONResponse:
        return JSONResponse({"detail": f"no job {exc.args[0]} (unknown id, or forgotten after it finished)"},
                            status_code=404)

    @app.exception_handler(JobConflict)
    async def _conflict(request: Request, exc: JobConflict) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler echoes each bad value back, and a NaN, an infinity or a lone
        # surrogate cannot be written as JSON (that was an HTTP 500): answer with JSON-safe copies.
        return JSONResponse({"detail": [_safe_error(e) for e in exc.errors()]}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 400 and exc.detail == _BODY_PARSE_ERROR:
            problem = _undecodable(await request.body())
            if problem:  # not JSON at all: the same 422 as malformed JSON, saying why
                return JSONResponse({"detail": [{"loc": ["body"], "msg": problem, "type": "json_invalid"}]},
                                    status_code=422)
        if exc.status_code == 405:  # name every method of the path, not just the first route's
            allowed = _allowed_methods(app, request)
            return JSONResponse({"detail": f"method {request.method} not allowed here; use {', '.join(allowed)}"},
                                status_code=405, headers={"Allow": ", ".join(allowed)})
        return await http_exception_handler(request, exc)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": f"internal server error: {type(exc).__name__}: {exc}"}, status_code=500)

    @app.get(protocol.PATH_LIVE, response_model=LiveModel, tags=["server"], summary="Liveness probe (no token)")
    def live() -> LiveModel:
        return LiveModel()

    @app.get(protocol.PATH_OPENAPI, dependencies=auth, include_in_schema=False)
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get(protocol.PATH_STATUS, response_model=StatusModel, dependencies=auth, responses=_ERRORS,
             tags=["server"], summary="Version, devices, loaded models, queues")
    def server_status() -> StatusModel:
        queues = manager.queue_lengths()
        return StatusModel(version=__version__, protocol_version=protocol.PROTOCOL_VERSION, pid=os.getpid(),
                           cuda_available=system.cuda_available(), devices=system.devices(),
                           default_device=system.resolve_device("auto"),
                           loaded_models=system.loaded_models(cache) + system.loaded_models(describe_cache),
                           queue_length=sum(queues.values()),
                           queues=queues, running=manager.running(), jobs_total=manager.count())

    @app.post(protocol.PATH_JOBS, response_model=JobInfoModel, status_code=status.HTTP_201_CREATED,
              dependencies=auth, tags=["jobs"], summary="Submit a job: detection, training data or training",
              description="The body's 'kind' picks the job: none or 'detect' (change detection), 'dataset' "
                          "(changeclip dataset from-vectors) or 'train' (changeclip train). Every kind waits in "
                          "the same queue: one job runs at a time per device, and a job submitted while another "
                          "runs is 'queued' with a message naming it.",
              responses={**_ERRORS, 400: {"model": MessageModel, "description": "a path cannot be used"},
                         409: {"model": MessageModel, "description": "output in use, or shutting down"}},
              openapi_extra=JOB_REQUEST_OPENAPI)
    def submit(body: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
        request = read_job_request(body)
        try:
            params = request.to_params()
        except protocol.ParamError as exc:
            raise _param_error(exc.field, exc.message) from None
        try:
            if isinstance(params, protocol.DetectParams):
                preflight(params)
            else:
                preflight_job(params)
        except PreflightError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from None
        try:
            info = manager.submit(params)
        except ChangeClipError as exc:  # the device cannot be used
            raise _param_error("device", str(exc)) from None
        return _info(info)

    @app.get(protocol.PATH_JOBS, response_model=JobListModel, dependencies=auth, responses=_ERRORS,
             tags=["jobs"], summary="List jobs, oldest first")
    def list_jobs() -> dict[str, Any]:
        return {"jobs": [_info(i) for i in manager.list()]}

    @app.get(protocol.PATH_JOB, response_model=JobInfoModel, dependencies=auth, tags=["jobs"],
             summary="Job state and progress",
             responses={**_ERRORS, 404: {"model": MessageModel, "description": "unknown job"}})
    def job(job_id: JobId) -> dict[str, Any]:
        return _info(manager.get(job_id))

    @app.post(protocol.PATH_JOB_CANCEL, response_model=JobInfoModel, dependencies=auth, tags=["jobs"],
              summary="Cancel a job (queued: at once; running: at its next batch)",
              responses={**_ERRORS, 404: {"model": MessageModel, "description": "unknown job"}})
    def cancel(job_id: JobId) -> dict[str, Any]:
        return _info(manager.cancel(job_id))

    @app.get(protocol.PATH_JOB_EVENTS, response_model=JobEventsModel, dependencies=auth, tags=["jobs"],
             summary="A job's events after 'since' (training: start, step, val, note, checkpoint, end)",
             responses={**_ERRORS, 404: {"model": MessageModel, "description": "unknown job"}})
    def events(job_id: JobId, since: Annotated[int, Query(ge=0, le=2**53, description="last seq already read")] = 0
               ) -> dict[str, Any]:
        found, total = manager.events(job_id, since)
        return {"job_id": job_id, "events": found, "next": total}

    @app.get(protocol.PATH_JOB_RESULT, response_model=JobResultModel, dependencies=auth, tags=["jobs"],
             summary="Output paths and summary of a succeeded job",
             responses={**_ERRORS, 404: {"model": MessageModel, "description": "unknown job"},
                        409: {"model": MessageModel, "description": "the job has not succeeded"}})
    def result(job_id: JobId) -> dict[str, Any]:
        summary = manager.result(job_id)
        outputs = summary.get("outputs")
        return {"job_id": job_id, "outputs": outputs if isinstance(outputs, dict) else {}, "summary": summary}

    @app.post(protocol.PATH_SHUTDOWN, response_model=MessageModel, status_code=status.HTTP_202_ACCEPTED,
              dependencies=auth, tags=["server"], summary="Cancel all jobs and stop the server",
              responses={**_ERRORS, 503: {"model": MessageModel, "description": "not served by changeclip serve"}})
    def shutdown() -> MessageModel:
        stop: Callable[[], None] | None = app.state.request_shutdown
        if stop is None:
            raise HTTPException(status_code=503, detail="this app is not run by 'changeclip serve'; stop it there")
        manager.close()
        stop()
        return MessageModel(detail="shutting down: jobs cancelled, partial outputs are being removed")

    install_job_request_schemas(app)
    return app


def _allowed_methods(app: FastAPI, request: Request) -> list[str]:
    """Every method some route accepts on the request's path."""
    methods: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


_BODY_PARSE_ERROR = "There was an error parsing the body"
"""FastAPI's 400 detail for a body it could not decode (e.g. bytes that are not UTF-8)."""


def _undecodable(body: bytes) -> str | None:
    """Why ``body`` is not UTF-8 text, or ``None`` if it is."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return (f"the body is not valid UTF-8 (byte 0x{body[exc.start]:02x} at offset {exc.start}); "
                "send the job as JSON encoded in UTF-8")
    return None


def _safe_error(error: Any) -> dict[str, Any]:
    """One pydantic error as JSON-safe data: ``loc``, ``msg``, ``type`` and the received ``input``
    (non-finite numbers as strings such as ``"nan"``, lone surrogates escaped)."""
    out = {"loc": [_json_safe(part) for part in error.get("loc", ())], "msg": str(error.get("msg", "")),
           "type": str(error.get("type", ""))}
    if error.get("type") == "finite_number":
        out["msg"] = "must be a finite number (NaN and infinities, e.g. 1e999, are not allowed)"
    elif error.get("type") == "string_unicode":
        out["msg"] = ("must be valid Unicode text: it holds a lone surrogate (such as \\udcff, from a name that "
                      "is not UTF-8); rename the file or folder to a UTF-8 name")
    if "input" in error:
        out["input"] = _json_safe(error["input"])
    return out


def _json_safe(value: Any) -> Any:
    """``value`` with every non-finite float turned into its name and every string made encodable."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_json_safe(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return _json_safe(str(value))


def _info(info: protocol.JobInfo) -> dict[str, Any]:
    return dataclasses.asdict(info)


def _param_error(field_name: str, message: str) -> HTTPException:
    """A 422 shaped like FastAPI's own validation errors, naming the field."""
    return HTTPException(status_code=422,
                         detail=[{"loc": ["body", field_name], "msg": message, "type": "param_error"}])


def _pipeline_runner(cache: ModelCacheLike, system: SystemInfo, max_model_memory_gb: float | None,
                     describe_cache: ModelCacheLike | None = None) -> Runner:
    """The real runner: :func:`input_probe.probe_inputs` (cancellable), then
    :func:`changeclip.pipeline.run_detection` with ``cache`` and ``describe_cache``, then the GPU
    memory bound on the cached models (the detection models are unloaded first, then the describe
    encoders if the device is still over the bound)."""

    def run(params: protocol.DetectParams, progress: Callable[[str, int, int], None],
            is_cancelled: Callable[[], bool]) -> dict[str, Any]:
        from changeclip.pipeline import run_detection

        progress("preparing", 0, 1)
        probe_inputs(params, is_cancelled)  # a read that would block GDAL for good blocks only a child
        try:
            return run_detection(params, progress=progress, is_cancelled=is_cancelled, cache=cache,
                                 describe_cache=describe_cache)
        finally:
            system.enforce_memory_bound(cache, params.device, max_model_memory_gb)
            if describe_cache is not None:
                system.enforce_memory_bound(describe_cache, params.device, max_model_memory_gb)

    return run
