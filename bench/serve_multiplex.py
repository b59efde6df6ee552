"""Several models behind one deployment: does the ingress keep each model on the replica that has it?

One local Ray + Serve, `--replicas` replicas holding at most one model each (max_models_per_replica
1), two models (a diffusion model and a GAN of Adult, trained once into the temp folder). Sequential
requests pick one of the two models at random (the same seeded order in every phase), in phases:

    header  (x2): POST /v1/models/{id}/sample with the serve_multiplexed_model_id header
    path        : the same requests without the header (no ingress reads the path)

Prints, per phase, the model loads the replicas did (LRU evictions: `ray_synth_model_loads_total`
from Ray's metrics port) and the client p50/p99; writes them to bench/results/serve_multiplex.json.

    python bench/serve_multiplex.py --requests 60
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import time
from pathlib import Path

from serve_load import _free_port, ensure_artifact, set_ingress  # bench/ is on the path when run as a script

REPO = Path(__file__).resolve().parents[1]

HEADER = "serve_multiplexed_model_id"


def model_loads(metrics_url: str, settle_s: float = 12.0, timeout_s: float = 60.0) -> float:
    """Total `loaded` model loads of the deployment, once two scrapes `settle_s` apart agree (Ray
    exports metrics every few seconds)."""
    import httpx

    last, deadline = None, time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            text = httpx.get(metrics_url, timeout=5).text
        except httpx.HTTPError:
            text = ""
        now = sum(float(m.group(1)) for m in re.finditer(
            r'^ray_synth_model_loads_total\{[^}]*outcome="loaded"[^}]*\} ([0-9.e+]+)$', text, re.M))
        if last is not None and now == last:
            return now
        last = now
        time.sleep(settle_s)
    return float(last or 0.0)


def phase(client, n: int, header: bool) -> dict:
    import numpy as np

    lat, codes = [], {}
    order = np.random.default_rng(0).choice(["a", "b"], size=n)  # not alternating: a balancer that takes
    for model in order:                                          # replicas in turn would match that by chance
        model = str(model)
        t0 = time.perf_counter()
        r = client.post(f"/v1/models/{model}/sample", json={"rows": 2, "steps": 4},
                        headers={HEADER: model} if header else {})
        lat.append((time.perf_counter() - t0) * 1000.0)
        codes[r.status_code] = codes.get(r.status_code, 0) + 1
    p50, p99 = np.percentile(lat, [50, 99])
    return {"requests": n, "codes": codes, "p50_ms": round(float(p50), 1), "p99_ms": round(float(p99), 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=60, help="requests per phase")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--train-steps", type=int, default=50)
    p.add_argument("--ingress", choices=["haproxy", "proxy"], default="haproxy",
                   help="HAProxy in front of the replicas (the chart's default) or Serve's Python proxies")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "serve_multiplex.json"))
    args = p.parse_args()
    ingress_env = set_ingress(args.ingress)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    models = {"a": ensure_artifact(None, args.train_steps, "diffusion"), "b": ensure_artifact(None, args.train_steps, "gan")}

    import httpx
    import ray
    from ray import serve

    from serve.app import build_app

    metrics_port, port = _free_port(), _free_port()
    ray.init(address="local", num_cpus=2 * args.replicas, include_dashboard=True, _metrics_export_port=metrics_port,
             log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app({"models": models, "max_models_per_replica": 1, "num_replicas": args.replicas,
                             "num_cpus": 0.5, "calibrate": False, "deployment_name": "Multiplex"}),
                  name="multiplex", route_prefix="/")
        metrics = f"http://127.0.0.1:{metrics_port}/metrics"
        phases = []
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as c:
            for m in ("a", "b"):  # each model on some replica
                for _ in range(4):
                    c.post(f"/v1/models/{m}/sample", json={"rows": 2, "steps": 4}, headers={HEADER: m})
            before = model_loads(metrics)
            for name, header in (("header", True), ("header again", True), ("path only", False)):
                row = {"phase": name, **phase(c, args.requests, header)}
                after = model_loads(metrics)
                row["model_loads"] = after - before
                before = after
                phases.append(row)
                print(json.dumps(row), flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    out = {"replicas": args.replicas, "max_models_per_replica": 1, "ingress": args.ingress,
           "ingress_env": ingress_env, "phases": phases,
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count()}}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
