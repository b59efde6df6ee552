"""Several models from one deployment: which ids exist, which are loaded here, and loading them.

`ServeArgs.catalogue` names every model the deployment serves (id -> artifact; `artifact_uri` is the
model "default"). A replica holds some of them loaded, each as a `LoadedModel`: its own
SamplingService (SLO window, closed loop, admission, calibration, metrics tagged with the id) and
its own ModelScheduler, all on the replica's one model thread. `ModelHost` is what the HTTP app
(synth.serving.http) talks to:

- `get(id)`: the loaded model, loading it when needed (unknown id -> UnknownModel, 404; a load that
  fails -> ModelUnavailable for that id only: 500 when the artifact is refused, 503 otherwise, and
  the failure is remembered for `model_retry_s` so a broken artifact is not re-read per request).
- `resident(id)`: the model if loaded now, never loading (the admission check before the body).
- `load(id)`: read and verify the artifact (integrity; the signature with require_signature), then
  calibrate it on the model thread.

In the Serve deployment `get` goes through `@serve.multiplexed` (the `acquire` hook): Serve keeps
at most `max_models_per_replica` loaded, evicts the least recently used one (calling
`LoadedModel.__del__`), and its proxy routes a request with the `serve_multiplexed_model_id` header to
a replica that has that model loaded. In-process (tests, no Ray) every model stays loaded.
"""
from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import Executor
from typing import Any, Awaitable, Callable

from synth.errors import ArtifactError
from synth.serving.batching import Job
from synth.serving.config import ServeArgs
from synth.serving.scheduler import ModelScheduler
from synth.serving.service import SamplingService

MODEL_HEADER = "serve_multiplexed_model_id"  # Serve's header; "serve-multiplexed-model-id" is the same
MAX_ECHO = 64  # characters of an unknown id echoed back


class UnknownModel(LookupError):
    """A model id this deployment does not serve (404)."""

    def __init__(self, model_id: str):
        shown = model_id if len(model_id) <= MAX_ECHO else model_id[:MAX_ECHO] + "..."
        super().__init__(f"unknown model {shown!r}; GET /v1/models lists the models this endpoint serves")
        self.model_id = model_id


class ModelUnavailable(Exception):
    """A configured model that could not be loaded on this replica: 500 when its artifact is refused
    (damaged, unsigned, unknown family), 503 when loading failed otherwise (storage); both with
    Retry-After, the time before this replica tries again."""

    def __init__(self, model_id: str, reason: str, status: int, retry_after_s: float):
        super().__init__(f"model {model_id!r} could not be loaded: {reason}")
        self.model_id = model_id
        self.status = status
        self.retry_after_s = retry_after_s


class LoadedModel:
    """One model loaded in a replica: its service and its scheduler on the replica's model thread."""

    def __init__(self, service: SamplingService, executor: Executor | None,
                 on_unload: Callable[["LoadedModel"], None], loop: asyncio.AbstractEventLoop | None):
        a = service.args
        self.id = service.model_id
        self.service = service
        self.scheduler = ModelScheduler(service.run, max_requests=a.max_batch_size, max_cost=a.max_batch_cost,
                                        executor=executor, on_stats=service.observe_batches,
                                        on_release=service.release)
        self.loaded_at = time.time()
        self._on_unload = on_unload
        self._loop = loop
        self._unloaded = False
        self._lock = threading.Lock()

    async def submit(self, job: Job) -> Any:
        return await self.scheduler.submit([job])[0]

    def __del__(self) -> None:
        """Serve's multiplexer calls this when it evicts the model (from a worker thread); requests
        already admitted still finish on it. Runs once (garbage collection calls it again)."""
        with self._lock:
            if self._unloaded:
                return
            self._unloaded = True
        if self._loop is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._on_unload, self)
                return
            except RuntimeError:  # the loop is shutting down
                pass
        self._on_unload(self)


class ModelHost:
    """The models of one replica, as the HTTP app sees them.

    `acquire(id) -> LoadedModel` loads or returns a loaded model (default: `load` once, then keep it);
    the deployment passes its `@serve.multiplexed` function. `batch(model, job)` hands a job to the
    model (default: its scheduler); the deployment passes its `@serve.batch` method."""

    def __init__(self, args: ServeArgs, *, executor: Executor | None, token: bytes | None = None,
                 replica: str | None = None, metrics: Callable[[str], Any] | None = None,
                 acquire: Callable[[str], Awaitable[LoadedModel]] | None = None,
                 batch: Callable[[LoadedModel, Job], Awaitable[Any]] | None = None):
        self.args = args
        self.token = token
        self.replica = replica
        self.executor = executor
        self._metrics = metrics
        self._acquire = acquire or self._keep_loaded
        self._batch = batch
        self._resident: dict[str, LoadedModel] = {}
        self._costs: dict[str, dict] = {}  # id -> cost, kept after an eviction
        self._failures: dict[str, tuple[float, ModelUnavailable]] = {}
        self._stat_counts: dict[str, tuple[int, int]] = {}  # for autoscaling_stats
        self.ready = False

    # -- which model --------------------------------------------------------------------------
    @property
    def default_model(self) -> str:
        return self.args.default_id

    def check(self, model_id: str) -> str:
        if model_id not in self.args.catalogue:
            raise UnknownModel(model_id)
        return model_id

    def resident(self, model_id: str) -> LoadedModel | None:
        """The model if it is loaded on this replica now (never loads)."""
        return self._resident.get(model_id)

    async def get(self, model_id: str) -> LoadedModel:
        """The loaded model `model_id`, loading it when needed."""
        self.check(model_id)
        failed = self._failures.get(model_id)
        if failed is not None:
            at, error = failed
            left = self.args.model_retry_s - (time.monotonic() - at)
            if left > 0:
                error.retry_after_s = left
                raise error
            del self._failures[model_id]
        return await self._acquire(model_id)

    async def submit(self, model: LoadedModel, job: Job) -> Any:
        return await (self._batch(model, job) if self._batch is not None else model.submit(job))

    # -- loading ------------------------------------------------------------------------------
    async def load(self, model_id: str) -> LoadedModel:
        """Read, verify and calibrate `model_id` on the model thread (calibration times the thread
        that samples). Raises ModelUnavailable, remembered for model_retry_s."""
        loop = asyncio.get_running_loop()
        metrics = self._metrics(model_id) if self._metrics is not None else None
        t0 = time.perf_counter()
        try:
            service = await loop.run_in_executor(self.executor, self._build, model_id, metrics)
        except Exception as e:  # noqa: BLE001 - every load failure is that model's alone
            refused = isinstance(e, ArtifactError)
            error = ModelUnavailable(model_id, str(e) if refused else f"{type(e).__name__}: {e}",
                                     500 if refused else 503, self.args.model_retry_s)
            self._failures[model_id] = (time.monotonic(), error)
            if metrics is not None:
                metrics.model_load("failed")
            raise error from None
        if metrics is not None:
            metrics.model_load("loaded", (time.perf_counter() - t0) * 1000.0)
        return self.add(service, loop)

    def _build(self, model_id: str, metrics: Any) -> SamplingService:
        service = SamplingService(self.args, metrics=metrics, replica=self.replica, model_id=model_id)
        service.warm_up()
        return service

    def add(self, service: SamplingService, loop: asyncio.AbstractEventLoop | None = None) -> LoadedModel:
        """Hold an already loaded service (in-process apps and tests build their own)."""
        model = LoadedModel(service, self.executor, self._unloaded, loop)
        self._resident[model.id] = model
        self._costs[model.id] = service.cost()
        self.ready = True
        return model

    def _unloaded(self, model: LoadedModel) -> None:
        model.scheduler.close()
        if self._resident.get(model.id) is model:
            del self._resident[model.id]
        model.service.metrics.model_load("evicted")

    async def _keep_loaded(self, model_id: str) -> LoadedModel:
        return self._resident.get(model_id) or await self.load(model_id)

    def autoscaling_stats(self) -> dict[str, float]:
        """What this replica tells the SLO autoscaling policy (synth.serving.autoscale)."""
        from synth.serving.autoscale import replica_stats

        return replica_stats([m.service for m in list(self._resident.values())], self._stat_counts)

    # -- GET /v1/models -----------------------------------------------------------------------
    def listing(self) -> dict[str, Any]:
        now = time.monotonic()
        models = []
        for model_id, uri in self.args.catalogue.items():
            failed = self._failures.get(model_id)
            models.append({
                "id": model_id, "default": model_id == self.default_model, "loaded": model_id in self._resident,
                "artifact_uri": uri, "cost": self._costs.get(model_id),
                "load_error": str(failed[1]) if failed and now - failed[0] < self.args.model_retry_s else None})
        return {"models": models, "default_model": self.default_model,
                "max_models_per_replica": self.args.max_models_per_replica, "replica": self.replica,
                "header": MODEL_HEADER}
