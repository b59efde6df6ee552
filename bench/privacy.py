"""Privacy benchmark on UCI Adult: fidelity and attack success against epsilon, per private family.

    python bench/privacy.py                                   # marginal (MST): eps 0.5, 1, 3, 8 and none
    python bench/privacy.py --config configs/adult-dp.yaml --eps 1 --eps 3 --eps 8 --eps none --steps 3000
                                                              # DP-SGD diffusion, ~2-3 min per run on 2 cores

configs/adult-marginal.yaml: MST under zCDP on the declared grid, Private-PGM fit (its no-DP run is the
same algorithm with exact counts). configs/adult-dp.yaml: residual MLP 128 x 2, expected batch 1024, dp
preprocessing (10 % of epsilon) and DP-SGD for the rest; its no-DP run fits its codec on the data.
Each model draws 10,000 rows, judged on the held-out test split by SDMetrics (QualityReport, all
pairs) and by synth.evaluate (C2ST, ML efficacy, DCR, membership inference: training rows as members
against test rows as non-members).

Results merge into bench/results/privacy.json (one entry per family/epsilon), a plot of quality
against epsilon goes to bench/results/privacy.png, and a table is printed.
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
    family = raw.get("model", {}).get("family", "marginal")
    raw["output"] = f"{args.output}/{family}-eps-{eps if eps is not None else 'none'}"
    if args.steps is not None:
        raw.setdefault("train", {})["steps"] = args.steps
    for item in args.set:
        key, value = item.split("=", 1)
        node = raw
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = json.loads(value)
    if eps is None and family == "marginal":  # the same algorithm with exact counts (it needs the declared grid)
        raw["privacy"]["enabled"] = False
    elif eps is None:
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
        "family": family,
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
    ap.add_argument("--config", default="configs/adult-marginal.yaml",
                    help="configs/adult-marginal.yaml (MST) or configs/adult-dp.yaml (DP-SGD diffusion)")
    ap.add_argument("--eps", action="append", help="epsilon to run, or 'none' (repeatable; default 1 3 8 none)")
    ap.add_argument("--steps", type=int, default=None, help="train.steps (DP-SGD runs; the config's otherwise)")
    ap.add_argument("--set", action="append", default=[], help="dotted.key=json-value overrides of the config")
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--output", default="runs/bench-privacy")
    args = ap.parse_args()
    settings = [None if e == "none" else float(e) for e in (args.eps or ["0.5", "1", "3", "8", "none"])]

    out = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    out.setdefault("runs", {})
    for eps in settings:
        import yaml

        family = yaml.safe_load(Path(args.config).read_text()).get("model", {}).get("family", "marginal")
        key = f"{family}/" + ("none" if eps is None else f"{eps:g}")
        print(f"== {key}", flush=True)
        out["runs"][key] = run_one(eps, args)
        r = out["runs"][key]
        print(f"   spent {r['privacy'].get('epsilon', float('inf')):.3f} (sigma {r['privacy'].get('noise_multiplier')}) | "
              f"SDMetrics {r['sdmetrics']['overall']:.4f} | C2ST {r['c2st_auc']:.3f} | "
              f"F1 syn {r['ml_efficacy_f1']['synthetic']} | MIA AUC {r['mia']['auc']:.3f} "
              f"(dist {r['mia']['auc_distance']:.3f}, ratio {r['mia']['auc_density_ratio']:.3f}) | "
              f"DCR share {r['dcr']['dcr_share']:.3f} | fit {r['fit_s']:.0f} s", flush=True)
        out.update(dataset="adult", machine={"cpus": os.cpu_count()})
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(out, indent=1, default=str))
    order = sorted(out["runs"], key=_order)
    plot(out, RESULTS.with_suffix(".png"))
    print(f"\n{'run':>16} {'spent':>6} {'SDMetrics':>9} {'shapes':>7} {'pairs':>7} {'C2ST':>6} {'F1syn':>6} "
          f"{'MIA':>6} {'DCRsh':>6}")
    for k in order:
        r = out["runs"][k]
        spent = r["privacy"].get("epsilon")
        print(f"{k:>16} {spent if spent is None else round(spent, 3)!s:>6} {r['sdmetrics']['overall']:9.4f} "
              f"{r['sdmetrics']['column_shapes']:7.4f} {r['sdmetrics']['column_pair_trends']:7.4f} "
              f"{r['c2st_auc']:6.3f} {r['ml_efficacy_f1']['synthetic'] or float('nan'):6.3f} {r['mia']['auc']:6.3f} "
              f"{r['dcr']['dcr_share']:6.3f}")
    print(f"wrote {RESULTS}")


def _order(key: str):
    family, _, eps = key.rpartition("/")
    return family or "diffusion", float("inf") if eps == "none" else float(eps)


def plot(out: dict, path: Path) -> None:
    """Quality against epsilon, one line per family (no-DP runs drawn at the right edge)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    families = sorted({_order(k)[0] for k in out["runs"]})
    finite = [e for k in out["runs"] if (e := _order(k)[1]) != float("inf")]
    right = max(finite or [8]) * 2
    for fam in families:
        keys = sorted((k for k in out["runs"] if _order(k)[0] == fam), key=_order)
        xs = [min(_order(k)[1], right) for k in keys]
        runs = [out["runs"][k] for k in keys]
        for ax, (label, get) in zip(axes, [
                ("column shapes (SDMetrics)", lambda r: r["sdmetrics"]["column_shapes"]),
                ("column pair trends (SDMetrics)", lambda r: r["sdmetrics"]["column_pair_trends"]),
                ("C2ST AUC (held out; 0.5 best)", lambda r: r["c2st_auc"])]):
            ax.plot(xs, [get(r) for r in runs], marker="o", label=fam)
            ax.set_xscale("log")
            ax.set_title(label)
            ax.set_xlabel(f"epsilon (no DP drawn at {right:g})")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
