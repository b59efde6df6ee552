"""Quality against fit time: held-out C2ST AUC (lower is better, 0.5 = indistinguishable) against
fit seconds for every model of bench/results/compare.json, one panel per dataset.

    python bench/time_to_quality.py            # -> bench/results/time_to_quality.png (+ .json)
"""
from __future__ import annotations

import json
import math
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def points(result: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in result.get("runs", []):
        if r.get("status") != "ok" or r.get("c2st_holdout") is None or not r.get("fit_s"):
            continue
        out.setdefault(r["dataset"], []).append({"model": r["model"], "fit_s": round(r["fit_s"], 1),
                                                 "c2st_holdout": round(r["c2st_holdout"], 4),
                                                 "shapes": r["sdmetrics"]["column_shapes"],
                                                 "pair_trends": r["sdmetrics"]["column_pair_trends"]})
    return out


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = points(json.loads((RESULTS / "compare.json").read_text()))
    (RESULTS / "time_to_quality.json").write_text(json.dumps(data, indent=1))
    cols = min(3, max(1, len(data)))
    rows = math.ceil(len(data) / cols) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 4 * rows), squeeze=False)
    for ax, (ds, pts) in zip(axes.flat, data.items()):
        for p in pts:
            ours = p["model"].startswith("synth")
            ax.scatter(p["fit_s"], p["c2st_holdout"], marker="o" if ours else "s", color="C0" if ours else "C3")
            ax.annotate(p["model"], (p["fit_s"], p["c2st_holdout"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_title(ds)
        ax.set_xlabel("fit seconds (2 CPU cores)")
        ax.set_ylabel("C2ST AUC vs held-out rows")
    for ax in list(axes.flat)[len(data):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(RESULTS / "time_to_quality.png", dpi=110)
    for ds, pts in data.items():
        print(ds, ", ".join(f"{p['model']} {p['c2st_holdout']:.3f} @ {p['fit_s']:.0f} s" for p in pts))


if __name__ == "__main__":
    main()
