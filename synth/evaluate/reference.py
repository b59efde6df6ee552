"""Evaluate synthetic rows against the reference data a model was trained on, using the split
recorded in the model's manifest: fidelity and C2ST against (a sample of) the training rows the
generator learnt from, ML efficacy tested on the held-out test rows, DCR and membership inference
with the test rows as the holdout (see `synth.evaluate.suite.evaluate`); array columns (images,
series) are scored by `synth.evaluate.arrays` under the result's "arrays" key."""
from __future__ import annotations

import pyarrow as pa

from synth.io.data import SplitConfig, load_splits
from synth.errors import ConfigError
from synth.evaluate.fidelity import KINDS as TABULAR_KINDS


def evaluate_against_reference(synthetic: pa.Table, manifest: dict, *, data_uri: str | None = None,
                               target: str | None = None, seed: int = 0, max_rows: int = 10_000,
                               engine=None) -> dict:
    """With `engine` (the model the rows came from) and a family with a likelihood, the result also
    holds "likelihood": the held-out test rows' NLL in nats per row and bpd (synth.evaluate.likelihood)."""
    from synth.evaluate.likelihood import held_out_likelihood
    from synth.evaluate.suite import evaluate, to_jsonable

    if manifest.get("split") is None:  # fitted without rows (fingerprint family): split --data the default way
        if data_uri is None:
            raise ConfigError("this model was fitted from a fingerprint, not rows, so it records no split; "
                              "give the reference data to compare with (--data)")
        train, _, test = load_splits(data_uri, SplitConfig())
    else:
        split_cfg = SplitConfig(**{k: manifest["split"][k] for k in ("train", "val", "test", "seed")})
        train, _, test = load_splits(data_uri or manifest["input"]["uri"], split_cfg)
    kinds = manifest["columns"]
    missing = [c for c in kinds if c not in synthetic.schema.names]
    if missing:
        raise ConfigError(f"the synthetic table lacks columns {missing} that the model produces")
    # scored here: tabular columns; arrays in synth.evaluate.arrays; identifiers (kind id) are fresh, not modelled
    cols = [c for c, k in kinds.items() if k in TABULAR_KINDS]
    if target is not None and target not in cols:
        raise ConfigError(f"target {target!r} is not a modelled tabular column; columns are {cols}")
    arrays = None
    if "array" in kinds.values():
        from synth.evaluate.arrays import evaluate_arrays

        arrays = evaluate_arrays(train, test, synthetic, kinds, seed=seed)
        if not cols:
            return {"arrays": arrays, "rows": {"train": train.num_rows, "test": test.num_rows,
                                               "synthetic": synthetic.num_rows}}
    kinds = {c: kinds[c] for c in cols}
    real_train = train.select(cols).to_pandas()
    real_test = test.select(cols).to_pandas()
    syn = synthetic.select(cols).to_pandas()
    if len(real_train) > max_rows:
        real_train = real_train.sample(max_rows, random_state=seed)
    if len(syn) > max_rows:
        syn = syn.sample(max_rows, random_state=seed)
    out = evaluate(real_train, real_test, syn, kinds, target=target, seed=seed)
    out["rows"] = {"train": len(real_train), "test": len(real_test), "synthetic": len(syn)}
    if engine is not None:
        lik = held_out_likelihood(engine, test, max_rows=max_rows, seed=seed)
        if lik is not None:
            out["likelihood"] = to_jsonable(lik)
    if arrays is not None:
        out["arrays"] = arrays
    return out
