"""Connecting to Ray: join the cluster a job was submitted to, or start a local one."""
from __future__ import annotations

import os

from synth.errors import ConfigError


def ensure_ray(num_cpus: int | None = None) -> None:
    """`ray job submit` sets RAY_ADDRESS and we join that cluster; otherwise start a local Ray.

    Locally we declare at least 4 logical CPUs: on a 2-core machine Ray Data + a 2-worker
    trainer otherwise waits forever for resources (see STACK_NOTES).
    """
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)
    else:
        ray.init(address="local", num_cpus=num_cpus or max(4, os.cpu_count() or 1), log_to_driver=True)


def check_resources(num_workers: int, cpus_per_worker: float, gpus_per_worker: float, use_gpu: bool) -> None:
    """Refuse a scaling config the cluster can never satisfy instead of waiting forever."""
    import ray

    total = ray.cluster_resources()
    need_cpu = num_workers * cpus_per_worker
    need_gpu = num_workers * gpus_per_worker if use_gpu else 0
    autoscaling = os.environ.get("SYNTH_ASSUME_AUTOSCALER") == "1"
    if autoscaling:
        return
    if need_cpu > total.get("CPU", 0):
        raise ConfigError(f"scaling asks for {num_workers} workers x {cpus_per_worker} CPU = {need_cpu} CPUs but "
                          f"the Ray cluster has {total.get('CPU', 0):g}; lower scaling.num_workers or "
                          "scaling.cpus_per_worker (set SYNTH_ASSUME_AUTOSCALER=1 if an autoscaler will add nodes)")
    if need_gpu > total.get("GPU", 0):
        raise ConfigError(f"scaling asks for {need_gpu:g} GPUs but the Ray cluster has {total.get('GPU', 0):g}; "
                          "set scaling.use_gpu: false or add GPU nodes "
                          "(set SYNTH_ASSUME_AUTOSCALER=1 if an autoscaler will add them)")
