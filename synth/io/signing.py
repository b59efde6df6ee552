"""Ed25519 signatures over model artifacts.

A signature vouches for one `artifact_id`, which is the sha256 of the artifact's canonical
manifest, which lists the sha256 of every file: signing the id signs every byte of the artifact.
It lives next to the manifest in `signature.json` ({"algorithm", "artifact_id", "key_id",
"signature"}), so signing needs no retraining and never changes the id.

Keys are PEM files (make them with `openssl genpkey -algorithm ed25519 -out signing.pem` and
`openssl pkey -in signing.pem -pubout -out signing.pub`). Where a command takes a key, it takes a
file or URI, else the environment: SYNTH_SIGNING_KEY (private, for `synth sign` and the nightly
job) and SYNTH_PUBLIC_KEY (public, for `synth verify`, serving and the nightly job), each holding
either the PEM text itself or the path of the PEM file.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os

from synth.errors import ArtifactError, ConfigError
from synth.io import storage

SIGNATURE = "signature.json"
ALGORITHM = "ed25519"
SIGNING_KEY_ENV, PUBLIC_KEY_ENV = "SYNTH_SIGNING_KEY", "SYNTH_PUBLIC_KEY"
_CONTEXT = b"synth-artifact-v2:"  # what is signed: this prefix and the artifact id


def _pem(source: str | None, env: str, what: str) -> tuple[bytes, str]:
    """(PEM bytes, where they came from) for a key given as a file/URI, or else from `env`."""
    if source is None:
        value = os.environ.get(env, "").strip()
        if not value:
            raise ConfigError(f"no {what}: pass its PEM file, or set {env} to the PEM text or the file's path")
        if value.startswith("-----BEGIN"):
            return value.encode(), f"${env}"
        source = value
    if not storage.exists(source):
        raise ConfigError(f"{what} file {source!r} does not exist")
    return storage.read_bytes(source), source


def load_private_key(source: str | None = None):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    pem, where = _pem(source, SIGNING_KEY_ENV, "signing key")
    try:
        key = load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"signing key {where} is not an unencrypted PEM private key; make one with "
                          "`openssl genpkey -algorithm ed25519 -out signing.pem`") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"signing key {where} is not an Ed25519 key; make one with "
                          "`openssl genpkey -algorithm ed25519 -out signing.pem`")
    return key


def load_public_key(source: str | None = None):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    pem, where = _pem(source, PUBLIC_KEY_ENV, "public key")
    try:
        key = load_pem_public_key(pem)
    except (ValueError, TypeError):
        raise ConfigError(f"public key {where} is not a PEM public key; derive it from the signing key with "
                          "`openssl pkey -in signing.pem -pubout -out signing.pub`") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"public key {where} is not an Ed25519 key")
    return key


def key_id(public_key) -> str:
    """A short fingerprint of a public key (sha256 of its raw bytes, 16 hex), to tell keys apart."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return hashlib.sha256(public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)).hexdigest()[:16]


def sign(artifact_id: str, private_key) -> bytes:
    """The signature.json document for `artifact_id`."""
    doc = {"algorithm": ALGORITHM, "artifact_id": artifact_id, "key_id": key_id(private_key.public_key()),
           "signature": base64.b64encode(private_key.sign(_CONTEXT + artifact_id.encode())).decode()}
    return json.dumps(doc, indent=1, sort_keys=True).encode()


def verify(uri: str, artifact_id: str, document: bytes, public_key) -> str:
    """Check `document` (signature.json of the artifact at `uri`) signs `artifact_id` with
    `public_key`; returns the key id, or raises ArtifactError naming what is wrong."""
    from cryptography.exceptions import InvalidSignature

    where = f"{uri}/{SIGNATURE}"
    try:
        doc = json.loads(document)
        assert isinstance(doc, dict) and doc.get("algorithm") == ALGORITHM
        signature = base64.b64decode(doc["signature"], validate=True)
    except Exception:  # noqa: BLE001 - any malformed document is the same refusal
        raise ArtifactError(f"{where} is not a synth signature (JSON with algorithm {ALGORITHM!r} and a base64 "
                            "signature); sign the artifact again with `synth sign`") from None
    if doc.get("artifact_id") != artifact_id:
        raise ArtifactError(f"{where} signs another artifact, not this one (its manifest changed since signing); "
                            "the artifact is refused: restore it, or review and sign it again with `synth sign`")
    try:
        public_key.verify(signature, _CONTEXT + artifact_id.encode())
    except InvalidSignature:
        raise ArtifactError(f"{where} does not verify with public key {key_id(public_key)}; the artifact is "
                            "refused: sign it with the matching key or configure the right public key") from None
    return key_id(public_key)
