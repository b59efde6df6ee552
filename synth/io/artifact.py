"""The model artifact: one directory (local or object store) every part of synth starts from.

    engine.json          {"family", "format_version", "config"}
    codec.json           fitted table codec state
    weights.safetensors  network weights (never pickle)
    train_state.*        training checkpoints only: the loop's state (synth.train.checkpoint)
    constraints.json     optional: the run's constraints (synth.table.constraints), applied by every sample path
    manifest.json        inputs, seeds, settings, metrics, versions, sha256 of every file above
    signature.json       optional: an Ed25519 signature of the artifact id (synth.io.signing)

The manifest is written last and lists each file's sha256; the `artifact_id` is the sha256 of the
canonical manifest (every field but the id itself), recomputed on every load. So an artifact
without a manifest is incomplete, a file whose hash differs was changed after training, and a
manifest edited afterwards (a smaller epsilon, another file's hash) no longer matches its id; all
are refused. Only the file names above are read, never through a symlink, each under a size cap.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from synth.errors import ArtifactError
from synth.io import signing, storage

FORMAT_VERSION = 2  # 2: the artifact id is the hash of the whole manifest (1: of the file hashes only)
ENGINE, CODEC, WEIGHTS, MANIFEST = "engine.json", "codec.json", "weights.safetensors", "manifest.json"
STATE_TENSORS, STATE_JSON = "train_state.safetensors", "train_state.json"
CONSTRAINTS = "constraints.json"
REQUIRED = (ENGINE, CODEC, WEIGHTS)
OPTIONAL = (STATE_TENSORS, STATE_JSON, CONSTRAINTS)
_MiB, _GiB = 1 << 20, 1 << 30
MAX_BYTES = {MANIFEST: 16 * _MiB, ENGINE: 1 * _MiB, CODEC: 1 * _GiB, WEIGHTS: 64 * _GiB,
             STATE_TENSORS: 64 * _GiB, STATE_JSON: 64 * _MiB, CONSTRAINTS: 256 * _MiB, signing.SIGNATURE: 64 * 1024}


@dataclass
class Artifact:
    uri: str
    engine: dict[str, Any]
    codec: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    manifest: dict[str, Any]
    extra: dict[str, bytes] = field(default_factory=dict)  # verified bytes of the optional files present
    signed_by: str | None = None  # key id of the verified signature

    @property
    def artifact_id(self) -> str:
        return self.manifest["artifact_id"]


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, indent=1, sort_keys=True, allow_nan=False).encode()


def manifest_id(manifest: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of the manifest without its `artifact_id`."""
    body = {k: v for k, v in manifest.items() if k != "artifact_id"}
    try:
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except ValueError:
        raise ArtifactError("the manifest holds a non-finite number; the artifact is damaged") from None
    return storage.sha256_bytes(canonical.encode())


def write_artifact(uri: str, *, family: str, config: dict[str, Any], codec: dict[str, Any],
                   tensors: dict[str, torch.Tensor], manifest: dict[str, Any],
                   extra: dict[str, bytes] | None = None) -> Artifact:
    """Write an artifact; `extra` holds optional files (OPTIONAL names), hashed like the rest."""
    files = {
        ENGINE: _dumps({"family": family, "format_version": FORMAT_VERSION, "config": config}),
        CODEC: _dumps(codec),
        WEIGHTS: st_save({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                         metadata={"format_version": str(FORMAT_VERSION)}),
    }
    for name, data in (extra or {}).items():
        assert name in OPTIONAL, name
        files[name] = data
    storage.makedirs(uri)
    fs, path = storage.resolve(uri)
    for stale in (MANIFEST, signing.SIGNATURE):  # a stale manifest or signature must never vouch for new files
        try:
            fs.delete_file(f"{path}/{stale}")
        except (FileNotFoundError, OSError):
            pass
    hashes = {}
    for name, data in files.items():
        storage.write_bytes(storage.join(uri, name), data)
        hashes[name] = storage.sha256_bytes(data)
    manifest = {**manifest, "format_version": FORMAT_VERSION, "family": family, "files": hashes}
    manifest["artifact_id"] = manifest_id(json.loads(_dumps(manifest)))  # as a reader will see it
    storage.write_bytes(storage.join(uri, MANIFEST), _dumps(manifest))
    return Artifact(uri, json.loads(files[ENGINE]), codec, tensors, manifest,
                    {n: files[n] for n in OPTIONAL if n in files})


def read_member(uri: str, name: str) -> bytes | None:
    """The bytes of file `name` of the artifact at `uri` (None when absent): a regular file, never a
    symlink, no larger than MAX_BYTES[name]."""
    import pyarrow.fs as pafs

    fs, path = storage.resolve(storage.join(uri, name))
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        return None
    if isinstance(fs, pafs.LocalFileSystem) and os.path.islink(path) or info.type != pafs.FileType.File:
        raise ArtifactError(f"{name} in artifact {uri!r} is not a regular file (a symlink or a folder); "
                            "the artifact is refused: copy the real file in its place")
    if info.size is not None and info.size > MAX_BYTES[name]:
        raise ArtifactError(f"{name} in artifact {uri!r} is larger than {MAX_BYTES[name]} bytes; the artifact is "
                            "refused")
    data = storage.read_bytes(storage.join(uri, name))
    if len(data) > MAX_BYTES[name]:
        raise ArtifactError(f"{name} in artifact {uri!r} is larger than {MAX_BYTES[name]} bytes; the artifact is "
                            "refused")
    return data


def read_manifest(uri: str) -> dict[str, Any]:
    """The artifact's manifest, checked: a JSON object of this format version, listing exactly the
    known files, whose `artifact_id` is the hash of its content."""
    if not storage.exists(uri):
        raise ArtifactError(f"no model artifact at {uri!r}; train one with `synth fit` or check the path")
    raw = read_member(uri, MANIFEST)
    if raw is None:
        raise ArtifactError(f"{uri!r} has no {MANIFEST}: it is not a model artifact or its training did not "
                            "finish; retrain or point at a complete artifact")
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{uri}/{MANIFEST} is not valid JSON ({e}); the artifact is damaged") from None
    json_types = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{uri}/{MANIFEST} holds a JSON {json_types.get(type(manifest), 'value')}, not a manifest "
                            "(a JSON object with format_version and files); the artifact is damaged: retrain it or "
                            "restore the file")
    files = manifest.get("files", {})
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise ArtifactError(f"{uri}/{MANIFEST}: its files field is not an object of file name -> sha256; the "
                            "artifact is damaged: retrain it or restore the file")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(f"artifact {uri!r} has format version {version}; this synth reads version "
                            f"{FORMAT_VERSION}. Retrain it with this version or use the synth that wrote it")
    unknown = [n for n in files if n not in REQUIRED + OPTIONAL]
    if unknown:
        raise ArtifactError(f"{uri}/{MANIFEST} lists {len(unknown)} file(s) that are not part of a model artifact "
                            f"(it may list only {', '.join(REQUIRED + OPTIONAL)}); the artifact is refused")
    for name in REQUIRED:
        if name not in files:
            raise ArtifactError(f"artifact {uri!r} manifest does not list {name}; it is incomplete")
    if manifest.get("artifact_id") != manifest_id(manifest):
        raise ArtifactError(f"{uri}/{MANIFEST} was changed after it was written (its artifact_id does not match its "
                            "content); the artifact is refused: restore the manifest or retrain")
    return manifest


def read_artifact(uri: str, *, require_signature: bool = False, public_key: str | None = None) -> Artifact:
    """Load and verify an artifact. With `require_signature`, its signature.json must verify with
    `public_key` (a PEM file or URI; default: SYNTH_PUBLIC_KEY)."""
    key = signing.load_public_key(public_key) if require_signature else None
    manifest = read_manifest(uri)
    signed_by = None
    if key is not None:
        doc = read_member(uri, signing.SIGNATURE)
        if doc is None:
            raise ArtifactError(f"artifact {uri!r} is not signed and a signature is required; sign it with "
                                "`synth sign` after reviewing it")
        signed_by = signing.verify(uri, manifest["artifact_id"], doc, key)
    data = {}
    for name, expected in manifest["files"].items():
        data[name] = read_member(uri, name)
        if data[name] is None:
            raise ArtifactError(f"artifact {uri!r} is missing {name}; it is incomplete")
        if storage.sha256_bytes(data[name]) != expected:
            raise ArtifactError(f"{name} in artifact {uri!r} was modified after training (its sha256 differs from "
                                "the manifest's); the artifact is refused: restore the file or retrain")
    try:
        engine, codec = json.loads(data[ENGINE]), json.loads(data[CODEC])
        tensors = st_load(data[WEIGHTS])
    except Exception:  # noqa: BLE001 - hashed bytes that do not parse: written by a broken writer
        raise ArtifactError(f"artifact {uri!r} holds a file that does not parse although its hash matches; "
                            "retrain it") from None
    return Artifact(uri, engine, codec, tensors, manifest, {n: data[n] for n in OPTIONAL if n in data}, signed_by)


def sign_artifact(uri: str, private_key: str | None = None) -> tuple[str, str]:
    """Sign the artifact at `uri` (after checking it is intact) with the Ed25519 key in the PEM
    file `private_key` (default: SYNTH_SIGNING_KEY); returns (artifact id, key id)."""
    key = signing.load_private_key(private_key)
    art = read_artifact(uri)
    storage.write_bytes(storage.join(uri, signing.SIGNATURE), signing.sign(art.artifact_id, key))
    return art.artifact_id, signing.key_id(key.public_key())
