"""The HTTP API (FastAPI): routes, auth, body limit, error mapping.

`create_app(backend)` builds the app around a backend that has `.service` (a SamplingService),
`.token` (bytes or None) and `async submit(job) -> bytes | BaseException`. The Serve deployment is
one backend (with `@serve.batch`); tests can pass a plain in-process one.

Status codes: 200; 401 missing/wrong bearer token; 413 body over the limit; 422 invalid request
(field-level `detail` like FastAPI's: loc, msg, type); 429 replica over its admission limits
(Retry-After; the closed loop's limit is checked before the body is read); 503 from Serve when its queue is full (Retry-After, see backpressure_config) or
from /readyz before the replica is ready. 5xx otherwise means a bug.
"""
from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from fastapi import FastAPI, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from synth.serving.auth import authorized
from synth.serving.schemas import MEDIA_TYPES, ModelInfo, SampleRequest, SampleResponse, SLOReport
from synth.serving.service import Overloaded, RequestProblem, retry_after_header

PROTECTED_PREFIX = "/v1/"
SAMPLE_PATH = "/v1/sample"

_bearer = HTTPBearer(auto_error=False, description="Bearer token (only when the deployment sets auth_token_env)")


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

    def __init__(self, app, backend, max_body_bytes: int):
        self.app = app
        self.backend = backend
        self.max_body = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        scope["synth.t0"] = time.perf_counter()  # the request's time in the replica
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if _route_path(scope).startswith(PROTECTED_PREFIX) and \
                not authorized(self.backend.token, headers.get("authorization")):
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
        if _route_path(scope) == SAMPLE_PATH:
            try:  # the closed loop's admission limit, before the body is read or parsed (cheap refusals)
                self.backend.service.shed()
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
    422: {"description": "invalid request; `detail` lists each bad field"},
    429: {"description": "replica over its admission limits; retry after Retry-After seconds"},
    503: {"description": "Serve's queue is full or no replica is ready; retry after Retry-After seconds"},
}


def create_app(backend, *, max_body_bytes: int = 1 << 20) -> FastAPI:
    app = FastAPI(
        title="synth sampling API",
        version="1",
        description="Synthetic rows from a trained synth model, on demand. "
                    "GET /v1/model describes the model; POST /v1/sample draws rows.",
    )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": _clean_errors(exc.errors())})

    @app.post("/v1/sample", response_class=Response, responses=SAMPLE_RESPONSES,
              summary="Draw synthetic rows")
    async def sample(req: SampleRequest, request: Request,
                     _auth: HTTPAuthorizationCredentials | None = Security(_bearer)) -> Response:
        t0 = request.scope.get("synth.t0") or time.perf_counter()
        svc = backend.service
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
            result = await backend.submit(job)
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
        return Response(content=result, media_type=MEDIA_TYPES[job.fmt], headers=headers)

    @app.get("/v1/model", response_model=ModelInfo, response_model_by_alias=True,
             summary="Schema, condition columns and values, samplers, defaults, SLO")
    async def model(_auth: HTTPAuthorizationCredentials | None = Security(_bearer)) -> dict:
        return backend.service.model_info()

    @app.get("/v1/slo", response_model=SLOReport, summary="Recent latency of this replica against the p99 target")
    async def slo(window_s: float | None = Query(None, gt=0, le=3600, description="default 300 s"),
                  _auth: HTTPAuthorizationCredentials | None = Security(_bearer)) -> dict:
        return backend.service.slo_report(window_s)

    @app.get("/healthz", summary="Liveness")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: model loaded and calibrated")
    async def readyz() -> JSONResponse:
        ready = bool(backend.service.ready)
        return JSONResponse(status_code=200 if ready else 503, content={"ready": ready})

    app.add_middleware(GuardMiddleware, backend=backend, max_body_bytes=max_body_bytes)
    return app
