"""Array family quality (issue 11) -> bench/results/arrays.json.

Digits (configs/digits.yaml, sklearn 8x8 digits): a classifier trained on the real training
split (sklearn MLP on pixels) labels generated digits of each requested class; accuracy, KID
and precision/recall (k-NN manifolds, Kynkaanniemi et al. 2019) in that classifier's hidden
feature space against the held-out real digits, over guidance weight x sampler steps.

Series (configs/series.yaml, 96-month windows of monthly sunspot numbers): autocorrelation
(lags 1..48) and periodogram of generated windows against held-out real windows, with the real
training windows (floor) and time-shuffled real windows (no temporal structure) as references.

    python bench/arrays.py                    # trains both (a few minutes on 2 CPU cores)
    python bench/arrays.py --steps 300        # shorter training
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from synth.config import RunConfig
from synth.families import load_engine
from synth.evaluate import arrays
from synth.evaluate.arrays import acf, kid, precision_recall
from synth.train.fit import fit

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "arrays.json"


def train(config: str, steps: int | None, output: str):
    raw = RunConfig.from_yaml(str(ROOT / config)).model_dump(mode="json")
    raw["output"] = output
    if steps:
        raw["train"]["steps"] = steps
    cfg = RunConfig.parse(raw)
    t0 = time.perf_counter()
    res = fit(cfg)
    return res, time.perf_counter() - t0, cfg


def images(table, column: str) -> np.ndarray:
    from synth.table.columns.array import flatten

    x, _ = flatten(column, table.column(column))
    return x


def bench_digits(steps: int | None, out_dir: Path) -> dict:
    from sklearn.neural_network import MLPClassifier

    res, fit_s, cfg = train("configs/digits.yaml", steps, str(out_dir / "digits"))
    prep = res.prepared
    x_tr = images(prep.train, "image") / 16.0
    y_tr = np.asarray(prep.train.column("digit").to_pylist())
    held = __import__("pyarrow").concat_tables([prep.val, prep.test])
    x_te = images(held, "image") / 16.0
    y_te = np.asarray(held.column("digit").to_pylist())
    clf = MLPClassifier(hidden_layer_sizes=(128,), max_iter=600, random_state=0).fit(x_tr, y_tr)

    def feats(x):
        return np.maximum(x @ clf.coefs_[0] + clf.intercepts_[0], 0.0)

    f_te, f_tr = feats(x_te), feats(x_tr)
    ref = {"classifier_accuracy_real_heldout": float(clf.score(x_te, y_te)),
           "kid_real_train_vs_heldout": kid(f_tr, f_te),
           "precision_recall_real_train_vs_heldout": precision_recall(f_te, f_tr[:len(f_te) * 2])}
    engine = load_engine(res.artifact_uri)
    per_class = 50
    labels = [d for d in range(10) for _ in range(per_class)]
    grid = []
    for n_steps in (10, 20, 50):
        for w in (0.0, 1.0, 2.0, 4.0):
            t0 = time.perf_counter()
            tab = engine.sample(len(labels), {"digit": labels}, sampler="ddim", steps=n_steps, guidance=w, seed=7)
            dt = time.perf_counter() - t0
            x = images(tab, "image") / 16.0
            pred = clf.predict(x)
            acc_c = [float(np.mean(pred[i * per_class:(i + 1) * per_class] == i)) for i in range(10)]
            f = feats(x)
            p, r = precision_recall(f_te, f)
            grid.append({"sampler": "ddim", "steps": n_steps, "guidance": w, "nfe_per_row": engine.cost("ddim", n_steps, w),
                         "accuracy": float(np.mean(pred == np.asarray(labels))), "accuracy_per_class": acc_c,
                         "kid": kid(f, f_te), "precision": p, "recall": r, "rows": len(labels),
                         "sample_s": dt, "rows_per_s": len(labels) / dt})
            print(f"digits ddim-{n_steps} w={w}: acc {grid[-1]['accuracy']:.3f} kid {grid[-1]['kid']:.4f} "
                  f"P {p:.3f} R {r:.3f} ({dt:.1f}s)", flush=True)
    save_grid(engine, out_dir / "digits_grid.png")
    return {"config": "configs/digits.yaml", "train": cfg.train.model_dump(mode="json"),
            "net": cfg.model.net.model_dump(mode="json"), "fit_s": fit_s, "train_metrics": res.metrics,
            "rows": prep.split["rows"], "classifier": "sklearn MLPClassifier(128) on pixels/16; features = its "
            "hidden ReLU layer", "reference": ref, "grid": grid}


def save_grid(engine, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tab = engine.sample(100, {"digit": [d for d in range(10) for _ in range(10)]}, guidance=2.0, seed=3)
    x = images(tab, "image").reshape(10, 10, 8, 8).transpose(0, 2, 1, 3).reshape(80, 80)
    plt.imsave(path, x, cmap="gray_r", vmin=0, vmax=16)


def series_scores(x: np.ndarray, real: np.ndarray) -> dict:
    return {**arrays.series_scores(x, real, lags=48), "acf": [round(float(v), 4) for v in acf(x, 12)]}


def bench_series(steps: int | None, out_dir: Path) -> dict:
    res, fit_s, cfg = train("configs/series.yaml", steps, str(out_dir / "series"))
    prep = res.prepared
    import pyarrow as pa

    real_tr = images(prep.train, "window")
    real = images(pa.concat_tables([prep.val, prep.test]), "window")
    engine = load_engine(res.artifact_uri)
    rng = np.random.default_rng(0)
    shuffled = rng.permuted(real_tr[:len(real)], axis=1)
    out = {"config": "configs/series.yaml", "train": cfg.train.model_dump(mode="json"),
           "net": cfg.model.net.model_dump(mode="json"), "fit_s": fit_s, "train_metrics": res.metrics,
           "rows": prep.split["rows"], "window": real.shape[1],
           "reference": {"real_train_vs_heldout": series_scores(real_tr, real),
                         "time_shuffled_real_vs_heldout": series_scores(shuffled, real),
                         "heldout_acf": [round(float(v), 4) for v in acf(real, 12)]},
           "grid": [], "note": "windows overlap (stride 4 months), so held-out windows share months with "
                               "training windows: this measures fidelity, not generalisation"}
    for sampler, n_steps in (("ddim", 20), ("ddim", 50), ("dpmpp_2m", 20)):
        t0 = time.perf_counter()
        tab = engine.sample(500, sampler=sampler, steps=n_steps, seed=11)
        dt = time.perf_counter() - t0
        sc = series_scores(images(tab, "window"), real)
        out["grid"].append({"sampler": sampler, "steps": n_steps, "rows": 500, "sample_s": dt, **sc})
        print(f"series {sampler}-{n_steps}: acf MAE {sc['acf_mae']:.4f} spectrum L1 {sc['spectrum_l1']:.3f} "
              f"LSD {sc['log_spectral_distance']:.2f} dB ({dt:.1f}s)", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: the configs')")
    ap.add_argument("--only", choices=["digits", "series"], default=None)
    ap.add_argument("--runs", default=str(ROOT / "runs" / "bench-arrays"))
    args = ap.parse_args()
    torch.manual_seed(0)
    out_dir = Path(args.runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = json.loads(OUT.read_text()) if OUT.exists() else {}
    result.update({"machine": {"cpu_count": __import__("os").cpu_count(), "torch": torch.__version__,
                               "python": platform.python_version()}})
    if args.only in (None, "digits"):
        result["digits"] = bench_digits(args.steps, out_dir)
    if args.only in (None, "series"):
        result["series"] = bench_series(args.steps, out_dir)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
