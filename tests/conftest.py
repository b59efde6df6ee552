"""Shared fixtures: one local Ray for the whole test session, and small trained artifacts."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # subprocesses (CLI, `ray job submit`) join without a token
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray per test session (4 logical CPUs: avoids Ray Data/Train resource deadlocks
    on 2 cores). Yields a dict with the metrics export port."""
    import ray

    port = free_port()
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    ray.init(address="local", num_cpus=4, include_dashboard=True, _metrics_export_port=port,
             log_to_driver=False, runtime_env={"env_vars": {"RAY_USAGE_STATS_ENABLED": "0"}})
    yield {"metrics_port": port}
    try:
        from ray import serve

        serve.shutdown()
    except Exception:  # noqa: BLE001
        pass
    ray.shutdown()


TINY_MODEL = {"net": {"width": 64, "depth": 1, "embed_dim": 32}}


def tiny_run(tmp: Path, steps: int = 40, **overrides) -> dict:
    raw = {"output": str(tmp), "train": {"steps": steps, "eval_every": max(1, steps // 2), "batch_size": 256},
           "model": TINY_MODEL, "data": {"target": "income"}}
    for k, v in overrides.items():
        raw[k] = {**raw.get(k, {}), **v} if isinstance(v, dict) else v
    return raw


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory) -> str:
    """A small model trained in-process on the bundled Adult data (seconds)."""
    from synth.config import RunConfig
    from synth.train.fit import fit

    out = tmp_path_factory.mktemp("tiny")
    return fit(RunConfig.parse(tiny_run(out))).artifact_uri
