"""Fidelity against network evaluations on UCI Adult: the teacher with DPM-Solver++, UniPC and
DDIM at NFE 50, 20, 10, 8, 4, and distilled students at 4, 2 and 1 NFE, unguided and guided.

    python bench/quality_vs_nfe.py                                # teacher from bench/quality.py's run
    python bench/quality_vs_nfe.py --teacher runs/adult/model --students 4,2,1

Guided runs condition every row on the `income` value of a held-out test row (so the condition
marginal matches the test split) with guidance --guidance; the teacher pays two evaluations
per step for it, the guidance-distilled student one. Every run draws --rows rows and is judged
on the held-out test split: SDMetrics QualityReport (all pairs), our C2ST AUC, rows/s.
Writes bench/results/quality_vs_nfe.json and prints a markdown table (docs/distillation.md).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sdv_judge import quality_report  # noqa: E402

from synth.io.data import SplitConfig, load_splits  # noqa: E402
from synth.distill import DistillConfig, distill  # noqa: E402
from synth.distill.run import load_teacher  # noqa: E402
from synth.distill.student import teacher_trajectories, thin  # noqa: E402
from synth.families import load_engine  # noqa: E402
from synth.evaluate.reference import evaluate_against_reference  # noqa: E402


def judge(engine, sampler, steps, rows, test, kinds, manifest, conditions=None, guidance=1.0) -> dict:
    engine.sample(256, sampler=sampler, steps=steps, seed=1)  # warm-up: first calls pay one-time costs
    t = time.perf_counter()
    syn = engine.sample(rows, conditions, sampler=sampler, steps=steps, guidance=guidance, seed=0)
    secs = time.perf_counter() - t
    sdm = quality_report(test.to_pandas(), syn.to_pandas(), kinds)
    ours = evaluate_against_reference(syn, manifest, target="income")
    return {"sampler": sampler, "steps": steps, "nfe": engine.cost(sampler, steps, guidance if conditions else 1.0),
            "guided": bool(conditions), "guidance": guidance if conditions else None,
            "rows_per_s": rows / secs, "quality": sdm["overall"], "column_shapes": sdm["column_shapes"],
            "pair_trends": sdm["column_pair_trends"], "c2st_auc": ours["detection"]["c2st_auc"],
            "dcr_share": ours["privacy"]["dcr_share"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", default="runs/bench-quality/model")
    ap.add_argument("--students", default="4,2,1")
    ap.add_argument("--student-dir", default="runs/bench-distill")
    ap.add_argument("--teacher-steps", type=int, default=16)
    ap.add_argument("--trajectories", type=int, default=400_000)
    ap.add_argument("--train-steps", type=int, default=6000)
    ap.add_argument("--nfe", default="50,20,10,8,4")
    ap.add_argument("--teacher-samplers", default="dpmpp_2m,unipc,ddim")
    ap.add_argument("--guided-nfe", default="50,20,8,4", help="teacher guided runs (steps = NFE / 2)")
    ap.add_argument("--guidance", type=float, default=1.5)
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--reuse-students", action="store_true", help="judge existing students, do not distil")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()

    teacher = load_teacher(args.teacher)
    m = teacher.manifest
    kinds = m["columns"]
    _, _, test = load_splits(m["input"]["uri"], SplitConfig(**{k: m["split"][k] for k in ("train", "val", "test", "seed")}))
    cond = {"income": test["income"].to_pylist()[:args.rows]}
    if len(cond["income"]) < args.rows:
        cond = {"income": (cond["income"] * (args.rows // len(cond["income"]) + 1))[:args.rows]}

    runs = []

    def add(name: str, r: dict) -> None:
        r["model"] = name
        runs.append(r)
        print(f"  {name:8s} {r['sampler']:9s} NFE {r['nfe']:3d} {'guided' if r['guided'] else '      '} "
              f"quality {r['quality']:.4f} (shapes {r['column_shapes']:.4f}, pairs {r['pair_trends']:.4f}) "
              f"C2ST {r['c2st_auc']:.3f} {r['rows_per_s']:,.0f} rows/s", flush=True)

    for sampler in args.teacher_samplers.split(","):
        for n in map(int, args.nfe.split(",")):
            add("teacher", judge(teacher, sampler, n, args.rows, test, kinds, m))
    for n in map(int, args.guided_nfe.split(",")):
        add("teacher", judge(teacher, "dpmpp_2m", n // 2, args.rows, test, kinds, m, cond, args.guidance))

    students = sorted(map(int, args.students.split(",")), reverse=True)
    distill_info = {}
    packed = None
    for k in students:
        out = os.path.join(args.student_dir, f"student-{k}")
        if not args.reuse_students:
            cfg = DistillConfig.parse({
                "name": f"bench-distill-{k}", "teacher": args.teacher, "output": out, "steps": k,
                "teacher_steps": args.teacher_steps, "trajectories": args.trajectories, "target": "income",
                "train": {"steps": args.train_steps, "batch_size": 1024, "lr": 1e-3, "eval_every": 1000}})
            t = time.perf_counter()
            if packed is None:  # one draw of trajectories serves every student (their grids nest)
                first = cfg.model_copy(update={"steps": students[0]})
                packed = teacher_trajectories(teacher, first, args.trajectories)
                traj_s = time.perf_counter() - t
                t = time.perf_counter()
            result = distill(cfg, trajectories=thin(packed, teacher.codec.width, students[0], k))
            distill_info[k] = {"trajectories_s": traj_s, "distill_s": time.perf_counter() - t,
                               "val_loss": result.metrics.get("val_loss"), "artifact_id": result.artifact_id,
                               "manifest_evaluation": result.manifest.get("evaluation")}
            print(f"student {k}: trained in {distill_info[k]['distill_s']:.0f} s (trajectories {traj_s:.0f} s, "
                  f"shared), val loss {distill_info[k]['val_loss']:.4f}", flush=True)
        student = load_engine(out)
        add("student", judge(student, "distilled", k, args.rows, test, kinds, student.manifest))
        add("student", judge(student, "distilled", k, args.rows, test, kinds, student.manifest, cond, args.guidance))

    # the target: the 4-step student's fidelity error within 1.1x of the 50-step teacher's, at >= 10x rows/s
    t50 = [r for r in runs if r["model"] == "teacher" and r["nfe"] == 50 and not r["guided"]]
    best50 = max(t50, key=lambda r: r["quality"]) if t50 else None
    s4 = next((r for r in runs if r["model"] == "student" and r["nfe"] == 4 and not r["guided"]), None)
    target = None
    if best50 and s4:
        ratio = (1 - s4["quality"]) / (1 - best50["quality"])
        speed = s4["rows_per_s"] / best50["rows_per_s"]
        target = {"teacher_50": f"{best50['sampler']} quality {best50['quality']:.4f}",
                  "student_4_quality": s4["quality"], "error_ratio": ratio, "speedup": speed,
                  "met": ratio <= 1.1 and speed >= 10}
        print(f"target: error ratio {ratio:.3f} (<= 1.1), speed-up {speed:.1f}x (>= 10): "
              f"{'MET' if target['met'] else 'MISSED'}")

    result = {"dataset": "UCI Adult (bundled)", "machine": f"{os.cpu_count()} CPU cores",
              "teacher": {"uri": args.teacher, "artifact_id": m.get("artifact_id"), "train_steps": m["train"]["steps"]},
              "rows": args.rows, "guidance": args.guidance, "distill": {
                  "teacher_sampler": "dpmpp_2m", "teacher_steps": args.teacher_steps,
                  "trajectories": args.trajectories, "train_steps": args.train_steps, "runs": distill_info},
              "runs": runs, "target": target}
    Path("bench/results").mkdir(parents=True, exist_ok=True)
    path = Path(f"bench/results/quality_vs_nfe{'-' + args.tag if args.tag else ''}.json")
    path.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {path}\n")
    print("| model | sampler | NFE | guided | SDMetrics | shapes | pair trends | C2ST AUC | rows/s |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|")
    for r in runs:
        print(f"| {r['model']} | {r['sampler']} | {r['nfe']} | {'w=' + str(r['guidance']) if r['guided'] else 'no'} | "
              f"{r['quality']:.4f} | {r['column_shapes']:.4f} | {r['pair_trends']:.4f} | {r['c2st_auc']:.3f} | "
              f"{r['rows_per_s']:,.0f} |")


if __name__ == "__main__":
    main()
