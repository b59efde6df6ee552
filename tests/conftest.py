"""Shared fixtures: one local Ray for the whole test session, and small trained artifacts."""
from __future__ import annotations

import os
import shutil
import socket
from contextlib import contextmanager
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # subprocesses (CLI, `ray job submit`) join without a token
REPO = Path(__file__).resolve().parents[1]


SETUP = "bash scripts/setup.sh"


def require_tool(what: str, candidates: list, needed_by: str) -> str:
    """The first candidate that is an executable file (a path, or a name looked up on PATH); a
    missing tool fails the test with the set-up command that installs it, never a bare "not found"."""
    for c in candidates:
        if c is None:
            continue
        path = Path(c) if os.sep in str(c) else (shutil.which(str(c)) and Path(shutil.which(str(c))))
        if path and path.is_file() and os.access(path, os.X_OK):
            return str(path)
    pytest.fail(f"{what} is needed by {needed_by} but was not found (looked for "
                f"{', '.join(str(c) for c in candidates if c is not None)}); run `{SETUP}` from the repository "
                "root, which installs it", pytrace=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape_until(url: str, ready, timeout_s: float = 60.0) -> str:
    """The Prometheus text at `url`, polled every 2 s until `ready(text)` or `timeout_s` (Ray's
    metrics agent exports with a delay); the last text either way, for the test's assertions."""
    import time

    import httpx

    text, deadline = "", time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            text = httpx.get(url, timeout=5).text
        except httpx.HTTPError:
            text = ""
        if ready(text):
            break
        time.sleep(2)
    return text


@contextmanager
def machine_ray_record_kept():
    """`Cluster` records its head as this machine's Ray (/tmp/ray/ray_current_cluster), which a
    plain `ray.init()` or `serve run` of anyone on the machine would then join, and which points at
    a dead Ray after the session: the record is put back as it was."""
    from ray._common.utils import get_ray_address_file

    record = Path(get_ray_address_file(None))
    before = record.read_text() if record.exists() else None
    try:
        yield
    finally:
        if before is None:
            record.unlink(missing_ok=True)
        else:
            record.write_text(before)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray per test session: the head of a `ray.cluster_utils.Cluster` (4 logical CPUs:
    avoids Ray Data/Train resource deadlocks on 2 cores), so tests/test_multinode.py can add nodes
    to this same Ray and kill them; every other test runs on the head alone, as on a one-node Ray.
    Yields a dict with the metrics export port and the Cluster."""
    import ray
    from ray.cluster_utils import Cluster

    port = free_port()
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    # Serve's ingress as deployed (synth.serving.ingress): HAProxy in front of replicas that answer HTTP
    # themselves; its stats and metrics listeners on free ports, away from any other Serve on the machine.
    from synth.serving.ingress import HAPROXY_ENV, haproxy_listener_ports

    os.environ.update({**HAPROXY_ENV, **haproxy_listener_ports(free_port)})
    # A stopping replica stays reachable this long so that load balancers drop it first (Serve's default
    # 30 s, kept in deployments); this machine's one HAProxy reloads within a second. The tests stop
    # many replicas: 30 s each added about 7 minutes to the suite.
    os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] = "2"
    with machine_ray_record_kept():
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 4, "include_dashboard": True, "metrics_export_port": port, "object_store_memory": 1 << 30,
            "gcs_server_port": free_port(), "dashboard_port": free_port(), "dashboard_agent_listen_port": free_port()})
    ray.init(address=cluster.address, log_to_driver=False,
             runtime_env={"env_vars": {"RAY_USAGE_STATS_ENABLED": "0"}})
    yield {"metrics_port": port, "cluster": cluster}
    try:
        from ray import serve

        serve.shutdown()
    except Exception:  # noqa: BLE001
        pass
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="session")
def serve_http(ray_session):
    """Ray Serve's HTTP proxy on the session Ray, started once: {"base": its URL, "metrics": the
    Prometheus export of the session Ray}. Tests deploy their apps under route prefixes of their own."""
    import ray
    from ray import serve

    port = free_port()
    # one proxy, on the head: the extra nodes of tests/test_multinode.py share this machine's
    # 127.0.0.1, where a proxy per node could not bind the same port
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    try:  # Serve may already be running (started by a test with its own options): use its port
        from ray.serve.context import _get_global_client

        port = ray.get(_get_global_client()._controller.get_http_config.remote()).port
    except Exception:  # noqa: BLE001 - private API; keep ours
        pass
    return {"base": f"http://127.0.0.1:{port}", "metrics": f"http://127.0.0.1:{ray_session['metrics_port']}/metrics"}


# its held-out likelihood (synth evaluate, reports, contracts) on 200 test rows: the ODE costs a few ms a row
TINY_MODEL = {"family": "diffusion", "net": {"width": 64, "depth": 1, "embed_dim": 32},
              "likelihood": {"held_out_rows": 200}}


def tiny_run(tmp: Path, steps: int = 40, **overrides) -> dict:
    """A seconds-long diffusion fit: far from converged, so its held-out check only warns."""
    raw = {"output": str(tmp), "train": {"steps": steps, "eval_every": max(1, steps // 2), "batch_size": 256},
           "model": TINY_MODEL, "data": {"target": "income"}, "evaluate": {"check": "warn"}}
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
