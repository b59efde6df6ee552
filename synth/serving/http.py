"""The HTTP API (FastAPI): routes, auth, body limit, error mapping.

`create_app(host)` builds the app around a `ModelHost` (synth.serving.models): the models this
endpoint serves, the ones loaded here, and how a job reaches a model. The Serve deployment's host
loads through `@serve.multiplexed` and batches with `@serve.batch`; tests use a plain in-process one.

A request names its model by the path (`/v1/models/{id}/...`) or by the `serve_multiplexed_model_id`
header (which Serve's proxy also routes on); without either it is the default model, so
`/v1/sample`, `/v1/model` and `/v1/slo` keep their single-model meaning.

Status codes: 200; 400 the path and the header name different models; 401 missing/wrong bearer
token; 404 unknown model id; 413 body over the limit; 422 invalid request (field-level `detail` like
FastAPI's: loc, msg, type); 429 replica over its admission limits (Retry-After; the closed loop's
limit is checked before the body is read); 500 the model's artifact was refused when loading it
(damaged, unsigned); 503 from Serve when its queue is full (Retry-After, see backpressure_config),
a model that failed to load for another reason (Retry-After), or /readyz before the replica is
ready. 5xx otherwise means a bug.
"""
from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

from fastapi import FastAPI, Header, Path, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from synth.serving.auth import authorized
from synth.serving.models import MODEL_HEADER, LoadedModel, ModelHost, ModelUnavailable, UnknownModel
from synth.serving.schemas import MEDIA_TYPES, ModelInfo, ModelList, SampleRequest, SampleResponse, SLOReport
from synth.serving.service import Overloaded, RequestProblem, retry_after_header

PROTECTED_PREFIX = "/v1/"
SAMPLE_PATH = re.compile(r"^/v1/(?:models/([^/]+)/)?sample$")  # group 1: the model id of the path form

_bearer = HTTPBearer(auto_error=False, description="Bearer token (only when the deployment sets auth_token_env)")


class ModelConflict(Exception):
    """The path and the header name different models (400)."""


def header_model(headers: dict[str, str]) -> str | None:
    """The model id of the serve_multiplexed_model_id header (either spelling), if any."""
    for key, value in headers.items():
        if key.lower().replace("-", "_") == MODEL_HEADER and value:
            return value
    return None


def requested_model(host: ModelHost, path_id: str | None, headers: dict[str, str]) -> str:
    """The model a request names: the path's, else the header's, else the default."""
    header = header_model(headers)
    if path_id is not None and header is not None and header != path_id:
        raise ModelConflict(f"the path names model {path_id[:64]!r} but the {MODEL_HEADER} header names "
                            f"{header[:64]!r}; give one, or the same in both")
    return host.check(path_id or header or host.default_model)


def _route_path(scope: dict) -> str:
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):] or "/"
    return path


async def _send_json(send, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
    payload = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


class GuardMiddleware:
    """Bearer auth on /v1/* and the body-size limit, before any parsing (pure ASGI)."""

    def __init__(self, app, host: ModelHost, max_body_bytes: int):
        self.app = app
        self.host = host
        self.max_body = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        scope["synth.t0"] = time.perf_counter()  # the request's time in the replica
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if _route_path(scope).startswith(PROTECTED_PREFIX) and \
                not authorized(self.host.token, headers.get("authorization")):
            return await _send_json(send, 401, {"detail": "missing or invalid bearer token"},
                                    {"WWW-Authenticate": "Bearer"})
        too_big = {"detail": [{"loc": ["body"], "type": "body_too_large",
                               "msg": f"request body is larger than {self.max_body} bytes"}]}
        length = headers.get("content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                declared = -1
            if declared < 0:
                return await _send_json(send, 400, {"detail": "invalid Content-Length header"})
            if declared > self.max_body:
                return await _send_json(send, 413, too_big)
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        sample = SAMPLE_PATH.match(_route_path(scope))
        loaded = None
        if sample is not None:
            try:
                loaded = self.host.resident(requested_model(self.host, sample.group(1), headers))
            except (UnknownModel, ModelConflict):
                pass  # the route answers it
        if loaded is not None:
            try:  # the model's closed-loop admission limit, before the body is read or parsed (cheap refusals)
                loaded.service.shed()
            except Overloaded as e:
                return await _send_json(send, 429, {"detail": f"replica is over its {e.reason} limit; retry later"},
                                        {"Retry-After": retry_after_header(e.retry_after_s)})
        # Read the whole body under the limit (chunked uploads have no Content-Length), then replay it.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return await _send_json(send, 413, too_big)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


def _clean_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Validation errors without the offending input (it may hold NaN or huge values)."""
    out = []
    for e in errors:
        item = {"loc": [str(p) if not isinstance(p, int) else p for p in e.get("loc", ())],
                "msg": str(e.get("msg", "invalid value")), "type": str(e.get("type", "value_error"))}
        out.append(item)
    return out


SAMPLE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "the rows; settings used are in X-Synth-Sampler, X-Synth-Steps, X-Synth-NFE, "
                         "X-Synth-Seed and X-Synth-Guidance",
          "content": {MEDIA_TYPES["json"]: {"schema": SampleResponse.model_json_schema()},
                      MEDIA_TYPES["arrow"]: {"schema": {"type": "string", "format": "binary"}},
                      MEDIA_TYPES["parquet"]: {"schema": {"type": "string", "format": "binary"}}}},
    401: {"description": "missing or invalid bearer token"},
    413: {"description": "request body over the limit"},
    404: {"description": "unknown model id (GET /v1/models lists them)"},
    422: {"description": "invalid request; `detail` lists each bad field"},
    429: {"description": "replica over its admission limits; retry after Retry-After seconds"},
    500: {"description": "the model's artifact was refused when loading it (damaged, unsigned)"},
    503: {"description": "Serve's queue is full, no replica is ready, or the model failed to load; retry after "
                         "Retry-After seconds"},
}


_MODEL_ID = Path(description="a model id (GET /v1/models lists them)", max_length=200)
_HEADER_DOC = Header(None, alias=MODEL_HEADER, description="model id; Serve's proxy routes the request to a replica "
                                                          "that has this model loaded. Default: the default model")


def create_app(host: ModelHost, *, max_body_bytes: int = 1 << 20) -> FastAPI:
    app = FastAPI(
        title="synth sampling API",
        version="1",
        description="Synthetic rows from trained synth models, on demand. GET /v1/models lists the models; "
                    "GET /v1/model describes one; POST /v1/sample draws rows (the default model, or the one the "
                    f"{MODEL_HEADER} header names); POST /v1/models/{{id}}/sample draws rows from model id.",
    )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": _clean_errors(exc.errors())})

    @app.exception_handler(UnknownModel)
    async def _unknown(_: Request, exc: UnknownModel) -> JSONResponse:
        return JSONResponse(status_code=404, content={"detail": str(exc)})

    @app.exception_handler(ModelConflict)
    async def _conflict(_: Request, exc: ModelConflict) -> JSONResponse:
        return JSONResponse(status_code=400, content={"detail": str(exc)})

    @app.exception_handler(ModelUnavailable)
    async def _unavailable(_: Request, exc: ModelUnavailable) -> JSONResponse:
        return JSONResponse(status_code=exc.status, content={"detail": str(exc)},
                            headers={"Retry-After": retry_after_header(exc.retry_after_s)})

    async def model_of(request: Request, path_id: str | None = None) -> LoadedModel:
        return await host.get(requested_model(host, path_id, dict(request.headers)))

    async def sample(req: SampleRequest, request: Request, model: LoadedModel) -> Response:
        t0 = request.scope.get("synth.t0") or time.perf_counter()
        svc = model.service
        try:
            job = svc.validate(req)
        except RequestProblem as e:
            return JSONResponse(status_code=422, content={"detail": e.errors})
        try:
            svc.admit(job)
        except Overloaded as e:
            return JSONResponse(status_code=429, headers={"Retry-After": retry_after_header(e.retry_after_s)},
                                content={"detail": f"replica is over its {e.reason} limit; retry later"})
        try:
            result = await host.submit(model, job)
        except asyncio.CancelledError:  # the client went away: the model stops at its next batch
            job.cancelled = True
            raise
        finally:
            if not job.busy:  # else the scheduler releases it when the model thread lets go
                svc.release(job)
        if isinstance(result, BaseException):
            raise result
        latency_ms = (time.perf_counter() - t0) * 1000.0
        svc.record(job, latency_ms)
        headers = svc.headers(job)
        headers["X-Synth-Latency-Ms"] = f"{latency_ms:.2f}"
        headers["X-Synth-Model"] = model.id
        if host.replica:
            headers["X-Synth-Replica"] = host.replica  # which Serve replica answered (Ray's replica id)
        return Response(content=result, media_type=MEDIA_TYPES[job.fmt], headers=headers)

    @app.post("/v1/sample", response_class=Response, responses=SAMPLE_RESPONSES,
              summary="Draw synthetic rows (the default model, or the header's)")
    async def sample_default(req: SampleRequest, request: Request, _model: str | None = _HEADER_DOC,
                             _auth: HTTPAuthorizationCredentials | None = Security(_bearer)) -> Response:
        return await sample(req, request, await model_of(request))

    @app.post("/v1/models/{model_id}/sample", response_class=Response, responses=SAMPLE_RESPONSES,
              summary="Draw synthetic rows from one model")
    async def sample_model(req: SampleRequest, request: Request, model_id: str = _MODEL_ID,
                           _auth: HTTPAuthorizationCredentials | None = Security(_bearer)) -> Response:
        return await sample(req, request, await model_of(request, model_id))

    @app.get("/v1/models", response_model=ModelList,
             summary="The models this endpoint serves, which are loaded on the answering replica, their cost")
    async def models(_auth: HTTPAuthorizationCredentials | None = Security(_bearer)) -> dict:
        return host.listing()

    @app.get("/v1/model", response_model=ModelInfo, response_model_by_alias=True,
             summary="Schema, condition columns and values, samplers, defaults, cost, SLO (default or header model)")
    async def model(request: Request, _model: str | None = _HEADER_DOC,
                    _auth: HTTPAuthorizationCredentials | None = Security(_bearer)) -> dict:
        return (await model_of(request)).service.model_info()

    @app.get("/v1/models/{model_id}", response_model=ModelInfo, response_model_by_alias=True,
             summary="Schema, condition columns and values, samplers, defaults, cost, SLO of one model")
    async def model_by_id(request: Request, model_id: str = _MODEL_ID,
                          _auth: HTTPAuthorizationCredentials | None = Security(_bearer)) -> dict:
        return (await model_of(request, model_id)).service.model_info()

    window = Query(None, gt=0, le=3600, description="default 300 s")

    @app.get("/v1/slo", response_model=SLOReport,
             summary="Recent latency of this replica against the p99 target (default or header model)")
    async def slo(request: Request, window_s: float | None = window, _model: str | None = _HEADER_DOC,
                  _auth: HTTPAuthorizationCredentials | None = Security(_bearer)) -> dict:
        return (await model_of(request)).service.slo_report(window_s)

    @app.get("/v1/models/{model_id}/slo", response_model=SLOReport,
             summary="Recent latency of one model on this replica against the p99 target")
    async def slo_by_id(request: Request, model_id: str = _MODEL_ID, window_s: float | None = window,
                        _auth: HTTPAuthorizationCredentials | None = Security(_bearer)) -> dict:
        return (await model_of(request, model_id)).service.slo_report(window_s)

    @app.get("/healthz", summary="Liveness")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: the default model loaded and calibrated")
    async def readyz() -> JSONResponse:
        ready = bool(host.ready)
        return JSONResponse(status_code=200 if ready else 503, content={"ready": ready})

    app.add_middleware(GuardMiddleware, host=host, max_body_bytes=max_body_bytes)
    return app
