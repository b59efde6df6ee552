"""Issue 21.2: a model artifact is authenticated, not just checksummed. Its id is the hash of its
whole manifest (recomputed on load), only the known file names are read (no `..`, no symlinks, size
caps), the training state is covered, and `synth sign`/`synth verify` add an Ed25519 signature."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from synth.errors import ArtifactError, ConfigError
from synth.io.artifact import CODEC, ENGINE, MANIFEST, STATE_JSON, manifest_id, read_artifact

REPO = Path(__file__).resolve().parents[1]


def copy(tiny_artifact, tmp_path, name="model") -> Path:
    art = tmp_path / name
    shutil.copytree(tiny_artifact, art)
    return art


def edit_manifest(art: Path, change, recompute_id: bool = False) -> None:
    m = json.loads((art / MANIFEST).read_text())
    change(m)
    if recompute_id:
        m["artifact_id"] = manifest_id(m)
    (art / MANIFEST).write_text(json.dumps(m))


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    d = tmp_path_factory.mktemp("keys")
    for name in ("good", "other"):
        k = Ed25519PrivateKey.generate()
        (d / f"{name}.pem").write_bytes(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
        (d / f"{name}.pub").write_bytes(k.public_key().public_bytes(serialization.Encoding.PEM,
                                                                    serialization.PublicFormat.SubjectPublicKeyInfo))
    return d


def test_an_edited_manifest_is_refused(tiny_artifact, tmp_path):
    art = copy(tiny_artifact, tmp_path)
    before = read_artifact(str(art)).artifact_id
    assert before == manifest_id(json.loads((art / MANIFEST).read_text())) and len(before) == 64
    edit_manifest(art, lambda m: m.update(privacy={"dp": True, "epsilon": 0.1, "delta": 1e-5}))
    with pytest.raises(ArtifactError, match="manifest.json was changed after it was written"):
        read_artifact(str(art))
    # whoever recomputes the id has made another artifact: its id differs from the one recorded/signed
    edit_manifest(art, lambda m: None, recompute_id=True)
    assert read_artifact(str(art)).artifact_id != before


def test_a_replaced_file_and_hash_is_refused_without_leaking_hashes(tiny_artifact, tmp_path):
    art = copy(tiny_artifact, tmp_path)
    codec = json.loads((art / CODEC).read_text())
    (art / CODEC).write_text(json.dumps({**codec, "columns": codec["columns"][:-1]}))
    with pytest.raises(ArtifactError) as e:
        read_artifact(str(art))
    assert "codec.json" in str(e.value) and "modified after training" in str(e.value)
    real = json.loads((Path(tiny_artifact) / MANIFEST).read_text())["files"][CODEC]
    assert not any(real[i:i + 6] in str(e.value) for i in range(0, 58))  # no part of any hash
    import hashlib

    edit_manifest(art, lambda m: m["files"].update({CODEC: hashlib.sha256((art / CODEC).read_bytes()).hexdigest()}))
    with pytest.raises(ArtifactError, match="manifest.json was changed after it was written"):
        read_artifact(str(art))


def test_only_known_files_no_symlinks_size_caps(tiny_artifact, tmp_path, monkeypatch):
    (tmp_path / "outside.txt").write_text("secret")
    art = copy(tiny_artifact, tmp_path)
    edit_manifest(art, lambda m: m["files"].update({"../outside.txt": "0" * 64}), recompute_id=True)
    with pytest.raises(ArtifactError, match="lists 1 file.s. that are not part of a model artifact"):
        read_artifact(str(art))
    art = copy(tiny_artifact, tmp_path, "linked")
    os.replace(art / ENGINE, tmp_path / "engine-elsewhere.json")
    os.symlink(tmp_path / "engine-elsewhere.json", art / ENGINE)
    with pytest.raises(ArtifactError, match="engine.json in artifact .* is not a regular file"):
        read_artifact(str(art))
    from synth.io import artifact

    monkeypatch.setitem(artifact.MAX_BYTES, CODEC, 100)
    with pytest.raises(ArtifactError, match="codec.json in artifact .* is larger than 100 bytes"):
        read_artifact(tiny_artifact)


def test_training_state_is_covered(tiny_artifact, tmp_path):
    from synth.families import load_engine
    from synth.train.checkpoint import load_checkpoint, save_checkpoint

    engine = load_engine(tiny_artifact)
    net = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    ckpt = tmp_path / "ckpt"
    save_checkpoint(engine, 7, str(ckpt), {"kind": "checkpoint"}, modules={"net": net}, optimizers={"sgd": opt})
    assert STATE_JSON in json.loads((ckpt / MANIFEST).read_text())["files"]
    assert load_checkpoint(engine, str(ckpt), {"net": net}).step == 7
    state = json.loads((ckpt / STATE_JSON).read_text())
    (ckpt / STATE_JSON).write_text(json.dumps({**state, "step": 1}))  # would reset the DP accountant
    with pytest.raises(ArtifactError, match="train_state.json in artifact .* was modified after training"):
        load_checkpoint(engine, str(ckpt), {"net": net})


def test_signatures(tiny_artifact, tmp_path, keys, monkeypatch):
    from synth.io.artifact import sign_artifact

    art = copy(tiny_artifact, tmp_path)
    with pytest.raises(ArtifactError, match="is not signed and a signature is required"):
        read_artifact(str(art), require_signature=True, public_key=str(keys / "good.pub"))
    monkeypatch.setenv("SYNTH_SIGNING_KEY", (keys / "good.pem").read_text())  # PEM text in the variable
    artifact_id, key_id = sign_artifact(str(art))
    monkeypatch.setenv("SYNTH_PUBLIC_KEY", str(keys / "good.pub"))  # or the file's path
    got = read_artifact(str(art), require_signature=True)
    assert got.artifact_id == artifact_id and got.signed_by == key_id
    with pytest.raises(ArtifactError, match="does not verify with public key"):
        read_artifact(str(art), require_signature=True, public_key=str(keys / "other.pub"))
    edit_manifest(art, lambda m: m["privacy"].update(epsilon=0.1), recompute_id=True)
    with pytest.raises(ArtifactError, match="signs another artifact, not this one"):
        read_artifact(str(art), require_signature=True)
    monkeypatch.delenv("SYNTH_PUBLIC_KEY")
    with pytest.raises(ConfigError, match="no public key: pass its PEM file, or set SYNTH_PUBLIC_KEY"):
        read_artifact(str(art), require_signature=True)


def synth(*args, **env):
    return subprocess.run([sys.executable, "-m", "synth.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, timeout=300, env={**os.environ, **env})


def one_line_error(r) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr, r.stderr[-2000:]
    return lines[0]


def test_sign_and_verify_commands(tiny_artifact, tmp_path, keys):
    art = copy(tiny_artifact, tmp_path)
    r = synth("sign", art, "--key", keys / "good.pem")
    assert r.returncode == 0 and "signed artifact" in r.stderr, r.stderr
    r = synth("verify", art, SYNTH_PUBLIC_KEY=(keys / "good.pub").read_text())
    assert r.returncode == 0 and "is intact and signed with key" in r.stderr, r.stderr
    (art / CODEC).write_text((art / CODEC).read_text().replace('"', "'", 1))
    assert "codec.json in artifact" in one_line_error(synth("verify", art, "--public-key", keys / "good.pub"))
    assert "signing key file" in one_line_error(synth("sign", art, "--key", tmp_path / "nope.pem"))
