"""Runs inside bench/.venv-smartnoise (smartnoise-synth pins mbi 1.1 and opacus 0.14, which cannot share
synth's environment); bench/privacy.py calls it as a subprocess:

    python -m venv bench/.venv-smartnoise && bench/.venv-smartnoise/bin/pip install smartnoise-synth
    bench/.venv-smartnoise/bin/python bench/smartnoise_peer.py --method aim --epsilon 1 --delta 1e-5 \
        --sizes '[74, 9]' --input cells.csv --rows 10000 --output synthetic.csv

Input: the training rows as cells of the declared grid (integers, one column per modelled column), the
same discretisation the marginal family uses. The label encoder is fitted on the public grid (every
cell 0..size-1), never on the rows, so smartnoise spends no budget on (and reads nothing for)
preprocessing. Output: synthetic cells, same columns; fit and sample seconds on stderr as JSON.
`--iid-output FILE` also draws rows i.i.d. from the fitted model instead of smartnoise's default
randomized rounding (mbi's `synthetic_data(method="round")`), whose stratified draws give every column
sampled from one parent group the same within-group ranks.
"""
import argparse
import json
import sys
import time

import numpy as np
import pandas as pd
from snsynth import Synthesizer
from snsynth.transform import LabelTransformer, TableTransformer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", choices=["mst", "aim"], required=True)
    ap.add_argument("--epsilon", type=float, required=True)
    ap.add_argument("--delta", type=float, required=True)
    ap.add_argument("--sizes", required=True, help="JSON list: cells per column on the declared grid")
    ap.add_argument("--input", required=True)
    ap.add_argument("--rows", type=int, required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--iid-output", default=None,
                    help="also write rows drawn i.i.d. from the same fitted model here (smartnoise's own sample() "
                         "uses mbi's randomized rounding)")
    args = ap.parse_args()
    rows = pd.read_csv(args.input)
    sizes = json.loads(args.sizes)
    width = max(sizes)
    grid = pd.DataFrame({c: np.arange(width) % s for c, s in zip(rows.columns, sizes)})
    transformer = TableTransformer([LabelTransformer(nullable=False) for _ in sizes])
    transformer.fit(grid)
    t0 = time.perf_counter()
    synth = Synthesizer.create(args.method, epsilon=args.epsilon, delta=args.delta)
    synth.fit(rows, transformer=transformer)
    t1 = time.perf_counter()
    out = synth.sample(args.rows)
    pd.DataFrame(out, columns=rows.columns).astype(np.int64).to_csv(args.output, index=False)
    if args.iid_output:  # the same model, rows drawn i.i.d. instead of by randomized rounding
        model = synth.synthesizer
        synth.synthesizer = type("IID", (), {"synthetic_data": lambda self, rows=None:
                                             model.synthetic_data(rows=rows, method="sample")})()
        out = synth.sample(args.rows)
        pd.DataFrame(out, columns=rows.columns).astype(np.int64).to_csv(args.iid_output, index=False)
        synth.synthesizer = model
    print(json.dumps({"fit_s": t1 - t0, "sample_s": time.perf_counter() - t1}), file=sys.stderr)


if __name__ == "__main__":
    main()
