"""Bulk synthesis throughput: bare in-process sampling against the Ray Data pipeline (Parquet
shards committed), with 1 and 2 sampler actors, and the driver's peak resident memory.

    python bench/synthesis_throughput.py --artifact runs/quickstart/model [--rows 800000]
    python bench/synthesis_throughput.py --rows 10000000 --shard-rows 250000 --steps 1 --actors 2 --tag 10m

Writes bench/results/synthesis_throughput.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import threading
import time
from pathlib import Path

import psutil
import torch


class PeakRSS:
    def __init__(self):
        self.peak, self._stop = 0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        p = psutil.Process()
        while not self._stop.is_set():
            self.peak = max(self.peak, p.memory_info().rss)
            time.sleep(0.2)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *a):
        self._stop.set()
        self._t.join()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--artifact", default="runs/bench-quality/model")
    ap.add_argument("--rows", type=int, default=800_000)
    ap.add_argument("--shard-rows", type=int, default=100_000)
    ap.add_argument("--sampler", default="dpmpp_2m")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--tag", default="", help="suffix of the results file")
    args = ap.parse_args()

    from synth.families import load_engine
    from synth.io.raycluster import ensure_ray
    from synth.pipelines.synthesize import SynthesizeConfig, synthesize

    engine = load_engine(args.artifact)
    bare = {}
    for threads in (1, os.cpu_count() or 1):
        torch.set_num_threads(threads)
        n = 50_000
        engine.sample(2000, sampler=args.sampler, steps=args.steps, seed=0)  # warm-up
        t0 = time.perf_counter()
        engine.sample(n, sampler=args.sampler, steps=args.steps, seed=1)
        bare[threads] = n / (time.perf_counter() - t0)
        print(f"bare in-process sampling, {threads} thread(s): {bare[threads]:,.0f} rows/s", flush=True)

    ensure_ray()
    runs = {}
    for actors in args.actors:
        out = f"runs/bench-synth-{actors}"
        shutil.rmtree(out, ignore_errors=True)
        cfg = SynthesizeConfig(artifact=args.artifact, output=out, rows=args.rows, shard_rows=args.shard_rows,
                               sampler=args.sampler, steps=args.steps, actors=actors, cpus_per_actor=1,
                               threads_per_actor=1)
        with PeakRSS() as rss:
            t0 = time.perf_counter()
            m = synthesize(cfg)
            wall = time.perf_counter() - t0
        runs[actors] = {"rows_per_s": args.rows / wall, "wall_s": wall, "driver_peak_rss_mb": rss.peak / 2**20,
                        "shards": len(m["shards"])}
        print(f"ray data, {actors} actor(s): {runs[actors]['rows_per_s']:,.0f} rows/s end to end, "
              f"driver peak RSS {runs[actors]['driver_peak_rss_mb']:.0f} MB", flush=True)
    cpus = os.cpu_count() or 1
    out = {
        "machine": {"cpus": cpus}, "rows": args.rows, "sampler": args.sampler, "steps": args.steps,
        "bare_rows_per_s": {str(k): v for k, v in bare.items()},
        "ray": {str(k): v for k, v in runs.items()},
    }
    if 2 in runs:
        out["efficiency_2_actors_vs_bare_all_cores"] = runs[2]["rows_per_s"] / bare[cpus]
    if 1 in runs:
        out["efficiency_1_actor_vs_bare_1_thread"] = runs[1]["rows_per_s"] / bare[1]
    if 1 in runs and 2 in runs:
        out["speedup_2_vs_1_actors"] = runs[2]["rows_per_s"] / runs[1]["rows_per_s"]
    Path("bench/results").mkdir(parents=True, exist_ok=True)
    Path(f"bench/results/synthesis_throughput{'-' + args.tag if args.tag else ''}.json").write_text(
        json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in out.items() if k.startswith(("efficiency", "speedup"))}))


if __name__ == "__main__":
    main()
