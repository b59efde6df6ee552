"""The README's commands on a machine where an earlier Ray died: `ray start` recorded that cluster
in TMP/ray/ray_current_cluster, and a plain `ray.init()` / `serve run` would try to join it.
`synth` commands start a local Ray of their own; the README runs `serve run` with
RAY_ADDRESS=local. TMPDIR points Ray at a temp dir of this test, so the machine's real
/tmp/ray (other users' clusters) is never touched."""
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
import yaml

from synth.serving.ingress import haproxy_listener_ports
from tests.conftest import REPO, free_port

pytestmark = [pytest.mark.slow]


@pytest.fixture
def dead_cluster_recorded():
    """An environment whose Ray temp dir records a cluster that no longer exists."""
    tmp = tempfile.mkdtemp(prefix="synth-dead-", dir="/tmp")  # short: Ray's socket paths have a limit
    (Path(tmp) / "ray").mkdir()
    (Path(tmp) / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{free_port()}")
    env = {**os.environ, "TMPDIR": tmp, "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    env.pop("RAY_ADDRESS", None)
    yield env
    subprocess.run(["rm", "-rf", tmp], check=False)


def readme_line(start: str) -> str:
    line = next((ln for ln in (REPO / "README.md").read_text().splitlines() if ln.startswith(start)), None)
    assert line, f"README.md has no command starting with {start!r}"
    return line.split("#", 1)[0].strip()


def test_synth_starts_its_own_local_ray(dead_cluster_recorded, tiny_artifact, tmp_path):
    r = subprocess.run([sys.executable, "-m", "synth.cli", "synthesize", tiny_artifact, "--rows", "300",
                        "--output", str(tmp_path / "bulk"), "--actors", "1", "--steps", "2"],
                       env=dead_cluster_recorded, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert pq.read_table(tmp_path / "bulk" / "part-00000.parquet").num_rows == 300


def test_readme_serve_run_starts_a_local_ray(dead_cluster_recorded, tiny_artifact, tmp_path):
    import httpx

    line = readme_line("RAY_ADDRESS=local ")
    settings, sep, config_arg = line.partition(" serve run ")
    assert sep and config_arg == "serve/config.yaml", line
    line_env = dict(a.split("=", 1) for a in settings.split())
    assert line_env == {"RAY_ADDRESS": "local", "RAY_SERVE_ENABLE_HA_PROXY": "1"}
    raw = yaml.safe_load((REPO / "serve" / "config.yaml").read_text())  # the README's config, with a model
    port = free_port()                                                   # of this test and a free port
    raw["http_options"]["port"] = port
    raw["applications"][0]["args"]["artifact_uri"] = tiny_artifact
    raw["applications"][0]["deployments"][0]["autoscaling_config"]["max_replicas"] = 1
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    # the README's settings; HAProxy's stats and metrics listeners on free ports, not beside this session's
    env = {**dead_cluster_recorded, **line_env, **haproxy_listener_ports(free_port)}
    serve_exe = str(Path(sys.executable).with_name("serve"))
    proc = subprocess.Popen([serve_exe, "run", str(config)], env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline, ready = time.time() + 240, False
        while time.time() < deadline and proc.poll() is None and not ready:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                time.sleep(2)
        assert ready, "serve run did not come up: " + (proc.stdout.read()[-3000:] if proc.poll() is not None else "")
        r = httpx.post(f"http://127.0.0.1:{port}/v1/sample", json={"rows": 2, "steps": 2, "seed": 1}, timeout=60)
        assert r.status_code == 200 and len(r.json()["records"]) == 2, r.text
        # the port is HAProxy's (a process of this Ray), not a Python proxy's
        listener = {c.pid for c in psutil.net_connections("tcp") if c.laddr and c.laddr.port == port
                    and c.status == psutil.CONN_LISTEN}
        assert {psutil.Process(pid).name() for pid in listener} == {"haproxy"}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # serve run shuts its local Ray down on SIGTERM
        try:
            out, _ = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
    assert not re.search(r"Failed to connect to Ray cluster", out or "")
