"""What makes a run reproducible and auditable: inputs, seeds, settings, metrics, versions."""
from __future__ import annotations

import datetime as _dt
import platform
from importlib import metadata
from typing import Any

LIBRARIES = ("synth", "torch", "ray", "diffusers", "accelerate", "pyarrow", "numpy", "opacus")


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for lib in LIBRARIES:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            pass
    return out


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def base_manifest(kind: str, **fields: Any) -> dict[str, Any]:
    return {"kind": kind, "created_at": now_utc(), "versions": library_versions(), **fields}
