"""Preparing a run's data in this process: read and split the reference Parquet, fit the codec on
the training rows (or plan a private run's budget and build its codec), encode rows to tensors.
Ray Train runs do the same with Ray Data (`synth.train.ray_train`)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from synth.config import RunConfig
from synth.io.data import input_digest, load_splits
from synth.errors import ConfigError
from synth.families import FAMILIES
from synth.privacy import PrivacyPlan, plan_privacy
from synth.table import TableCodec
from synth.table.constraints import Constraints


@dataclass
class Prepared:
    codec: TableCodec
    train: pa.Table  # train and val: rows as the codec sees them (after the constraints' transform)
    val: pa.Table
    test: pa.Table  # rows as they are (the held-out check compares sampled rows with them)
    input: dict  # the data's schema and content hash (synth.io.data.input_digest)
    split: dict
    privacy: PrivacyPlan | None = None
    constraints: Constraints | None = None  # the run's constraints, fitted on the training rows


def prepare(cfg: RunConfig) -> Prepared:
    """Read and split the reference data, fit the codec on the training rows only. A private run
    plans its budget first (refusing what would exceed it) and builds the codec from the declared
    schema, plus noised histograms when preprocessing is dp: never from TableStats."""
    train, val, test = load_splits(cfg.data.uri, cfg.data.split)
    constraints, codec_cfg = None, cfg.data.codec
    if cfg.constraints:  # checked on the training rows, which the model then learns in unconstrained columns
        constraints, train = Constraints.fit(cfg.constraints, train, cfg.data.codec, cfg.data.constraint_violations)
        train, val = constraints.forward(train), constraints.forward(val)
        codec_cfg = codec_cfg.model_copy(update={"overrides": {**codec_cfg.overrides, **constraints.model_kinds()}})
    plan = None
    if cfg.privacy.enabled:
        from synth.privacy import preprocess

        family = FAMILIES[cfg.model.family]
        plan = (family.plan(cfg, train.num_rows) if family.plan is not None
                else plan_privacy(cfg.privacy, cfg.train, train.num_rows))
        fields = preprocess.modelled_fields(train.schema, cfg.data.codec, cfg.privacy)
        counts = preprocess.exact_counts(train, cfg.privacy, fields) if plan.preprocessing == "dp" else None
        codec = preprocess.private_codec(train.schema, cfg.data.codec, cfg.privacy, plan, counts)
    else:
        codec = TableCodec.fit([train], codec_cfg, schema=train.schema)
    if cfg.data.target is not None and cfg.data.target not in codec.by_name and not (
            constraints is not None and cfg.data.target in constraints.owner):  # a constraint's column is output
        raise ConfigError(f"data.target names column {cfg.data.target!r}, which is not modelled; "
                          f"columns are {list(codec.by_name)}")
    split = {"method": "row-content hash", **cfg.data.split.model_dump(),
             "rows": {"train": train.num_rows, "val": val.num_rows, "test": test.num_rows}}
    return Prepared(codec, train, val, test, input_digest(cfg.data.uri), split, plan, constraints)


def encode_tensor(codec: TableCodec, table: pa.Table, seed: int | None, strict: bool = True) -> torch.Tensor:
    rng = np.random.default_rng(seed) if seed is not None else None
    return torch.from_numpy(codec.encode(table, rng, strict).astype(np.float32))
