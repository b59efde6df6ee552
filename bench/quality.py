"""Quality benchmark on UCI Adult: fit time, SDMetrics QualityReport (all pairs), C2ST, ML
efficacy and DCR for several samplers, each judged on the held-out test split.

    python bench/quality.py                      # configs/adult.yaml settings
    python bench/quality.py --steps 2000 --samplers dpmpp_2m,ddim --tag quick

Writes bench/results/quality[-TAG].json and prints a table.
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

from synth.config import RunConfig  # noqa: E402
from synth.families import load_engine  # noqa: E402
from synth.evaluate.reference import evaluate_against_reference  # noqa: E402
from synth.train.fit import fit  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/adult.yaml")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--set", action="append", default=[], help="dotted.key=json-value overrides")
    ap.add_argument("--samplers", default="dpmpp_2m:20,unipc:20,ddim:50,ddim:20,dpmpp_2m:10")
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--tag", default="")
    ap.add_argument("--output", default="runs/bench-quality")
    args = ap.parse_args()

    import yaml

    raw = yaml.safe_load(Path(args.config).read_text())
    raw["output"] = args.output
    if args.steps:
        raw.setdefault("train", {})["steps"] = args.steps
    for item in args.set:
        key, value = item.split("=", 1)
        node = raw
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        try:
            node[leaf] = json.loads(value)
        except json.JSONDecodeError:
            node[leaf] = value  # a bare string
    cfg = RunConfig.parse(raw)

    t0 = time.perf_counter()
    result = fit(cfg, report=lambda m, _opt: print(f"  step {m['step']}: loss {m['loss']:.4f} val {m['val_loss']:.4f} "
                                              f"{m['samples_per_s']:.0f} rows/s", flush=True))
    fit_s = time.perf_counter() - t0
    engine = load_engine(result.artifact_uri)
    prep = result.prepared
    kinds = prep.codec.kinds()
    test = prep.test.to_pandas()
    runs = []
    for spec in args.samplers.split(","):
        sampler, steps = spec.split(":")
        t1 = time.perf_counter()
        syn = engine.sample(args.rows, sampler=sampler, steps=int(steps), seed=0)
        sample_s = time.perf_counter() - t1
        sdm = quality_report(test, syn.to_pandas(), kinds)
        ours = evaluate_against_reference(syn, engine.manifest, target=cfg.data.target)
        eff = ours.get("efficacy") or {}
        run = {
            "sampler": sampler, "steps": int(steps), "sample_s": sample_s, "rows_per_s": args.rows / sample_s,
            "sdmetrics": sdm, "c2st_auc": ours["detection"]["c2st_auc"],
            "ml_efficacy_f1": {"synthetic": (eff.get("synthetic") or {}).get("f1_macro"),
                               "real": (eff.get("real") or {}).get("f1_macro")},
            "dcr_share": ours["privacy"]["dcr_share"], "exact_copy_rate": ours["privacy"]["exact_copy_rate"],
            "ours": {"shapes": ours["column_shapes"]["mean"], "pair_trends": ours["pair_trends"]["mean"]},
        }
        runs.append(run)
        print(f"{sampler:>9} {steps:>3} steps | SDMetrics {sdm['overall']:.4f} (shapes {sdm['column_shapes']:.4f}, "
              f"pairs {sdm['column_pair_trends']:.4f}) | C2ST {run['c2st_auc']:.3f} | F1 syn "
              f"{run['ml_efficacy_f1']['synthetic']} real {run['ml_efficacy_f1']['real']} | "
              f"{run['rows_per_s']:.0f} rows/s", flush=True)
    out = {
        "dataset": "adult", "machine": {"cpus": os.cpu_count()}, "fit_s": fit_s,
        "train": result.metrics, "config": cfg.model_dump(mode="json"), "runs": runs,
        "best": max(runs, key=lambda r: r["sdmetrics"]["overall"]),
    }
    path = Path("bench/results") / f"quality{'-' + args.tag if args.tag else ''}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1, default=str))
    print(f"fit {fit_s:.0f} s; wrote {path}")


if __name__ == "__main__":
    main()
