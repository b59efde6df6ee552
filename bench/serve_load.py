"""Load test of the online sampling endpoint over real HTTP (127.0.0.1), batching on vs off.

Starts a local Ray + Serve, deploys the app once per configuration (by default dynamic batching
with max_batch_size 32, then max_batch_size 1), drives it from N concurrent clients (closed loop)
or at a fixed arrival rate (open loop, still bounded by --concurrency), bounded in requests and
time, and reports client-side p50/p95/p99, throughput, error rate and SLO adherence, plus the
replica's own /v1/slo view. Writes bench/results/serve_load.json.

    python bench/serve_load.py                          # trains a default-config model (~1000 steps) once
    python bench/serve_load.py --artifact runs/adult/model --concurrency 16 --steps 8
    python bench/serve_load.py --rate 200 --duration-s 20 --batch-sizes 32

Numbers depend on the machine: the client, the Serve proxy and the replica share its cores.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_artifact(path: str | None, train_steps: int, family: str | None = None) -> str:
    """The artifact to serve: `path`, or a model trained once into the temp folder (the default
    family, or `family`)."""
    if path:
        return path
    out = Path(tempfile.gettempdir()) / f"synth-bench-serve-{family or 'default'}-{train_steps}"
    if not (out / "model" / "manifest.json").exists():
        from synth.config import RunConfig
        from synth.train.fit import fit

        print(f"training a {family or 'default-config'} model for {train_steps} steps into {out} ...", flush=True)
        raw = {"output": str(out), "train": {"steps": train_steps, "eval_every": train_steps, "threads": 1}}
        if family:
            raw.update(model={"family": family}, evaluate={"check": "warn"})
        fit(RunConfig.parse(raw))
    return str(out / "model")


async def drive(base: str, body: dict, concurrency: int, max_requests: int, duration_s: float,
                rate: float | None, timeout_s: float = 30.0) -> dict:
    import httpx

    lat_ms: list[float] = []
    codes: dict[int, int] = {}
    steps_used: dict[str, int] = {}
    batch_reqs: list[int] = []
    sem = asyncio.Semaphore(concurrency)
    issued = 0
    t_start = time.perf_counter()
    deadline = t_start + duration_s
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=timeout_s, limits=limits) as client:

        async def one() -> None:
            t0 = time.perf_counter()
            try:
                r = await client.post("/v1/sample", json=body)
                code = r.status_code
            except httpx.HTTPError:
                code, r = 599, None
            dt = (time.perf_counter() - t0) * 1000.0
            codes[code] = codes.get(code, 0) + 1
            if code == 200:
                lat_ms.append(dt)
                steps_used[r.headers["x-synth-steps"]] = steps_used.get(r.headers["x-synth-steps"], 0) + 1
                batch_reqs.append(int(r.headers.get("x-synth-batch-requests", 1)))

        if rate is None:  # closed loop: each client sends its next request when the last returns
            async def worker() -> None:
                nonlocal issued
                while issued < max_requests and time.perf_counter() < deadline:
                    issued += 1
                    await one()
            await asyncio.gather(*[worker() for _ in range(concurrency)])
        else:  # open loop at a fixed rate, at most `concurrency` outstanding (excess arrivals wait)
            tasks = []
            while issued < max_requests:
                due = t_start + issued / rate
                if due > deadline:
                    break
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                issued += 1

                async def gated() -> None:
                    async with sem:
                        await one()
                tasks.append(asyncio.create_task(gated()))
            await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - t_start
    ok = len(lat_ms)
    total = sum(codes.values())
    lat = np.array(lat_ms) if lat_ms else np.array([np.nan])
    return {
        "requests": total, "ok": ok, "elapsed_s": round(elapsed, 3),
        "throughput_rps": round(ok / elapsed, 2), "rows_per_s": round(ok * body["rows"] / elapsed, 2),
        "error_rate": round(1 - ok / total, 4) if total else None,
        "status_codes": {str(k): v for k, v in sorted(codes.items())},
        "p50_ms": round(float(np.percentile(lat, 50)), 2), "p95_ms": round(float(np.percentile(lat, 95)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2), "max_ms": round(float(lat.max()), 2),
        "mean_batch_requests": round(float(np.mean(batch_reqs)), 2) if batch_reqs else None,
        "steps_used": steps_used,
        "_lat": lat_ms,
    }


def model_only(artifact: str, body: dict, clients: int, repeats: int = 30) -> dict:
    """The model path without HTTP: `clients` single requests run one by one vs merged in one call."""
    import torch

    from synth.serving import ServeArgs
    from synth.serving.service import SamplingService

    torch.set_num_threads(1)
    svc = SamplingService(ServeArgs(artifact_uri=artifact, calibrate=False))
    from synth.serving.schemas import SampleRequest

    def jobs():
        return [svc.validate(SampleRequest(**{**body, "seed": i})) for i in range(clients)]

    svc.run(jobs())  # warm-up
    t_sep, t_merged = [], []
    for _ in range(repeats):
        js = jobs()
        t0 = time.perf_counter()
        for j in js:
            svc.run([j])
        t_sep.append(time.perf_counter() - t0)
        js = jobs()
        t0 = time.perf_counter()
        svc.run(js)
        t_merged.append(time.perf_counter() - t0)
    sep, merged = float(np.median(t_sep)), float(np.median(t_merged))
    return {"requests": clients, "one_by_one_ms": round(sep * 1000, 2), "merged_ms": round(merged * 1000, 2),
            "requests_per_s_one_by_one": round(clients / sep, 1), "requests_per_s_merged": round(clients / merged, 1),
            "speedup": round(sep / merged, 2)}


def noop_app():
    """The same HTTP path (proxy, FastAPI ingress, one replica, JSON) with no model: the ceiling
    that any batching can reach on this machine while the client shares its cores."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from ray import serve

    api = FastAPI()

    @serve.deployment(name="Noop", ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64)
    @serve.ingress(api)
    class Noop:
        @api.post("/v1/sample")
        async def sample(self, body: dict) -> JSONResponse:
            return JSONResponse({"records": [{}], "sampler": "noop", "steps": 0, "nfe": 0},
                                headers={"X-Synth-Steps": "0", "X-Synth-Batch-Requests": "1"})

    return Noop.bind()


def run(args: argparse.Namespace) -> dict:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import httpx
    import ray
    from ray import serve

    from serve.app import build_app

    artifact = ensure_artifact(args.artifact, args.train_steps)
    body = {"rows": args.rows, "sampler": args.sampler, "format": args.format}
    if args.steps:
        body["steps"] = args.steps
    load_before = os.getloadavg()
    model_path = model_only(artifact, body, args.concurrency)
    print("model path without HTTP:", json.dumps(model_path), flush=True)
    ray.init(address="local", num_cpus=4, include_dashboard=True, log_to_driver=False)
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    base = f"http://127.0.0.1:{port}"
    results = []
    ceiling = None
    try:
        if not args.no_ceiling:
            serve.run(noop_app(), name="noop", route_prefix="/")
            asyncio.run(drive(base, body, args.concurrency, args.warmup, 30, None))
            ceiling = asyncio.run(drive(base, body, args.concurrency, args.requests, args.duration_s, None))
            ceiling.pop("_lat")
            print("HTTP ceiling (no model):", json.dumps(ceiling), flush=True)
            serve.delete("noop")
        for bs in args.batch_sizes:
            app_args = {"artifact_uri": artifact, "slo_p99_ms": args.slo_ms, "max_batch_size": bs,
                        "batch_wait_timeout_s": args.batch_wait_s if bs > 1 else 0.0,
                        "max_ongoing_requests": max(2 * bs, 2 * args.concurrency), "num_cpus": 1}
            serve.run(build_app(app_args), name="bench", route_prefix="/")
            print(f"\nbatch size {bs}: warming up ...", flush=True)
            asyncio.run(drive(base, body, args.concurrency, args.warmup, 30, None))
            print(f"batch size {bs}: {args.concurrency} clients, up to {args.requests} requests / "
                  f"{args.duration_s:.0f} s{'' if args.rate is None else f' at {args.rate}/s'} ...", flush=True)
            res = asyncio.run(drive(base, body, args.concurrency, args.requests, args.duration_s, args.rate))
            lat = np.array(res.pop("_lat") or [np.inf])
            res["slo_adherence"] = round(float((lat <= args.slo_ms).mean()), 4)
            res["meets_p99_slo"] = bool(res["p99_ms"] <= args.slo_ms)
            res["max_batch_size"] = bs
            window = max(1.0, res["elapsed_s"])  # the measured run only, not the warm-up
            res["server_slo"] = {k: v for k, v in httpx.get(f"{base}/v1/slo", params={"window_s": window},
                                                             timeout=10).json().items()
                                 if k in ("p50_ms", "p95_ms", "p99_ms", "requests", "violations", "auto_steps")}
            results.append(res)
            print(json.dumps({k: v for k, v in res.items() if k != "server_slo"}), flush=True)
            serve.delete("bench")
    finally:
        serve.shutdown()
        ray.shutdown()
    load_after = os.getloadavg()
    out = {
        "benchmark": "serve_load", "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "loadavg_before": [round(x, 2) for x in load_before],
                    "loadavg_after": [round(x, 2) for x in load_after],
                    "note": "client, Serve proxy and replica share these cores; other work may be running"},
        "artifact": artifact, "request": body, "concurrency": args.concurrency, "rate": args.rate,
        "slo_p99_ms": args.slo_ms, "results": results, "model_path_without_http": model_path,
        "http_ceiling_no_model": ceiling,
    }
    on = [r for r in results if r["max_batch_size"] > 1]
    off = [r for r in results if r["max_batch_size"] == 1]
    if on and off:
        best = max(on, key=lambda r: r["throughput_rps"])
        out["comparison"] = {
            "throughput_ratio": round(best["throughput_rps"] / max(off[0]["throughput_rps"], 1e-9), 2),
            "p99_on_ms": best["p99_ms"], "p99_off_ms": off[0]["p99_ms"],
            "p99_equal_or_better": best["p99_ms"] <= off[0]["p99_ms"],
            "target_ratio": 4.0,
        }
        if ceiling:
            out["comparison"]["http_ceiling_rps"] = ceiling["throughput_rps"]
            out["comparison"]["max_reachable_ratio"] = round(ceiling["throughput_rps"] /
                                                             max(off[0]["throughput_rps"], 1e-9), 2)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifact", help="model artifact URI (default: train a default-config model once)")
    p.add_argument("--train-steps", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--rate", type=float, default=None, help="fixed arrival rate (requests/s); default closed loop")
    p.add_argument("--requests", type=int, default=3000, help="at most this many requests per configuration")
    p.add_argument("--duration-s", type=float, default=20.0, help="at most this long per configuration")
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--rows", type=int, default=1)
    p.add_argument("--sampler", default="dpmpp_2m")
    p.add_argument("--steps", type=int, default=8, help="0 = let the endpoint pick (SLO-aware)")
    p.add_argument("--format", default="json", choices=["json", "arrow", "parquet"])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 1])
    p.add_argument("--batch-wait-s", type=float, default=0.005)
    p.add_argument("--slo-ms", type=float, default=150.0)
    p.add_argument("--no-ceiling", action="store_true", help="skip the no-model HTTP ceiling run")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "serve_load.json"))
    args = p.parse_args()
    out = run(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print("\n" + json.dumps({"comparison": out.get("comparison"), "model_path_without_http":
                              out["model_path_without_http"], "http_ceiling_no_model": out["http_ceiling_no_model"],
                              "results": [
        {k: r[k] for k in ("max_batch_size", "throughput_rps", "p50_ms", "p95_ms", "p99_ms", "error_rate",
                           "slo_adherence", "mean_batch_requests")} for r in out["results"]]}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
