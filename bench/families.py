"""Quality of every engine family on UCI Adult, judged the same way as bench/quality.py: each
family learns from the training split only (the fingerprint engine from a fingerprint of it),
samples 10,000 rows, and is scored on the held-out test split with SDMetrics' QualityReport
(all pairs) and our C2ST, ML efficacy and DCR.

    python bench/families.py                                   # fingerprint + gan
    python bench/families.py --families fingerprint,gan,diffusion --diffusion-steps 10000
    python bench/families.py --families gan --gan-steps 3000 --tag gan3k

Writes bench/results/families[-TAG].json and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sdv_judge import quality_report  # noqa: E402


def fit_fingerprint_family(args, train, work: Path) -> tuple[str, dict]:
    import pyarrow.parquet as pq

    from synth.train.fit import fit_fingerprint
    from synth.table.fingerprint import build_fingerprint, write_fingerprint

    data = work / "train.parquet"
    pq.write_table(train, data)
    t0 = time.perf_counter()
    fp = build_fingerprint(str(data))
    write_fingerprint(fp, str(work / "fp.json"))
    t1 = time.perf_counter()
    fit_fingerprint(str(work / "fp.json"), str(work / "fingerprint-model"))
    return str(work / "fingerprint-model"), {"fingerprint_s": t1 - t0, "fit_s": time.perf_counter() - t1,
                                             "fingerprint_bytes": (work / "fp.json").stat().st_size}


def fit_run_family(family: str, args, work: Path) -> tuple[str, dict]:
    import yaml

    from synth.config import RunConfig
    from synth.train.fit import fit

    raw = yaml.safe_load(Path(args.config).read_text())
    raw["output"] = str(work / family)
    raw.setdefault("train", {})
    if family == "gan":
        raw["model"] = {"family": "gan", **json.loads(args.gan_model)}
        raw["train"].update(steps=args.gan_steps, eval_every=args.gan_eval_every, batch_size=500,
                            time_budget_s=args.gan_budget_s)
        if args.threads:
            raw["train"]["threads"] = args.threads
    elif args.diffusion_steps:
        raw["train"]["steps"] = args.diffusion_steps
    cfg = RunConfig.parse(raw)
    t0 = time.perf_counter()
    result = fit(cfg, report=lambda m, _o: print(f"  {family} step {m['step']}: " + " ".join(
        f"{k} {v:.4f}" for k, v in m.items() if k != "step" and isinstance(v, float)), flush=True))
    return result.artifact_uri, {"fit_s": time.perf_counter() - t0, "train": result.metrics,
                                 "config": cfg.model.model_dump(mode="json")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--families", default="fingerprint,gan")
    ap.add_argument("--config", default="configs/adult.yaml")
    ap.add_argument("--gan-steps", type=int, default=10_000)
    ap.add_argument("--gan-model", default="{}", help="JSON overrides of the GAN model config")
    ap.add_argument("--gan-eval-every", type=int, default=250)
    ap.add_argument("--gan-budget-s", type=float, default=600.0, help="GAN training wall-time cap")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for training (0 = all cores)")
    ap.add_argument("--diffusion-steps", type=int)
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--tag", default="")
    args = ap.parse_args()

    from synth.io.data import SplitConfig, load_splits
    from synth.families import load_engine
    from synth.evaluate.suite import evaluate

    train, _val, test = load_splits("bundled:adult", SplitConfig())
    real_train, real_test = train.to_pandas(), test.to_pandas()
    work = Path(tempfile.mkdtemp(prefix="bench-families-"))
    runs = []
    for family in args.families.split(","):
        if family == "fingerprint":
            uri, timing = fit_fingerprint_family(args, train, work)
        else:
            uri, timing = fit_run_family(family, args, work)
        engine = load_engine(uri)
        kinds = engine.codec.kinds()
        t0 = time.perf_counter()
        syn = engine.sample(args.rows, seed=0)
        sample_s = time.perf_counter() - t0
        sdm = quality_report(real_test, syn.to_pandas(), kinds)
        cols = list(kinds)
        tr = real_train[cols].sample(min(len(real_train), 10_000), random_state=0)
        ours = evaluate(tr, real_test[cols], syn.to_pandas()[cols], kinds, target="income", seed=0)
        eff = ours.get("efficacy") or {}
        run = {"family": family, **timing, "sample_s": sample_s, "rows_per_s": args.rows / sample_s,
               "sdmetrics": sdm, "c2st_auc": ours["detection"]["c2st_auc"],
               "ml_efficacy_f1": {"synthetic": (eff.get("synthetic") or {}).get("f1_macro"),
                                  "real": (eff.get("real") or {}).get("f1_macro")},
               "dcr_share": ours["privacy"]["dcr_share"], "exact_copy_rate": ours["privacy"]["exact_copy_rate"]}
        runs.append(run)
        print(f"{family:>12} | SDMetrics {sdm['overall']:.4f} (shapes {sdm['column_shapes']:.4f}, pairs "
              f"{sdm['column_pair_trends']:.4f}) | C2ST {run['c2st_auc']:.3f} | F1 syn "
              f"{run['ml_efficacy_f1']['synthetic']} real {run['ml_efficacy_f1']['real']} | fit "
              f"{timing.get('fit_s', 0):.1f} s | {run['rows_per_s']:,.0f} rows/s", flush=True)
    out = {"dataset": "adult", "judged_on": "test split", "machine": {"cpus": os.cpu_count()}, "runs": runs}
    path = Path("bench/results") / f"families{'-' + args.tag if args.tag else ''}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1, default=str))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
