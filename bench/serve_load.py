"""Load tests of the online sampling endpoint over real HTTP (127.0.0.1). Two profiles:

`--profile batching` (default): a local Ray + Serve, the app deployed once per configuration (by
default dynamic batching with max_batch_size 32, then max_batch_size 1), driven from N concurrent
clients (closed loop) or at a fixed arrival rate (open loop, still bounded by --concurrency),
bounded in requests and time; reports client-side p50/p95/p99, throughput, error rate and SLO
adherence, plus the replica's own /v1/slo view. Writes bench/results/serve_load.json.

`--profile phases`: a multi-node Ray on this machine (`ray.cluster_utils.Cluster`: a head with
Serve's proxy and controller, --nodes worker nodes advertising `synth_serve`, one replica per
node at most), the endpoint autoscaled by the SLO policy (synth.serving.autoscale.SLOPolicy,
1..--max-replicas replicas), closed-loop clients sending 1-row requests with no steps (the replica
picks them) through the phases (each --phase-s seconds)

    idle -> 16 clients -> 64 -> 16 -> 16 + CPU hog (noisy neighbour) -> 64 with a replica's node
    killed mid-phase (SIGKILL of its raylet and workers)

and prints per phase p50/p99 of the answered requests, answers by status, steps chosen, replica
count (min-max and over time), and for the node loss the errors after the kill and when the p99 of
a window was back within the SLO. Writes bench/results/serve_load_phases.json (per-second timeline
of clients, answers, p99 and replicas). `--modes closed open` runs it with and without the
replica's closed loop (`control.enabled`).

    python bench/serve_load.py                          # trains a default-config model (~1000 steps) once
    python bench/serve_load.py --artifact runs/adult/model --concurrency 16 --steps 8
    python bench/serve_load.py --rate 200 --duration-s 20 --batch-sizes 32
    python bench/serve_load.py --profile phases --phase-s 20

Numbers depend on the machine: the clients, the Serve proxy, the replicas (and the hog) share its cores.
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
PROXY_LOGGING = {"enable_access_log": False}  # as serve/config.yaml: no log line per request in the proxy


def set_ingress(ingress: str) -> dict:
    """Environment for the benchmark's Ray, whose processes inherit it: the ingress's settings as the
    chart sets them (synth.serving.ingress; a value already in the environment wins) and, with HAProxy,
    free ports for its stats and metrics listeners."""
    from synth.serving.ingress import HAPROXY_ENV, PROXY_ENV, haproxy_listener_ports

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env = {**HAPROXY_ENV, **haproxy_listener_ports(_free_port)} if ingress == "haproxy" else dict(PROXY_ENV)
    for k, v in env.items():
        os.environ.setdefault(k, v)
    return {k: os.environ[k] for k in env}


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


def client_session(base: str, connections: int, timeout_s: float):
    """The load client's HTTP/1.1 keep-alive pool. aiohttp, not httpx: on this 2-core machine the client
    shares the cores with what it measures, and httpx's AsyncClient spent 53 % of a core at 16 clients
    and 94 % at 64 (psutil, 15 s each), where it starved the replicas and became the bottleneck."""
    import aiohttp

    return aiohttp.ClientSession(base_url=base, timeout=aiohttp.ClientTimeout(total=timeout_s),
                                 connector=aiohttp.TCPConnector(limit=connections, force_close=False))


async def post(client, body: dict) -> tuple[int, dict]:
    """POST /v1/sample; (status, lower-cased headers), or (599, {"error": the exception's name}) when no
    HTTP answer came."""
    import aiohttp

    try:
        async with client.post("/v1/sample", json=body) as r:
            await r.read()
            return r.status, {k.lower(): v for k, v in r.headers.items()}
    except (aiohttp.ClientError, asyncio.TimeoutError) as e:
        return 599, {"error": type(e).__name__}


async def drive(base: str, body: dict, concurrency: int, max_requests: int, duration_s: float,
                rate: float | None, timeout_s: float = 30.0, honor_retry_after: bool = True) -> dict:
    lat_ms: list[float] = []
    codes: dict[int, int] = {}
    steps_used: dict[str, int] = {}
    batch_reqs: list[int] = []
    sem = asyncio.Semaphore(concurrency)
    issued = 0
    t_start = time.perf_counter()
    deadline = t_start + duration_s
    async with client_session(base, concurrency, timeout_s) as client:

        async def one() -> None:
            t0 = time.perf_counter()
            code, headers = await post(client, body)
            dt = (time.perf_counter() - t0) * 1000.0
            codes[code] = codes.get(code, 0) + 1
            if code == 200:
                lat_ms.append(dt)
                steps_used[headers["x-synth-steps"]] = steps_used.get(headers["x-synth-steps"], 0) + 1
                batch_reqs.append(int(headers.get("x-synth-batch-requests", 1)))
            elif code in (429, 503) and honor_retry_after:  # a client told to come back later waits
                await asyncio.sleep(float(headers.get("retry-after", 1)))

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
    ingress_env = set_ingress(args.ingress)
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
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config=PROXY_LOGGING)
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
            res = asyncio.run(drive(base, body, args.concurrency, args.requests, args.duration_s, args.rate,
                                    honor_retry_after=not args.no_honor_retry_after))
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
        "slo_p99_ms": args.slo_ms, "ingress": args.ingress, "ingress_env": ingress_env, "results": results,
        "model_path_without_http": model_path, "http_ceiling_no_model": ceiling,
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



# -- profile "phases": step load, noisy neighbour and a lost node on a multi-node local Ray -------
PHASES = [  # name, clients, CPU hog, kill a replica's node mid-phase
    ("idle", 0, False, False),
    ("16 clients", 16, False, False),
    ("64 clients", 64, False, False),
    ("16 clients again", 16, False, False),
    ("16 clients + CPU hog", 16, True, False),
    ("64 clients, a replica node lost", 64, False, True),
]


class Load:
    """Closed-loop clients whose number can change while they run; every answer is logged as
    (answered at, ms, status, steps or None, in-replica ms or None). Status 599: no HTTP answer."""

    def __init__(self, body: dict, honor_retry_after: bool):
        self.body, self.honor = body, honor_retry_after
        self.log: list[tuple[float, float, int, int | None, float | None]] = []
        self.no_answer: list[tuple[float, str]] = []  # (when, the client's exception) for status 599
        self.tasks: list[asyncio.Task] = []

    async def _client(self, c) -> None:
        while True:
            t0 = time.perf_counter()
            code, headers = await post(c, self.body)
            t1 = time.perf_counter()
            steps = int(headers["x-synth-steps"]) if code == 200 and "x-synth-steps" in headers else None
            rms = float(headers["x-synth-latency-ms"]) if code == 200 else None
            self.log.append((t1, (t1 - t0) * 1000.0, code, steps, rms))
            if code in (429, 503) and self.honor:
                await asyncio.sleep(float(headers.get("retry-after", 1)))
            elif code == 599:
                self.no_answer.append((t1, headers["error"]))
                await asyncio.sleep(0.1)

    def resize(self, c, n: int) -> None:
        while len(self.tasks) < n:
            self.tasks.append(asyncio.create_task(self._client(c)))
        while len(self.tasks) > n:
            self.tasks.pop().cancel()


class Hog:
    """The noisy neighbour: `n` processes spinning on the CPUs this benchmark may use."""

    def __init__(self, n: int):
        import subprocess
        import sys

        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]

    def stop(self) -> None:
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()


class Replicas:
    """The deployment's replica states, polled every second on a thread: [(t, running, other)]."""

    def __init__(self, app: str, deployment: str):
        import threading

        self.app, self.deployment, self.log = app, deployment, []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        from ray import serve

        while not self.stop.is_set():
            try:
                states = serve.status().applications[self.app].deployments[self.deployment].replica_states
                running = int(states.get("RUNNING", 0))
                self.log.append((time.perf_counter(), running, sum(states.values()) - running))
            except Exception:  # noqa: BLE001 - the controller may be busy; the next poll counts
                pass
            self.stop.wait(1.0)

    def now(self) -> tuple[int, int]:
        return self.log[-1][1:] if self.log else (0, 0)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def replica_nodes(app: str) -> dict[str, str]:
    """Replica actor name -> node id, for the live replicas of `app`."""
    import ray
    from ray.util.state import list_actors

    return {a.name: a.node_id for a in list_actors(address=ray.get_runtime_context().gcs_address,
                                                   filters=[("state", "=", "ALIVE")], limit=10_000)
            if a.name and a.name.startswith(f"SERVE_REPLICA::{app}#")}


def kill_node(cluster, node) -> None:
    """Lose a whole node: SIGKILL its raylet's workers, then its raylet, object store and agents."""
    import signal

    import psutil

    raylet = node.all_processes.get("raylet")
    try:
        children = psutil.Process(raylet[0].process.pid).children(recursive=True) if raylet else []
    except psutil.NoSuchProcess:
        children = []
    for p in children:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    cluster.remove_node(node, allow_graceful=False)


def p_ms(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def phase_summary(name, clients, hog, entries, seconds, replicas) -> dict:
    ok = [e for e in entries if e[2] == 200]
    codes: dict[str, int] = {}
    steps: dict[str, int] = {}
    for e in entries:
        codes[str(e[2])] = codes.get(str(e[2]), 0) + 1
        if e[3] is not None:
            steps[str(e[3])] = steps.get(str(e[3]), 0) + 1
    running = [r[1] for r in replicas]
    return {"phase": name, "clients": clients, "hog": hog, "seconds": round(seconds, 1),
            "ok_per_s": round(len(ok) / max(seconds, 1e-9), 1), "status": codes, "steps": steps,
            "p50_ms": p_ms([e[1] for e in ok], 50), "p99_ms": p_ms([e[1] for e in ok], 99),
            "replica_p99_ms": p_ms([e[4] for e in ok], 99),
            "replicas": {"min": min(running, default=None), "max": max(running, default=None),
                         "end": running[-1] if running else None},
            "errors_other_than_429_503": sum(v for k, v in codes.items() if k not in ("200", "429", "503"))}


async def drive_phases(base: str, body: dict, phase_s: float, hog_n: int, honor: bool, slo_ms: float,
                       replicas: Replicas, cluster, app: str) -> dict:
    load = Load(body, honor)
    timeline, phases, node_loss = [], [], None
    window_s = min(5.0, max(1.0, phase_s / 3))
    async with client_session(base, 128, 60.0) as c:
        t_start = time.perf_counter()
        for name, clients, hog_on, kill in PHASES:
            hog = Hog(hog_n) if hog_on else None
            load.resize(c, clients)
            p0, cpu0 = time.perf_counter(), time.process_time()
            t_kill = None
            try:
                while time.perf_counter() - p0 < phase_s:
                    await asyncio.sleep(1.0)
                    now = time.perf_counter()
                    # a third into the phase, or as soon after as two replicas run (until two thirds)
                    if kill and t_kill is None and phase_s / 3 <= now - p0 <= 2 * phase_s / 3:
                        node_loss = await asyncio.to_thread(lose_a_replica_node, cluster, app)
                        if node_loss.get("killed"):
                            t_kill = time.perf_counter()
                    last = [e for e in load.log if e[0] > now - 1.0]
                    ok = [e for e in last if e[2] == 200]
                    running, other = replicas.now()
                    timeline.append({"t_s": round(now - t_start, 2), "phase": name, "clients": clients,
                                     "answers": len(last), "ok": len(ok), "p99_ms": p_ms([e[1] for e in ok], 99),
                                     "steps_mean": round(float(np.mean([e[3] for e in ok if e[3] is not None])), 2)
                                     if any(e[3] is not None for e in ok) else None,
                                     "replicas_running": running, "replicas_other": other})
            finally:
                if hog is not None:
                    hog.stop()
            p1 = time.perf_counter()
            entries = [e for e in load.log if p0 < e[0] <= p1]
            phases.append(phase_summary(name, clients, hog_on, entries, p1 - p0,
                                        [r for r in replicas.log if p0 <= r[0] <= p1]))
            phases[-1]["replicas_over_time"] = [r[1] for r in replicas.log if p0 <= r[0] <= p1]
            phases[-1]["client_cpu_pct"] = round(100 * (time.process_time() - cpu0) / (p1 - p0))  # of one core
            if kill and node_loss is not None:
                if t_kill is not None:
                    after = [e for e in load.log if t_kill < e[0] <= p1]
                    errs: dict[str, int] = {}
                    for e in after:
                        if e[2] != 200:
                            errs[str(e[2])] = errs.get(str(e[2]), 0) + 1
                    node_loss["errors_after_kill"] = errs
                    kinds: dict[str, int] = {}
                    for t, kind in load.no_answer:
                        if t_kill < t <= p1:
                            kinds[kind] = kinds.get(kind, 0) + 1
                    node_loss["no_answer_after_kill"] = kinds  # 599s by the client's exception
                    node_loss["recovered_after_s"] = None
                    k = 0.0
                    while t_kill + k + window_s <= p1:  # the first window whose p99 is within the SLO
                        ok = [e[1] for e in after if t_kill + k < e[0] <= t_kill + k + window_s and e[2] == 200]
                        if len(ok) >= 10 and np.percentile(ok, 99) <= slo_ms:
                            node_loss["recovered_after_s"] = round(k + window_s, 1)
                            break
                        k += 1.0
                    node_loss["window_s"] = window_s
                phases[-1]["node_loss"] = node_loss
            print(json.dumps({k: v for k, v in phases[-1].items() if k != "replicas_over_time"}), flush=True)
        load.resize(c, 0)
    return {"phases": phases, "timeline": timeline}


def lose_a_replica_node(cluster, app: str) -> dict:
    """Kill the node of one replica when at least two run on different nodes (else report why not)."""
    where = replica_nodes(app)
    nodes = {n.node_id: n for n in cluster.worker_nodes}
    hosting = sorted({nid for nid in where.values() if nid in nodes})
    if len(hosting) < 2:
        return {"killed": False, "why": f"{len(where)} replica(s) on {len(hosting)} node(s): nothing to route around"}
    victim = hosting[-1]
    kill_node(cluster, nodes[victim])
    return {"killed": True, "node": victim, "replicas_before": len(where),
            "replicas_on_node": sum(1 for n in where.values() if n == victim)}


def run_phases(args: argparse.Namespace) -> dict:
    ingress_env = set_ingress(args.ingress)
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    from serve.app import build_app
    from synth.serving.autoscale import POLICY_FUNCTION

    artifact = ensure_artifact(args.artifact, args.train_steps, args.family)
    hog_n = args.hog or 4 * len(os.sched_getaffinity(0))
    body = {"rows": args.rows}  # no steps: the replica picks them
    load_before = os.getloadavg()
    from ray._common.utils import get_ray_address_file

    record = Path(get_ray_address_file(None))  # Cluster records its head as the machine's Ray: put it back
    before = record.read_text() if record.exists() else None
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": True})
    if before is None:
        record.unlink(missing_ok=True)
    else:
        record.write_text(before)
    for _ in range(args.nodes):
        cluster.add_node(num_cpus=1, resources={"synth_serve": 1}, object_store_memory=200 << 20)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    port = _free_port()
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port},
                logging_config=PROXY_LOGGING)
    base = f"http://127.0.0.1:{port}"
    runs = {}
    try:
        for mode in args.modes:
            serve.run(build_app({
                "artifact_uri": artifact, "slo_p99_ms": args.slo_ms, "num_cpus": 1, "max_ongoing_requests": 64,
                "control": {"enabled": mode == "closed"}, "deployment_name": "Bench",
                "ray_actor_options": {"resources": {"synth_serve": 1}},
                "autoscaling_config": {
                    "min_replicas": args.min_replicas, "max_replicas": args.max_replicas, "initial_replicas": args.initial_replicas,
                    "target_ongoing_requests": 24, "metrics_interval_s": 1.0, "look_back_period_s": 5.0,
                    "upscale_delay_s": 3.0, "downscale_delay_s": args.downscale_delay_s,
                    "policy": {"policy_function": POLICY_FUNCTION,
                               "policy_kwargs": {"upscale_at": 1.0, "downscale_below": 0.5, "shed_at": 0.02,
                                                 "min_gain": args.min_gain}}}}),
                name="bench", route_prefix="/")
            replicas = Replicas("bench", "Bench")
            try:
                print(f"\n== {mode} loop: {args.nodes} nodes, {args.min_replicas}..{args.max_replicas} replicas, "
                      f"{args.phase_s:.0f} s phases ==", flush=True)
                runs[mode] = asyncio.run(drive_phases(base, body, args.phase_s, hog_n, not args.no_honor_retry_after,
                                                      args.slo_ms, replicas, cluster, "bench"))
                t0 = replicas.log[0][0] if replicas.log else 0.0
                runs[mode]["replicas_timeline"] = [(round(t - t0, 1), r, o) for t, r, o in replicas.log]  # running, other
            finally:
                replicas.close()
                serve.delete("bench")
            if mode != args.modes[-1]:  # the next mode gets its lost node back
                cluster.add_node(num_cpus=1, resources={"synth_serve": 1}, object_store_memory=200 << 20)
                cluster.wait_for_nodes()
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()
    return {"benchmark": "serve_load", "profile": "phases", "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": {"cpus": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
                        "platform": platform.platform(), "loadavg_before": [round(x, 2) for x in load_before],
                        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
                        "note": "clients, Ray head, Serve proxy, replicas and hog share these cores"},
            "artifact": artifact, "family": args.family or "default", "request": body, "slo_p99_ms": args.slo_ms,
            "nodes": args.nodes, "min_replicas": args.min_replicas, "max_replicas": args.max_replicas, "hog_processes": hog_n,
            "min_gain": args.min_gain, "ingress": args.ingress, "ingress_env": ingress_env,
            "phase_s": args.phase_s, "honor_retry_after": not args.no_honor_retry_after, "runs": runs}


def print_phases(out: dict) -> None:
    print("\n| mode | phase | ok/s | p50 ms | p99 ms | status | steps | replicas (min-max, over time) |")
    print("|---|---|---|---|---|---|---|---|")
    for mode, r in out["runs"].items():
        for ph in r["phases"]:
            rep = ph["replicas"]
            print(f"| {mode} | {ph['phase']} | {ph['ok_per_s']} | {ph['p50_ms']} | {ph['p99_ms']} | {ph['status']} | "
                  f"{ph['steps']} | {rep['min']}-{rep['max']}, {ph['replicas_over_time']} |")
        for ph in r["phases"]:
            if "node_loss" in ph:
                print(f"node loss ({mode}): {json.dumps(ph['node_loss'])}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", choices=["batching", "phases"], default="batching")
    p.add_argument("--artifact", help="model artifact URI (default: train a default-config model once)")
    p.add_argument("--family", help="train this family instead of the default one (no --artifact)")
    p.add_argument("--train-steps", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--rate", type=float, default=None, help="fixed arrival rate (requests/s); default closed loop")
    p.add_argument("--requests", type=int, default=3000, help="at most this many requests per configuration")
    p.add_argument("--duration-s", type=float, default=20.0, help="at most this long per configuration")
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--rows", type=int, default=1)
    p.add_argument("--sampler", default="dpmpp_2m")
    p.add_argument("--steps", type=int, default=8, help="0 = let the endpoint pick (SLO-aware); batching profile")
    p.add_argument("--format", default="json", choices=["json", "arrow", "parquet"])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 1])
    p.add_argument("--batch-wait-s", type=float, default=0.005)
    p.add_argument("--slo-ms", type=float, default=150.0)
    p.add_argument("--ingress", choices=["haproxy", "proxy"], default="haproxy",
                   help="HAProxy in front of the replicas (the chart's default) or Serve's Python proxies")
    p.add_argument("--no-ceiling", action="store_true", help="skip the no-model HTTP ceiling run")
    # profile "phases"
    p.add_argument("--phase-s", type=float, default=20.0, help="seconds per phase (phases profile)")
    p.add_argument("--nodes", type=int, default=3, help="worker nodes, one replica each at most (phases)")
    p.add_argument("--max-replicas", type=int, default=3, help="autoscaling maximum (phases)")
    p.add_argument("--min-replicas", type=int, default=1, help="autoscaling minimum (phases)")
    p.add_argument("--initial-replicas", type=int, default=1, help="replicas at deployment (phases)")
    p.add_argument("--downscale-delay-s", type=float, default=30.0)
    p.add_argument("--min-gain", type=float, default=0.15,
                   help="SLOPolicy's capacity check: answers gained per added replica to keep it (0: off; phases)")
    p.add_argument("--hog", type=int, default=None, help="hog processes (default 4 per usable CPU)")
    p.add_argument("--no-honor-retry-after", action="store_true")
    p.add_argument("--modes", nargs="+", default=["closed"], choices=["closed", "open"],
                   help="with the replica's closed loop (control.enabled) and/or without it (phases)")
    p.add_argument("--out", default=None, help="default bench/results/serve_load.json, or serve_load_phases.json")
    args = p.parse_args()
    if args.profile == "phases":
        if args.max_replicas > args.nodes:
            p.error(f"--max-replicas {args.max_replicas} > --nodes {args.nodes}: one replica per node at most")
        out_path = Path(args.out or REPO / "bench" / "results" / "serve_load_phases.json")
        out = run_phases(args)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(out, indent=1) + "\n")
        print_phases(out)
        print(f"wrote {out_path}")
        return
    args.out = args.out or str(REPO / "bench" / "results" / "serve_load.json")
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
