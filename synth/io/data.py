"""Reading reference Parquet (local or object store) with clear errors, its content digest, and
the deterministic train/validation/test split.

The split is by a hash of each row's content and the split seed, so it is the same whatever
the file layout, batch size or worker count, can be computed batch by batch in Ray Data, and
puts duplicate rows on the same side (no leakage of a training row into the test set).
"""
from __future__ import annotations

import hashlib
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
from pydantic import BaseModel, ConfigDict, Field, model_validator

from synth.io import storage
from synth.errors import DataError
from synth.table.stats import check_unique_names

BUNDLED = {"adult": "adult.parquet", "digits": "digits.parquet"}


class SplitConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    train: float = Field(0.7, gt=0, le=1)
    val: float = Field(0.05, ge=0, lt=1)
    test: float = Field(0.25, ge=0, lt=1)
    seed: int = 0

    @model_validator(mode="after")
    def _sum_to_one(self):
        if abs(self.train + self.val + self.test - 1.0) > 1e-9:
            raise ValueError(f"split fractions must add up to 1, got {self.train}+{self.val}+{self.test}")
        return self


def resolve_data_uri(uri: str) -> str:
    """`bundled:adult` names a dataset shipped inside the package."""
    if uri.startswith("bundled:"):
        name = uri.split(":", 1)[1]
        from synth.datasets.arrays import GENERATED, generated_path

        if name in GENERATED:  # built from an installed package into a local cache (synth/datasets/arrays.py)
            return generated_path(name)
        if name not in BUNDLED:
            raise DataError(f"no bundled dataset {name!r}; bundled: {sorted(BUNDLED) + sorted(GENERATED)}")
        from pathlib import Path

        return str(Path(__file__).resolve().parents[1] / "datasets" / BUNDLED[name])
    return uri


def parquet_files(uri: str) -> tuple[pafs.FileSystem, list[str]]:
    """The Parquet files of a file or folder URI; in a folder, files and folders whose names
    start with "_" or "." (manifests, commit markers, Spark/Hive metadata) are skipped."""
    uri = resolve_data_uri(uri)
    fs, path = storage.resolve(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"reference data {uri!r} does not exist; give a Parquet file or a folder of them")
    if info.type == pafs.FileType.Directory:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
        root = path.rstrip("/") + "/"
        hidden = lambda p: any(part.startswith((".", "_")) for part in p[len(root):].split("/"))  # noqa: E731
        files = sorted(i.path for i in infos if i.type == pafs.FileType.File and not hidden(i.path))
        if not files:
            raise DataError(f"folder {uri!r} holds no Parquet files")
    else:
        files = [path]
    return fs, files


def open_dataset(uri: str) -> pads.Dataset:
    """A pyarrow dataset over the Parquet file(s) at `uri`; a non-Parquet file is named."""
    fs, files = parquet_files(uri)
    schema = None
    for f in files:
        try:
            import pyarrow.parquet as pq

            with fs.open_input_file(f) as fh:
                s = pq.read_schema(fh)
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"{f} is not a readable Parquet file ({e}); remove it or convert it to Parquet") from None
        if schema is None:
            check_unique_names(s.names, f"{f}")
            schema = s
        elif not s.remove_metadata().equals(schema.remove_metadata()):
            raise DataError(f"{f} has a different schema from {files[0]}: {s} vs {schema}")
    return pads.dataset(files, filesystem=fs, format="parquet", schema=schema)


def iter_batches(uri: str, batch_size: int = 65_536, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    ds = open_dataset(uri)
    try:
        yield from ds.to_batches(batch_size=batch_size, columns=columns)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"reading {uri!r} failed: {e}") from None


def input_digest(uri: str) -> dict:
    """Schema plus a content hash of every file, streamed (works for any size)."""
    fs, files = parquet_files(uri)
    h = hashlib.sha256()
    size = 0
    for f in files:
        with fs.open_input_stream(f) as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
                size += len(chunk)
    schema = open_dataset(uri).schema.remove_metadata()
    return {"uri": resolve_data_uri(uri), "files": len(files), "bytes": size, "sha256": h.hexdigest(),
            "schema": schema.to_string(show_schema_metadata=False)}


def split_labels(batch: pa.RecordBatch | pa.Table, cfg: SplitConfig) -> np.ndarray:
    """0 = train, 1 = validation, 2 = test, from a seeded hash of each row's values."""
    h = row_hashes(batch)
    u = (_splitmix64(h ^ _splitmix64(np.uint64(cfg.seed))) >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return np.where(u < cfg.train, 0, np.where(u < cfg.train + cfg.val, 1, 2)).astype(np.int8)


def row_hashes(batch: pa.RecordBatch | pa.Table) -> np.ndarray:
    """A uint64 hash of each row's values (independent of batch boundaries)."""
    from synth.table.columns.array import flatten, is_array_type

    frame = {}
    for f in batch.schema:  # fixed-shape arrays hash by their values' bytes (numpy arrays are unhashable)
        col = batch.column(f.name)
        if is_array_type(f.type):
            x, _ = flatten(f.name, col)
            frame[f.name] = pd.Series([r.tobytes() for r in x], dtype=object)
        else:
            frame[f.name] = col.to_pandas().reset_index(drop=True)
    return pd.util.hash_pandas_object(pd.DataFrame(frame), index=False).to_numpy().astype(np.uint64)


def _splitmix64(x):
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)) & np.uint64(0xFFFFFFFFFFFFFFFF)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def load_splits(uri: str, cfg: SplitConfig) -> tuple[pa.Table, pa.Table, pa.Table]:
    """Read the whole table and split it (for in-process use on tables that fit in memory)."""
    parts: list[list[pa.RecordBatch]] = [[], [], []]
    schema = None
    for b in iter_batches(uri):
        schema = b.schema
        lab = split_labels(b, cfg)
        for k in range(3):
            parts[k].append(b.filter(pa.array(lab == k)))
    tables = tuple(pa.Table.from_batches(p, schema=schema) for p in parts) if schema is not None else ()
    rows = sum(t.num_rows for t in tables)
    if rows == 0:
        raise DataError(f"reference data {uri!r} has no rows")
    if tables[0].num_rows == 0:  # rows are split by content: identical rows all land in one split
        for name in schema.names:
            if all(t.column(name).null_count == t.num_rows for t in tables):
                raise DataError(f"column {name!r} is entirely null; drop it or list it under `ignore`")
        raise DataError(f"none of the {rows} rows of {uri!r} fell in the training split (rows are split by content, "
                        "so identical rows share one split); give it at least a few hundred distinct rows")
    return tables  # type: ignore[return-value]
