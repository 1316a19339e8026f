"""The SecondThought Serve application: an HTTP ingress (FastAPI) in front of a model deployment that batches.

``serve run serve/config.yaml``, ``serve deploy serve/config.yaml`` and ``secondthought serve --model DIR`` all
build it with :func:`build_app` (the config's ``import_path``); a KubeRay RayService embeds the same config. The
routes' logic is in secondthought.serving.handlers (plain functions); the model in secondthought.serving.replica.

Routes: ``/`` (the correction page), ``/healthz``, ``/v1/realign``, ``/v1/edits/apply``, ``/v1/models``,
``/v1/completions`` (OpenAI's shape, ``stream: true`` as server-sent events).
"""

import asyncio
import json
import os
import re
import threading
import time
from dataclasses import asdict
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from secondthought.config import ConfigError, ServeConfig
from secondthought.runs import model_folder, read_model_info
from secondthought.serving.guard import Guard, Limits
from secondthought.serving.handlers import (
    ApiError,
    CompletionJob,
    RealignJob,
    apply_edits,
    completion_body,
    completion_id,
    completion_jobs,
    decoding_of,
    models_body,
    realign_job,
    stream_chunk,
)
from secondthought.serving.requests import (
    ApplyRequest,
    ApplyResponse,
    CompletionRequest,
    RealignRequest,
    RealignResponse,
)

PAGE = Path(__file__).with_name("page") / "index.html"


@serve.deployment(max_ongoing_requests=32, ray_actor_options={"num_cpus": 1})
class Realigner:
    """One model replica: decodes the requests @serve.batch gathers, in one batch."""

    def __init__(self, args: dict, name: str):
        import ray

        from secondthought.serving.replica import Replica

        cfg = ServeConfig(**args)
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
        self.replica = Replica(cfg, name=name, cpus=cpus)
        self.cfg, self.streams = cfg, threading.BoundedSemaphore(cfg.max_streams)
        for method in (self._realign, self._complete):
            method.set_max_batch_size(cfg.max_batch_size)
            method.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _realign(self, jobs: list[RealignJob]) -> list:
        return await asyncio.to_thread(self.replica.realign, jobs)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _complete(self, jobs: list[CompletionJob]) -> list:
        return await asyncio.to_thread(self.replica.complete, jobs)

    async def realign(self, job: RealignJob) -> dict:
        return _raised(await self._realign(job))

    async def complete(self, job: CompletionJob) -> tuple:
        return _raised(await self._complete(job))

    def stream(self, job: CompletionJob):
        if not self.streams.acquire(blocking=False):
            raise ApiError("stream", f"this replica is decoding {self.cfg.max_streams} streams already: retry shortly",
                           status=503)
        try:
            yield from self.replica.stream(job)
        finally:
            self.streams.release()

    def check_health(self) -> None:
        self.replica.healthy()


def _raised(result):
    if isinstance(result, ApiError):
        raise result
    return result


api = FastAPI(title="SecondThought", description="Realign text by chains of edits: the model writes the edits, "
              "you see, correct and apply them.", version="0.1.0")
LIMITS = Limits()
api.add_middleware(Guard, limits=LIMITS)


@api.exception_handler(ApiError)
async def _api_error(request: Request, e: ApiError) -> JSONResponse:
    e = getattr(e, "cause", e)  # raised in a model replica: Ray's wrapper of it carries it as its cause
    return JSONResponse(e.body(), status_code=e.status)


@api.exception_handler(BackPressureError)
async def _busy(request: Request, e: BackPressureError) -> JSONResponse:
    """The model replicas' queues are full (max_queued_requests): come back later, as Serve's own 503 says."""
    body = {"error": {"message": "the server is busy: every model replica's queue is full, retry shortly",
                      "type": "server_busy", "param": None, "code": 503}}
    return JSONResponse(body, status_code=503, headers={"Retry-After": "1"})


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
    """FastAPI's own refusals (no such route, a method the route does not take) in OpenAI's shape too."""
    body = {"error": {"message": str(e.detail), "type": "invalid_request_error", "param": None, "code": e.status_code}}
    return JSONResponse(body, status_code=e.status_code, headers=getattr(e, "headers", None))


@api.exception_handler(RequestValidationError)
async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
    first = e.errors()[0]
    # a field's path, less pydantic's names for the branches of a union (``function-after[...]``, ``list[...]``)
    where = ".".join(str(p) for p in first["loc"] if p != "body" and re.fullmatch(r"\w+", str(p))) or "body"
    return JSONResponse(ApiError(where, first["msg"]).body(), status_code=422)


@serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 0.1})
@serve.ingress(api)
class Api:
    """The HTTP side: checks each request (4xx naming the field), hands it to the model deployment."""

    def __init__(self, model: DeploymentHandle, args: dict, name: str):
        self.model, self.cfg, self.name = model, ServeConfig(**args), name
        LIMITS.max_body_bytes = self.cfg.max_body_bytes  # one ingress per process: its middleware reads these
        LIMITS.api_key = self.cfg.api_key or os.environ.get("SECONDTHOUGHT_API_KEY", "")
        self.info = read_model_info(self.cfg.model)
        self.created = int(time.time())

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page(self) -> HTMLResponse:
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    @api.get("/healthz")
    def healthz(self) -> dict:
        return {"status": "ok", "model": self.name}

    @api.get("/v1/models")
    def models(self) -> dict:
        return models_body(self.name, self.created)

    async def _call(self, method: str, job):
        """The model's answer; once more on another replica if the one that had it died (answers are
        deterministic for a request, so asking twice is safe)."""
        try:
            return await getattr(self.model, method).remote(job)
        except RayActorError:  # also ActorUnavailableError
            return await getattr(self.model, method).remote(job)

    @api.post("/v1/realign", response_model=RealignResponse)
    async def realign(self, req: RealignRequest) -> dict:
        return await self._call("realign", realign_job(req, self.cfg, self.info.writes_chains, self.info.format,
                                                           decoding_of(self.cfg, self.info) == "derived"))

    @api.post("/v1/edits/apply", response_model=ApplyResponse)
    def apply(self, req: ApplyRequest) -> dict:
        return apply_edits(req, self.cfg)

    @api.post("/v1/completions")
    async def completions(self, req: CompletionRequest):
        if req.model not in (None, self.name):
            raise ApiError("model", f"this server serves {self.name!r}, not {req.model!r}", status=404)
        jobs = completion_jobs(req, self.cfg)
        if req.stream:
            if len(jobs) != 1:
                raise ApiError("prompt", "stream one prompt at a time")
            return StreamingResponse(self._events(jobs[0]), media_type="text/event-stream")
        results = await asyncio.gather(*(self._call("complete", job) for job in jobs))
        return completion_body(self.name, [(text, reason) for text, reason, _, _ in results],
                               sum(r[2] for r in results), sum(r[3] for r in results))

    async def _events(self, job: CompletionJob):
        cid, created = completion_id(), int(time.time())
        try:
            async for text, reason in self.model.options(stream=True).stream.remote(job):
                yield f"data: {json.dumps(stream_chunk(cid, created, self.name, text, reason))}\n\n"
        except Exception as e:  # headers are sent: the error goes in the stream, as OpenAI does, then [DONE]
            error = getattr(e, "cause", e)
            if not isinstance(error, ApiError):
                error = ApiError("request", f"the server failed on this stream ({type(error).__name__})", status=500)
            yield f"data: {json.dumps(error.body())}\n\n"
        yield "data: [DONE]\n\n"


def build_app(args: dict) -> serve.Application:
    """The application for ``args`` (ServeConfig's fields; ``model`` required). Refuses a bad config here, before
    any replica starts."""
    try:
        cfg = ServeConfig(**args)
    except TypeError as e:
        raise ConfigError(f"serve config: {e}") from None
    if not cfg.model:
        raise ConfigError("serve config: args.model is required (the model folder to serve)")
    folder = model_folder(cfg.model, "args.model")
    settings = asdict(cfg) | {"model": str(folder)}
    info = read_model_info(folder)
    name = f"secondthought-{info.stage or 'model'}"
    return Api.bind(Realigner.bind(settings, name), settings, name)
