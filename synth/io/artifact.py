"""The model artifact: one directory (local or object store) every part of synth starts from.

    engine.json          {"family", "format_version", "config"}
    codec.json           fitted table codec state
    weights.safetensors  network weights (never pickle)
    manifest.json        inputs, seeds, settings, metrics, versions, sha256 of every file

The manifest is written last and lists each file's sha256: an artifact without a manifest is
incomplete, and a file whose hash differs was changed after training; both are refused.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from synth.io import storage
from synth.errors import ArtifactError

FORMAT_VERSION = 1
ENGINE, CODEC, WEIGHTS, MANIFEST = "engine.json", "codec.json", "weights.safetensors", "manifest.json"


@dataclass
class Artifact:
    uri: str
    engine: dict[str, Any]
    codec: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    manifest: dict[str, Any]

    @property
    def artifact_id(self) -> str:
        return self.manifest["artifact_id"]


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, indent=1, sort_keys=True, allow_nan=False).encode()


def write_artifact(uri: str, *, family: str, config: dict[str, Any], codec: dict[str, Any],
                   tensors: dict[str, torch.Tensor], manifest: dict[str, Any]) -> Artifact:
    files = {
        ENGINE: _dumps({"family": family, "format_version": FORMAT_VERSION, "config": config}),
        CODEC: _dumps(codec),
        WEIGHTS: st_save({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                         metadata={"format_version": str(FORMAT_VERSION)}),
    }
    storage.makedirs(uri)
    fs, path = storage.resolve(uri)
    try:  # a stale manifest must never vouch for new files
        fs.delete_file(f"{path}/{MANIFEST}")
    except (FileNotFoundError, OSError):
        pass
    hashes = {}
    for name, data in files.items():
        storage.write_bytes(storage.join(uri, name), data)
        hashes[name] = storage.sha256_bytes(data)
    artifact_id = storage.sha256_bytes(_dumps(hashes))[:16]
    manifest = {**manifest, "format_version": FORMAT_VERSION, "family": family, "files": hashes,
                "artifact_id": artifact_id}
    storage.write_bytes(storage.join(uri, MANIFEST), _dumps(manifest))
    return Artifact(uri, json.loads(files[ENGINE]), codec, tensors, manifest)


def read_artifact(uri: str) -> Artifact:
    if not storage.exists(uri):
        raise ArtifactError(f"no model artifact at {uri!r}; train one with `synth fit` or check the path")
    if not storage.exists(storage.join(uri, MANIFEST)):
        raise ArtifactError(f"{uri!r} has no {MANIFEST}: it is not a model artifact or its training did not "
                            "finish; retrain or point at a complete artifact")
    try:
        manifest = json.loads(storage.read_bytes(storage.join(uri, MANIFEST)))
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{uri}/{MANIFEST} is not valid JSON ({e}); the artifact is damaged") from None
    json_types = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{uri}/{MANIFEST} holds a JSON {json_types.get(type(manifest), 'value')}, not a manifest "
                            "(a JSON object with format_version and files); the artifact is damaged: retrain it or "
                            "restore the file")
    if not isinstance(manifest.get("files", {}), dict):
        raise ArtifactError(f"{uri}/{MANIFEST}: its files field is not an object of file name -> sha256; the "
                            "artifact is damaged: retrain it or restore the file")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(f"artifact {uri!r} has format version {version}; this synth reads version "
                            f"{FORMAT_VERSION}. Retrain it with this version or use the synth that wrote it")
    data = {}
    for name, expected in manifest.get("files", {}).items():
        f = storage.join(uri, name)
        if not storage.exists(f):
            raise ArtifactError(f"artifact {uri!r} is missing {name}; it is incomplete")
        data[name] = storage.read_bytes(f)
        got = storage.sha256_bytes(data[name])
        if got != expected:
            raise ArtifactError(f"{name} in artifact {uri!r} was modified after training (sha256 {got[:12]}..., "
                                f"manifest says {expected[:12]}...); the artifact is refused")
    for name in (ENGINE, CODEC, WEIGHTS):
        if name not in data:
            raise ArtifactError(f"artifact {uri!r} manifest does not list {name}; it is incomplete")
    return Artifact(uri, json.loads(data[ENGINE]), json.loads(data[CODEC]), st_load(data[WEIGHTS]), manifest)
