"""Training throughput: a plain single-process torch loop against the Ray Train loop (same
model, batch size and precision), and 1 against 2 Ray Train workers on this machine with the
validation loss each reaches in the same wall time.

The overhead is split in two: the same plain loop run as a Ray task (2 CPUs, with the local Ray
running) is what the Ray runtime alone costs on this machine (its daemons and idle actors share
the 2 cores); the rest is synth's Ray Train path (V2 worker thread, Accelerate, Ray Data ingest,
checkpoint reports).

    python bench/train_throughput.py [--steps 1500]

Writes bench/results/train_throughput.json.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from synth.config import RunConfig
from synth.engine.diffusion import DiffusionEngine
from synth.train.prepare import encode_tensor, prepare
from synth.train.loop import lr_lambda, make_accelerator


def plain_loop(cfg: RunConfig, steps: int) -> dict:
    """What a user would write by hand: no Ray, no Accelerate."""
    prep = prepare(cfg)
    x = encode_tensor(prep.codec, prep.train, seed=0)
    torch.manual_seed(0)
    engine = DiffusionEngine(cfg.model, prep.codec)
    opt = torch.optim.AdamW(engine.net.parameters(), lr=cfg.train.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.train))
    bf16 = make_accelerator(cfg.train).mixed_precision == "bf16"
    g = torch.Generator().manual_seed(0)
    bs = cfg.train.batch_size
    t0 = None
    for step in range(steps):
        if step == 50:
            t0 = time.perf_counter()
        idx = torch.randint(0, x.shape[0], (bs,), generator=g)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = engine.loss(engine.net, x[idx], g)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(engine.net.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        engine.update_ema(engine.net, 0.999)
    dt = time.perf_counter() - t0
    return {"samples_per_s": (steps - 50) * bs / dt, "precision": "bf16" if bf16 else "fp32"}


def plain_in_ray_task(cfg: RunConfig, steps: int) -> dict:
    import ray

    @ray.remote(num_cpus=2)
    def run(raw: dict) -> dict:
        torch.set_num_threads(2)
        return plain_loop(RunConfig.parse(raw), steps)

    return ray.get(run.remote(cfg.model_dump(mode="json")))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1500)
    args = ap.parse_args()
    cfg_raw = {"output": "runs/bench-train", "data": {"uri": "bundled:adult"},
               "train": {"steps": args.steps, "eval_every": 250, "batch_size": 512}}
    cfg = RunConfig.parse(cfg_raw)
    torch.set_num_threads(os.cpu_count() or 1)
    plain = plain_loop(cfg, min(args.steps, 800))
    print(f"plain torch loop: {plain['samples_per_s']:.0f} samples/s ({plain['precision']})", flush=True)

    from synth.io.raycluster import ensure_ray

    ensure_ray()
    in_ray = plain_in_ray_task(cfg, min(args.steps, 800))
    print(f"plain torch loop as a Ray task: {in_ray['samples_per_s']:.0f} samples/s", flush=True)
    runs = {}
    for workers, cpus in ((1, 2.0), (2, 1.0)):
        raw = json.loads(json.dumps(cfg_raw))
        raw["output"] = f"runs/bench-train-{workers}"
        raw["name"] = f"tp{workers}"
        raw["scaling"] = {"num_workers": workers, "cpus_per_worker": cpus, "storage_path": f"/tmp/synth-bench-train-{time.time_ns()}"}
        reports: list[dict] = []
        from synth.train.fit import fit

        t0 = time.perf_counter()
        fit(RunConfig.parse(raw), report=lambda m, _o: reports.append(m))
        runs[workers] = {"total_s": time.perf_counter() - t0}
        from synth.io.artifact import read_artifact

        manifest = read_artifact(raw["output"] + "/model").manifest
        runs[workers]["final"] = manifest["metrics"]
        runs[workers]["history"] = manifest["history"]  # every eval_every steps: loss, val_loss, wall_s
        print(f"ray train {workers} worker(s): {runs[workers]['final']}", flush=True)
    out = {
        "machine": {"cpus": os.cpu_count()}, "steps": args.steps, "batch_size": 512,
        "plain_samples_per_s": plain["samples_per_s"], "precision": plain["precision"],
        "plain_in_ray_task_samples_per_s": in_ray["samples_per_s"],
        "ray": {str(k): v for k, v in runs.items()},
    }
    one = runs[1]["final"]["samples_per_s"]
    out["overhead_1_worker"] = 1 - one / plain["samples_per_s"]
    out["overhead_ray_runtime"] = 1 - in_ray["samples_per_s"] / plain["samples_per_s"]
    out["overhead_synth_ray_train_path"] = 1 - one / in_ray["samples_per_s"]
    out["speedup_2_vs_1"] = runs[2]["final"]["samples_per_s"] / one
    # validation loss each setting had reached by the same wall time (the slower run's end)
    t_common = min(runs[1]["history"][-1]["wall_s"], runs[2]["history"][-1]["wall_s"])
    out["val_loss_at_same_wall_time"] = {
        "wall_s": t_common,
        **{f"{k}_workers": float(np.interp(t_common, [h["wall_s"] for h in runs[k]["history"]],
                                           [h["val_loss"] for h in runs[k]["history"]])) for k in (1, 2)}}
    Path("bench/results").mkdir(parents=True, exist_ok=True)
    Path("bench/results/train_throughput.json").write_text(json.dumps(out, indent=1, default=float))
    print(json.dumps({k: out[k] for k in ("plain_samples_per_s", "plain_in_ray_task_samples_per_s", "overhead_1_worker",
                                          "overhead_ray_runtime", "overhead_synth_ray_train_path", "speedup_2_vs_1",
                                          "val_loss_at_same_wall_time")}))


if __name__ == "__main__":
    main()
