"""The endpoint's closed loop (synth.serving.control) under a step load and a noisy neighbour.

One local Ray + Serve, one replica, single-row requests with no steps (the replica picks them),
closed-loop clients over HTTP on 127.0.0.1. Phases (each --phase-s seconds):

    16 clients -> 16 clients + CPU hog -> 16 clients (hog gone) -> 64 clients -> 16 clients

run twice: with the closed loop (default `control`) and without it (`control.enabled: false`,
the open-loop step choice of before). Prints per phase p50/p99 of answered requests (client
side and in the replica), status codes, steps chosen, and the controller's steps cap and admission
limit; writes the per-second timeline and the phase table to bench/results/serve_closed_loop.json.

    python bench/serve_closed_loop.py                       # trains a small diffusion model once
    python bench/serve_closed_loop.py --artifact runs/adult/model --phase-s 20

Clients honour Retry-After on 429/503 (as a well-behaved client does); --no-honor-retry-after
retries at once. The hog is --hog processes spinning on the CPUs this benchmark may use.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from serve_load import _free_port, ensure_artifact  # bench/ is on the path when run as a script

REPO = Path(__file__).resolve().parents[1]


class Load:
    """Closed-loop clients whose number can change while they run; every answer is logged."""

    def __init__(self, base: str, body: dict, honor_retry_after: bool):
        self.base, self.body, self.honor = base, body, honor_retry_after
        self.log: list[tuple[float, float, int, int | None, float | None]] = []  # t, ms, code, steps, replica ms
        self.tasks: list[asyncio.Task] = []

    async def _client(self, c) -> None:
        import httpx

        while True:
            t0 = time.perf_counter()
            try:
                r = await c.post("/v1/sample", json=self.body)
                code = r.status_code
            except httpx.HTTPError:
                code, r = 599, None
            t1 = time.perf_counter()
            steps = int(r.headers["x-synth-steps"]) if code == 200 else None
            rms = float(r.headers["x-synth-latency-ms"]) if code == 200 else None
            self.log.append((t1, (t1 - t0) * 1000.0, code, steps, rms))
            if code in (429, 503) and self.honor:
                await asyncio.sleep(float(r.headers.get("retry-after", 1)))

    def resize(self, c, n: int) -> None:
        while len(self.tasks) < n:
            self.tasks.append(asyncio.create_task(self._client(c)))
        while len(self.tasks) > n:
            self.tasks.pop().cancel()


class Hog:
    def __init__(self, n: int):
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]

    def stop(self) -> None:
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()


PHASES = [("16 clients", 16, False), ("16 clients + CPU hog", 16, True), ("16 clients, hog gone", 16, False),
          ("64 clients", 64, False), ("16 clients again", 16, False)]


async def run_phases(base: str, body: dict, phase_s: float, hog_n: int, honor: bool) -> dict:
    import httpx

    load = Load(base, body, honor)
    timeline, phases = [], []
    limits = httpx.Limits(max_connections=128, max_keepalive_connections=128)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as c, \
            httpx.AsyncClient(base_url=base, timeout=30) as probe:
        t_start = time.perf_counter()
        for name, clients, hog_on in PHASES:
            hog = Hog(hog_n) if hog_on else None
            load.resize(c, clients)
            p0 = time.perf_counter()
            try:
                while time.perf_counter() - p0 < phase_s:
                    await asyncio.sleep(1.0)
                    try:
                        st = (await probe.get("/v1/slo", params={"window_s": 1.0})).json()
                    except Exception:  # noqa: BLE001 - a probe that failed under load
                        st = None
                    now = time.perf_counter()
                    last = [e for e in load.log if e[0] > now - 1.0]
                    ok = [e for e in last if e[2] == 200]
                    timeline.append({
                        "t_s": round(now - t_start, 2), "phase": name,
                        "answers": len(last), "ok": len(ok),
                        "p99_ms": round(float(np.percentile([e[1] for e in ok], 99)), 1) if ok else None,
                        "steps_mean": round(float(np.mean([e[3] for e in ok])), 2) if ok else None,
                        "steps_cap": st and st["controller"]["steps_cap"] if st else None,
                        "admission_limit": st["controller"]["admission_limit"] if st else None})
            finally:
                if hog is not None:
                    hog.stop()
            p1 = time.perf_counter()
            entries = [e for e in load.log if p0 < e[0] <= p1]
            ok = [e for e in entries if e[2] == 200]
            codes: dict[str, int] = {}
            steps: dict[str, int] = {}
            for e in entries:
                codes[str(e[2])] = codes.get(str(e[2]), 0) + 1
                if e[3] is not None:
                    steps[str(e[3])] = steps.get(str(e[3]), 0) + 1
            lat = np.array([e[1] for e in ok]) if ok else np.array([np.nan])
            rlat = np.array([e[4] for e in ok]) if ok else np.array([np.nan])
            phases.append({"phase": name, "clients": clients, "hog": hog_on, "seconds": round(p1 - p0, 1),
                           "ok_per_s": round(len(ok) / (p1 - p0), 1), "status": codes, "steps": steps,
                           "p50_ms": round(float(np.percentile(lat, 50)), 1),
                           "p99_ms": round(float(np.percentile(lat, 99)), 1),
                           "replica_p99_ms": round(float(np.percentile(rlat, 99)), 1),
                           "errors_other_than_429_503": sum(v for k, v in codes.items()
                                                            if k not in ("200", "429", "503"))})
            print(json.dumps(phases[-1]), flush=True)
        load.resize(c, 0)
        slo = (await probe.get("/v1/slo")).json()
    return {"phases": phases, "timeline": timeline, "controller_end": slo["controller"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifact")
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--phase-s", type=float, default=20.0)
    p.add_argument("--slo-ms", type=float, default=150.0)
    p.add_argument("--hog", type=int, default=None, help="hog processes (default 4 per usable CPU)")
    p.add_argument("--no-honor-retry-after", action="store_true")
    p.add_argument("--modes", nargs="+", default=["closed", "open"], choices=["closed", "open"])
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "serve_closed_loop.json"))
    args = p.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import serve

    from serve.app import build_app

    # a diffusion model: steps are the replica's choice (the autoregressive default has none)
    artifact = ensure_artifact(args.artifact, args.train_steps, family="diffusion")
    hog_n = args.hog or 4 * len(os.sched_getaffinity(0))
    body = {"rows": 1}
    load_before = os.getloadavg()
    ray.init(address="local", num_cpus=4, include_dashboard=True, log_to_driver=False)
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    runs = {}
    try:
        for mode in args.modes:
            serve.run(build_app({"artifact_uri": artifact, "slo_p99_ms": args.slo_ms, "num_cpus": 1,
                                 "max_ongoing_requests": 64, "control": {"enabled": mode == "closed"}}),
                      name="bench", route_prefix="/")
            asyncio.run(run_phases(f"http://127.0.0.1:{port}", body, 3.0, hog_n, True))  # warm-up
            print(f"\n== {mode} loop ==", flush=True)
            runs[mode] = asyncio.run(run_phases(f"http://127.0.0.1:{port}", body, args.phase_s, hog_n,
                                                not args.no_honor_retry_after))
            serve.delete("bench")
    finally:
        serve.shutdown()
        ray.shutdown()
    out = {"benchmark": "serve_closed_loop", "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "machine": {"cpus": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
                       "platform": platform.platform(), "loadavg_before": [round(x, 2) for x in load_before],
                       "loadavg_after": [round(x, 2) for x in os.getloadavg()],
                       "note": "clients, Serve proxy, replica and hog share these cores; other work may run"},
           "artifact": artifact, "request": body, "slo_p99_ms": args.slo_ms, "hog_processes": hog_n,
           "phase_s": args.phase_s, "honor_retry_after": not args.no_honor_retry_after, "runs": runs}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print("\n| mode | phase | ok/s | p50 ms | p99 ms | replica p99 ms | status | steps |")
    print("|---|---|---|---|---|---|---|---|")
    for mode, r in runs.items():
        for ph in r["phases"]:
            print(f"| {mode} | {ph['phase']} | {ph['ok_per_s']} | {ph['p50_ms']} | {ph['p99_ms']} | "
                  f"{ph['replica_p99_ms']} | {ph['status']} | {ph['steps']} |")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
