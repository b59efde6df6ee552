"""Releases: staged runs under one root, and the `latest.json` pointer that serving and consumers read.

    ROOT/runs/RUN_ID/model/       the run's model artifact (when it retrained)
    ROOT/runs/RUN_ID/synthetic/   its shards and _manifest.json
    ROOT/runs/RUN_ID/report.json  its gate report (passed or not)
    ROOT/latest.json              {"run", "artifact", "artifact_id", "synthetic", "report", "promoted_at",
                                   "previous"}: the last run that passed its gate

A run writes only under its own prefix; the pointer moves (one atomic write) only after the run
passed, so a failing run stays staged with its report and nothing served changes. Wherever synth
takes a model artifact URI, it also takes a release ROOT and loads the artifact `latest.json` names.
"""
from __future__ import annotations

import json
from typing import Any

from synth.errors import ArtifactError
from synth.io import storage

LATEST = "latest.json"
RUNS = "runs"


def run_prefix(root: str, run_id: str) -> str:
    return storage.join(root, RUNS, run_id)


def read_latest(root: str) -> dict[str, Any] | None:
    uri = storage.join(root, LATEST)
    if not storage.exists(uri):
        return None
    try:
        pointer = json.loads(storage.read_bytes(uri))
        assert isinstance(pointer, dict) and isinstance(pointer["artifact"], str)
    except Exception:  # noqa: BLE001 - any malformed pointer is the same refusal
        raise ArtifactError(f"{uri} is not a release pointer (JSON with an artifact URI); restore it from the "
                            "previous run's report or rerun the nightly job") from None
    return pointer


def promote(root: str, pointer: dict[str, Any]) -> dict[str, Any]:
    """Point `latest.json` at a run that passed its gate; returns the pointer written."""
    previous = read_latest(root)
    pointer = {**pointer, "previous": previous and previous.get("run")}
    storage.write_bytes(storage.join(root, LATEST), json.dumps(pointer, indent=1).encode())
    return pointer


def resolve_artifact(uri: str) -> str:
    """`uri` when it is a model artifact; the artifact `latest.json` names when `uri` is a release root."""
    if storage.exists(storage.join(uri, "manifest.json")):
        return uri
    pointer = read_latest(uri)
    return uri if pointer is None else pointer["artifact"]
