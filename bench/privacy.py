"""Privacy benchmark on UCI Adult: fidelity and attack success at epsilon 1, 3, 8 and without DP.

Every run trains the same model (configs/adult-dp.yaml: residual MLP 128 x 2, expected batch
1024, 3,000 steps) in this process; private runs use the config's declared schema with dp
preprocessing (10 % of epsilon) and DP-SGD for the rest, the non-private run fits its codec on
the data as usual. Each model draws 10,000 rows, judged on the held-out test split by SDMetrics
(QualityReport, all pairs) and by synth.evaluate (C2ST, ML efficacy, DCR, membership inference:
training rows as members against test rows as non-members).

    python bench/privacy.py                        # eps 1, 3, 8 and none; ~2-3 min per run on 2 cores
    python bench/privacy.py --eps 1 --eps none --steps 500

Results merge into bench/results/privacy.json (one entry per setting) and a table is printed.
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

RESULTS = Path(os.environ.get("PRIVACY_RESULTS", "bench/results/privacy.json"))


def run_one(eps: float | None, args) -> dict:
    import yaml

    raw = yaml.safe_load(Path(args.config).read_text())
    raw["output"] = f"{args.output}/eps-{eps if eps is not None else 'none'}"
    raw["train"]["steps"] = args.steps
    for item in args.set:
        key, value = item.split("=", 1)
        node = raw
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = json.loads(value)
    if eps is None:
        raw["privacy"] = {"enabled": False}
    else:
        raw["privacy"]["epsilon"] = eps
    cfg = RunConfig.parse(raw)
    t0 = time.perf_counter()
    result = fit(cfg)
    fit_s = time.perf_counter() - t0
    engine = load_engine(result.artifact_uri)
    t1 = time.perf_counter()
    syn = engine.sample(args.rows, seed=0)
    sample_s = time.perf_counter() - t1
    kinds = engine.codec.kinds()
    test = result.prepared.test.to_pandas()
    sdm = quality_report(test, syn.to_pandas(), kinds)
    ours = evaluate_against_reference(syn, engine.manifest, target=cfg.data.target)
    pr, eff = ours["privacy"], ours.get("efficacy") or {}
    mia = pr["membership_inference"]
    return {
        "epsilon_target": eps,
        "privacy": engine.manifest["privacy"],
        "fit_s": fit_s, "sample_s": sample_s, "steps": args.steps, "overrides": args.set,
        "sdmetrics": sdm,
        "ours": {"shapes": ours["column_shapes"]["mean"], "pair_trends": ours["pair_trends"]["mean"]},
        "c2st_auc": ours["detection"]["c2st_auc"],
        "ml_efficacy_f1": {"synthetic": (eff.get("synthetic") or {}).get("f1_macro"),
                           "real": (eff.get("real") or {}).get("f1_macro")},
        "mia": mia,
        "dcr": {k: pr[k] for k in ("median_dcr_synth", "median_dcr_holdout", "p05_dcr_synth", "p05_dcr_holdout",
                                   "dcr_share", "exact_copy_rate", "exact_copy_rate_holdout")},
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/adult-dp.yaml")
    ap.add_argument("--eps", action="append", help="epsilon to run, or 'none' (repeatable; default 1 3 8 none)")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--set", action="append", default=[], help="dotted.key=json-value overrides of the config")
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--output", default="runs/bench-privacy")
    args = ap.parse_args()
    settings = [None if e == "none" else float(e) for e in (args.eps or ["1", "3", "8", "none"])]

    out = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    out.setdefault("runs", {})
    for eps in settings:
        key = "none" if eps is None else f"{eps:g}"
        print(f"== epsilon {key}", flush=True)
        out["runs"][key] = run_one(eps, args)
        r = out["runs"][key]
        print(f"   spent {r['privacy'].get('epsilon', float('inf')):.3f} (sigma {r['privacy'].get('noise_multiplier')}) | "
              f"SDMetrics {r['sdmetrics']['overall']:.4f} | C2ST {r['c2st_auc']:.3f} | "
              f"F1 syn {r['ml_efficacy_f1']['synthetic']} | MIA AUC {r['mia']['auc']:.3f} "
              f"(dist {r['mia']['auc_distance']:.3f}, ratio {r['mia']['auc_density_ratio']:.3f}) | "
              f"DCR share {r['dcr']['dcr_share']:.3f} | fit {r['fit_s']:.0f} s", flush=True)
        out.update(dataset="adult", machine={"cpus": os.cpu_count()}, config=args.config)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(out, indent=1, default=str))
    order = sorted(out["runs"], key=lambda k: float("inf") if k == "none" else float(k))
    print(f"\n{'epsilon':>8} {'spent':>6} {'SDMetrics':>9} {'shapes':>7} {'pairs':>7} {'C2ST':>6} {'F1syn':>6} "
          f"{'MIA':>6} {'DCRsh':>6}")
    for k in order:
        r = out["runs"][k]
        spent = r["privacy"].get("epsilon")
        print(f"{k:>8} {spent if spent is None else round(spent, 3)!s:>6} {r['sdmetrics']['overall']:9.4f} "
              f"{r['sdmetrics']['column_shapes']:7.4f} {r['sdmetrics']['column_pair_trends']:7.4f} "
              f"{r['c2st_auc']:6.3f} {r['ml_efficacy_f1']['synthetic'] or float('nan'):6.3f} {r['mia']['auc']:6.3f} "
              f"{r['dcr']['dcr_share']:6.3f}")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
