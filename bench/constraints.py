"""What constraints cost: sampling rows/s with and without them, and their effect on fidelity.

Two models of the same family and training settings are fitted on the same table (the bundled Adult
plus `hours-max` = hours-per-week + U{0..29} and `annual-hours` = 52 x hours-per-week, so an
inequality and a formula have columns to hold on): one without constraints, one with

    range         18 <= age <= 90
    fixed_combinations relationship x sex
    inequality    hours-per-week <= hours-max
    formula       annual-hours = `hours-per-week` * 52

(every training row meets them, so both models see the same rows). For each model:

* sampling throughput: rows/s of `engine.sample` (the shared decode, constraints inverted there),
  median of `--repeats` runs of `--rows` rows, and the time of the constraints' inverse alone;
* rule violations in `--rows` sampled rows (the unconstrained model shows how often a model breaks
  them when nothing enforces them);
* fidelity against the held-out test rows (synth.evaluate.fit_check: column shapes, pair trends,
  C2ST AUC on 4,000 rows).

    taskset -c 1 env OMP_NUM_THREADS=1 python bench/constraints.py            # writes bench/results/constraints.json
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from synth.config import RunConfig  # noqa: E402
from synth.engine.rowstreams import RowUniforms  # noqa: E402
from synth.evaluate.fit_check import held_out_check  # noqa: E402
from synth.families import load_engine  # noqa: E402
from synth.io.manifest import library_versions  # noqa: E402
from synth.train.fit import fit  # noqa: E402

RULES = [
    {"kind": "range", "column": "age", "min": 18, "max": 90},
    {"kind": "fixed_combinations", "columns": ["relationship", "sex"]},
    {"kind": "inequality", "low": "hours-per-week", "high": "hours-max"},
    {"kind": "formula", "column": "annual-hours", "expression": "`hours-per-week` * 52"},
]


def table_with_pairs(path: Path) -> pa.Table:
    t = pq.read_table(REPO / "synth" / "datasets" / "adult.parquet")
    t = t.filter(pa.array(t.column("age").to_numpy() >= 18))  # the range holds on every row (both models see them)
    rng = np.random.default_rng(0)
    hours = t.column("hours-per-week").to_numpy()
    t = t.append_column("hours-max", pa.array(hours + rng.integers(0, 30, t.num_rows)))
    t = t.append_column("annual-hours", pa.array(hours * 52))
    pq.write_table(t, path)
    return t


def violations(t: pa.Table, seen: set) -> dict:
    age = t.column("age").to_numpy()
    hours = t.column("hours-per-week").to_numpy()
    combos = list(zip(t.column("relationship").to_pylist(), t.column("sex").to_pylist()))
    return {"range": int(((age < 18) | (age > 90)).sum()),
            "fixed_combinations": int(sum(c not in seen for c in combos)),
            "inequality": int((t.column("hours-max").to_numpy() < hours).sum()),
            "formula": int((t.column("annual-hours").to_numpy() != hours * 52).sum())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="autoregressive")
    ap.add_argument("--steps", type=int, default=1500, help="training steps of both models")
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "constraints.json"))
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="synth-constraints-"))
    data = tmp / "adult-pairs.parquet"
    real = table_with_pairs(data)
    k = 10  # value protection's rare_min_count: rarer combinations are never stored
    counts: dict = {}
    for c in zip(real.column("relationship").to_pylist(), real.column("sex").to_pylist()):
        counts[c] = counts.get(c, 0) + 1
    seen = {c for c, n in counts.items() if n >= k}
    results = {}
    for name, rules in (("unconstrained", []), ("constrained", RULES)):
        cfg = RunConfig.parse({"name": f"constraints-{name}", "output": str(tmp / name),
                               "data": {"uri": str(data), "target": "income"}, "model": {"family": args.family},
                               "train": {"steps": args.steps, "seed": 0}, "evaluate": {"check": "off"},
                               "constraints": rules})
        t0 = time.perf_counter()
        res = fit(cfg)
        fit_s = time.perf_counter() - t0
        engine = load_engine(res.artifact_uri)
        engine.sample(1000, seed=99)  # warm-up
        times = []
        for r in range(args.repeats):
            t0 = time.perf_counter()
            rows = engine.sample(args.rows, seed=r)
            times.append(time.perf_counter() - t0)
        entry = {"fit_s": round(fit_s, 1), "sample_s": [round(x, 3) for x in times],
                 "rows_per_s": round(args.rows / statistics.median(times)), "violations": violations(rows, seen)}
        if engine.constraints is not None:  # the inverse alone, on the decoded model table of the same rows
            model_rows = engine.constraints.forward(rows)
            t0 = time.perf_counter()
            engine.constraints.inverse(model_rows, RowUniforms(0, 0, model_rows.num_rows))
            entry["inverse_s"] = round(time.perf_counter() - t0, 3)
            entry["model_columns"] = list(engine.codec.schema.names)
        check = held_out_check(engine, res.prepared.test, seed=0)
        entry["fidelity"] = {key: check[key] for key in ("rows", "column_shapes", "pair_trends", "c2st_auc")}
        results[name] = entry
        print(name, json.dumps(entry), flush=True)
    u, c = results["unconstrained"], results["constrained"]
    out = {
        "what": "cost of constraints (synth.table.constraints) in sampling rows/s, and their fidelity effect",
        "family": args.family, "train_steps": args.steps, "rows": args.rows, "repeats": args.repeats,
        "rules": RULES, "data": "bundled adult, age >= 18, + hours-max and annual-hours (see the script)",
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": "1 (taskset -c 1, OMP_NUM_THREADS=1)"},
        "versions": library_versions(),
        "results": results,
        "summary": {"rows_per_s_ratio": round(c["rows_per_s"] / u["rows_per_s"], 3),
                    "violations_unconstrained": u["violations"], "violations_constrained": c["violations"],
                    "fidelity_delta": {key: round(c["fidelity"][key] - u["fidelity"][key], 4)
                                       for key in ("column_shapes", "pair_trends", "c2st_auc")}},
    }
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out["summary"], indent=1))


if __name__ == "__main__":
    main()
