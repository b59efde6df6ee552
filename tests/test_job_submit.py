"""`ray job submit --working-dir .` against a real head started with `ray start --head`:
a tiny training job, then a synthesis job from its artifact, both reaching SUCCEEDED."""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO, free_port, tiny_run

pytestmark = [pytest.mark.slow]
RAY = str(Path(sys.executable).with_name("ray"))


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A head node of its own (`--block` keeps it tied to this process, so stopping it does not
    touch any other Ray on the machine the way `ray stop` would). Every port is chosen free: the
    session's local Ray already holds the default dashboard-agent port (52365), and a second
    agent on it dies silently, leaving the head with "No available agent to submit job"."""
    port, dash = free_port(), free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    # its own temp dir (short: Ray's socket paths must stay under 107 bytes): `ray start` records
    # its address in TEMP_DIR/ray_current_cluster, and in /tmp/ray/ray_current_cluster that record
    # would outlive the head and send a later `serve run` or `ray.init()` to a dead cluster
    temp_dir = tempfile.mkdtemp(prefix="synth-ray-", dir="/tmp")
    proc = subprocess.Popen([RAY, "start", "--head", "--block", f"--port={port}", f"--dashboard-port={dash}",
                             f"--temp-dir={temp_dir}",
                             "--dashboard-host=127.0.0.1", "--num-cpus=4", "--include-dashboard=true",
                             f"--metrics-export-port={free_port()}",
                             f"--dashboard-agent-listen-port={free_port()}",
                             f"--dashboard-agent-grpc-port={free_port()}",
                             f"--runtime-env-agent-port={free_port()}"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    deadline = time.time() + 120
    while time.time() < deadline:
        r = subprocess.run([RAY, "job", "list", "--address", address], env=env, capture_output=True, text=True)
        if r.returncode == 0:
            break
        time.sleep(2)
    else:
        proc.terminate()
        pytest.fail("ray head did not come up")
    try:
        yield address, env, port
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        shutil.rmtree(temp_dir, ignore_errors=True)


def recorded_cluster() -> str:
    """What a plain `ray.init()` / `serve run` would join: the default address record."""
    from ray._common.utils import get_ray_address_file

    path = Path(get_ray_address_file(None))
    return path.read_text() if path.exists() else ""


def submit(address, env, *entrypoint):
    runtime_env = json.dumps({"excludes": [".venv", ".git", "runs", ".tools", "*.parquet.tmp"],
                              "env_vars": {"RAY_USAGE_STATS_ENABLED": "0"}})
    deadline = time.time() + 120
    while True:  # the dashboard answers before its job agent is up: retry only that
        r = subprocess.run([RAY, "job", "submit", "--address", address, "--working-dir", ".",
                            "--runtime-env-json", runtime_env, "--", *entrypoint],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        if "No available agent to submit job" not in r.stdout + r.stderr or time.time() > deadline:
            return r
        time.sleep(3)


def test_train_then_synthesize_jobs(head, tmp_path):
    import yaml

    address, env, port = head
    assert not recorded_cluster().endswith(f":{port}"), "the test head was recorded in /tmp/ray/ray_current_cluster"
    run = tiny_run(tmp_path / "run", steps=20)
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(run))
    r = submit(address, env, sys.executable, "-m", "jobs.train", "--config", str(tmp_path / "train.yaml"))
    assert r.returncode == 0 and "succeeded" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
    artifact = tmp_path / "run" / "model"
    assert (artifact / "manifest.json").exists()

    syn = {"artifact": str(artifact), "output": str(tmp_path / "syn"), "rows": 1500, "shard_rows": 500,
           "steps": 4, "actors": 2, "cpus_per_actor": 1}
    (tmp_path / "syn.yaml").write_text(yaml.safe_dump(syn))
    r = submit(address, env, sys.executable, "-m", "jobs.synthesize", "--config", str(tmp_path / "syn.yaml"))
    assert r.returncode == 0 and "succeeded" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
    files = sorted((tmp_path / "syn").glob("part-*.parquet"))
    assert len(files) == 3 and sum(pq.read_metadata(f).num_rows for f in files) == 1500

    # a failing job (bad config) is reported as failed with the message, not a stack trace
    (tmp_path / "bad.yaml").write_text("rows: 5\n")
    r = submit(address, env, sys.executable, "-m", "jobs.synthesize", "--config", str(tmp_path / "bad.yaml"))
    assert r.returncode != 0
    assert "artifact" in (r.stdout + r.stderr) and "Field required" in (r.stdout + r.stderr)
