"""The Ray Serve deployment: one replica = its loaded models + the HTTP API + a dynamic batcher.

A replica serves every model of `ServeArgs.catalogue` and keeps up to `max_models_per_replica`
loaded (`@serve.multiplexed`, LRU; synth.serving.models); the default model is loaded at start-up.
Requests are validated and admitted on the replica's event loop. `@serve.batch` gathers the
admitted jobs (up to `max_batch_size` requests, waiting at most `batch_wait_timeout_s`) and hands
them to the `ModelScheduler`, which runs one model call at a time on its own thread and merges
everything that queued while the model was busy (see synth/serving/scheduler.py), so the event
loop keeps answering while the model runs.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ray import serve
from ray.serve import Application

from synth.io import release, storage
from synth.errors import ArtifactError
from synth.serving.auth import load_token
from synth.serving.config import DEFAULT_MODEL_ID, ServeArgs


@serve.deployment
@serve.ingress()
class SynthSampler:
    async def __init__(self, args: dict[str, Any]):
        import torch

        from synth.serving.metrics import ServingMetrics
        from synth.serving.models import ModelHost

        self.args = ServeArgs.parse(args)
        torch.set_num_threads(self.args.torch_threads or max(1, int(self.args.num_cpus)))
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="synth-model")  # the one model thread
        self.host = ModelHost(self.args, executor=self._pool, token=load_token(self.args.auth_token_env),
                              replica=_replica_name(), metrics=ServingMetrics, acquire=self._multiplexed_loader(),
                              batch=self.submit)
        self.submit_batch.set_max_batch_size(self.args.max_batch_size)
        self.submit_batch.set_batch_wait_timeout_s(self.args.batch_wait_timeout_s)
        await self.host.get(self.host.default_model)  # the default model is loaded and calibrated before serving

    def _multiplexed_loader(self):
        """Serve's LRU of loaded models (max_models_per_replica), which also tells its proxy which
        replica holds which model (the serve_multiplexed_model_id header routes on it)."""
        async def load_model(model_id: str):
            return await self.host.load(model_id)

        self.load_model = serve.multiplexed(max_num_models_per_replica=self.args.max_models_per_replica)(load_model)
        return self.load_model

    def __serve_build_asgi_app__(self):
        from synth.serving.http import create_app

        return create_app(self.host, max_body_bytes=self.args.max_body_bytes)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def submit_batch(self, items: list) -> list:
        # Hand over and return at once: each model's scheduler merges these with whatever else is queued.
        return [model.scheduler.submit([job])[0] for model, job in items]

    async def submit(self, model, job) -> Any:
        future = await self.submit_batch((model, job))
        return await future

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve's custom autoscaling metrics (used by synth.serving.autoscale.SLOPolicy when the
        deployment's autoscaling_config names it): measured p99 and backlog over target, 429 share."""
        return self.host.autoscaling_stats()

    def check_health(self) -> None:
        if not self.host.ready:
            raise RuntimeError("model not ready")


def _replica_name() -> str | None:
    try:
        ctx = serve.get_replica_context()
        rid = getattr(ctx, "replica_id", None)
        return getattr(rid, "unique_id", None) or getattr(ctx, "replica_tag", None)
    except Exception:  # noqa: BLE001 - outside a replica
        return None


# Ray Serve settings of the replica process (environment variables Serve reads at import, so they go in
# through the replica's runtime_env). Measured in an A/B of the same app on one core (docs/serving.md,
# "Request path"):
# - user code on the replica's own event loop instead of a second thread: one thread hop less per
#   request (the model already runs on its own thread, synth.serving.scheduler);
# - the garbage collector frozen after start-up: the objects of start-up (the loaded model, the
#   imported libraries) leave the collector's generations, so a collection no longer walks them.
# A user's ray_actor_options.runtime_env.env_vars override these.
REPLICA_ENV = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_FREEZE_GC_ON_STARTUP": "1"}


def deployment_options(args: ServeArgs) -> dict[str, Any]:
    actor = {**args.ray_actor_options, "num_cpus": args.num_cpus, "num_gpus": args.num_gpus}
    runtime_env = dict(actor.get("runtime_env") or {})
    runtime_env["env_vars"] = {**REPLICA_ENV, **(runtime_env.get("env_vars") or {})}
    actor["runtime_env"] = runtime_env
    opts: dict[str, Any] = {
        "name": args.deployment_name,
        "max_ongoing_requests": args.ongoing,
        "max_queued_requests": args.max_queued_requests,
        "backpressure_config": {"status_code": 503, "retry_after_s": args.retry_after_s},
        "ray_actor_options": actor,
        "health_check_period_s": 10,
        # one log line per request costs the replica CPU (and the proxy's, see serve/config.yaml);
        # requests are counted and timed by the Prometheus metrics (synth.serving.metrics)
        "logging_config": {"enable_access_log": args.access_log},
    }
    if args.autoscaling_config is not None:
        opts["autoscaling_config"] = args.autoscaling_config
    elif args.num_replicas is not None:
        opts["num_replicas"] = args.num_replicas
    return opts


def build_application(raw_args: dict[str, Any] | ServeArgs) -> Application:
    """The Serve application for `raw_args` (see ServeArgs). Fails fast on a missing artifact.
    Each model (`artifact_uri`, `models`) may be a model artifact or a release root (synth.io.release):
    a root means the model its latest.json names now, so every replica, including one restarted
    later, loads that same model. Artifacts are verified (and their signatures checked) when a
    replica loads them."""
    args = raw_args if isinstance(raw_args, ServeArgs) else ServeArgs.parse(raw_args)
    resolved = {model_id: _resolve(model_id, uri) for model_id, uri in args.catalogue.items()}
    update: dict[str, Any] = {"models": {k: v for k, v in resolved.items() if k in args.models}}
    if args.artifact_uri is not None:
        update["artifact_uri"] = resolved[DEFAULT_MODEL_ID]
    args = ServeArgs.parse(args.model_copy(update=update).model_dump(mode="json"))
    return SynthSampler.options(**deployment_options(args)).bind(args.model_dump(mode="json"))


def _resolve(model_id: str, uri: str) -> str:
    if "://" not in uri:  # replicas may not share the caller's working directory
        uri = os.path.abspath(os.path.expanduser(uri))
    uri = release.resolve_artifact(uri)
    if not storage.exists(storage.join(uri, "manifest.json")):
        name = "artifact_uri" if model_id == DEFAULT_MODEL_ID else f"models.{model_id}"
        raise ArtifactError(f"no model artifact at {uri!r} (manifest.json not found); "
                            f"train one with `synth fit` or fix {name}")
    return uri
