"""The Ray Serve deployment: one replica = the model + the HTTP API + a dynamic batcher.

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
from synth.serving.config import ServeArgs


@serve.deployment
@serve.ingress()
class SynthSampler:
    def __init__(self, args: dict[str, Any]):
        import torch

        from synth.serving.metrics import ServingMetrics
        from synth.serving.scheduler import ModelScheduler
        from synth.serving.service import SamplingService

        self.args = ServeArgs.parse(args)
        torch.set_num_threads(self.args.torch_threads or max(1, int(self.args.num_cpus)))
        self.token = load_token(self.args.auth_token_env)
        self.service = SamplingService(self.args, metrics=ServingMetrics(), replica=_replica_name())
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="synth-model")
        self.scheduler = ModelScheduler(self.service.run, max_requests=self.args.max_batch_size,
                                        max_cost=self.args.max_batch_cost, executor=self._pool,
                                        on_stats=self.service.observe_batches,
                                        on_release=self.service.release)
        self.submit_batch.set_max_batch_size(self.args.max_batch_size)
        self.submit_batch.set_batch_wait_timeout_s(self.args.batch_wait_timeout_s)
        self._pool.submit(self.service.warm_up).result()  # calibrate on the thread that samples

    def __serve_build_asgi_app__(self):
        from synth.serving.http import create_app

        return create_app(self, max_body_bytes=self.args.max_body_bytes)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def submit_batch(self, jobs: list) -> list:
        # Hand over and return at once: the scheduler merges these with whatever else is queued.
        return self.scheduler.submit(jobs)

    async def submit(self, job) -> Any:
        future = await self.submit_batch(job)
        return await future

    def check_health(self) -> None:
        if not self.service.ready:
            raise RuntimeError("model not ready")


def _replica_name() -> str | None:
    try:
        ctx = serve.get_replica_context()
        rid = getattr(ctx, "replica_id", None)
        return getattr(rid, "unique_id", None) or getattr(ctx, "replica_tag", None)
    except Exception:  # noqa: BLE001 - outside a replica
        return None


def deployment_options(args: ServeArgs) -> dict[str, Any]:
    opts: dict[str, Any] = {
        "name": args.deployment_name,
        "max_ongoing_requests": args.ongoing,
        "max_queued_requests": args.max_queued_requests,
        "backpressure_config": {"status_code": 503, "retry_after_s": args.retry_after_s},
        "ray_actor_options": {**args.ray_actor_options, "num_cpus": args.num_cpus, "num_gpus": args.num_gpus},
        "health_check_period_s": 10,
    }
    if args.autoscaling_config is not None:
        opts["autoscaling_config"] = args.autoscaling_config
    elif args.num_replicas is not None:
        opts["num_replicas"] = args.num_replicas
    return opts


def build_application(raw_args: dict[str, Any] | ServeArgs) -> Application:
    """The Serve application for `raw_args` (see ServeArgs). Fails fast on a missing artifact.
    `artifact_uri` may be a model artifact or a release root (synth.io.release)."""
    args = raw_args if isinstance(raw_args, ServeArgs) else ServeArgs.parse(raw_args)
    if "://" not in args.artifact_uri:  # replicas may not share the caller's working directory
        args = args.model_copy(update={"artifact_uri": os.path.abspath(os.path.expanduser(args.artifact_uri))})
    # a release root (the nightly job's) means the model its latest.json names now: every replica,
    # including one restarted later, then loads that same model
    args = args.model_copy(update={"artifact_uri": release.resolve_artifact(args.artifact_uri)})
    if not storage.exists(storage.join(args.artifact_uri, "manifest.json")):
        raise ArtifactError(f"no model artifact at {args.artifact_uri!r} (manifest.json not found); "
                            "train one with `synth fit` or fix artifact_uri")
    return SynthSampler.options(**deployment_options(args)).bind(args.model_dump(mode="json"))
