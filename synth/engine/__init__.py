"""Generator families behind one interface, and loading any of them from an artifact."""
from synth.artifact import read_artifact, write_artifact
from synth.engine.base import REGISTRY, Engine
from synth.engine.array import ArrayConfig, ArrayEngine  # noqa: F401 (registers the family)
from synth.engine.diffusion import DiffusionConfig, DiffusionEngine
from synth.engine.fingerprint import FingerprintConfig, FingerprintEngine  # noqa: F401 (registers the family)
from synth.engine.gan import GANConfig, GANEngine  # noqa: F401 (registers the family)
from synth.errors import ArtifactError


def load_engine(uri: str) -> Engine:
    art = read_artifact(uri)
    family = art.engine.get("family")
    if family not in REGISTRY:
        raise ArtifactError(f"artifact {uri!r} holds a {family!r} model, which this synth does not know; "
                            f"known families: {sorted(REGISTRY)}")
    engine = REGISTRY[family].from_artifact(art)
    engine.manifest = art.manifest
    engine.uri = uri
    return engine


def save_engine(engine: Engine, uri: str, manifest: dict) -> str:
    """Write the engine as an artifact at `uri`; returns the artifact id."""
    art = write_artifact(uri, family=engine.family, config=engine.config_dict(), codec=engine.codec.to_dict(),
                         tensors=engine.sampling_state(), manifest=manifest)
    return art.artifact_id


__all__ = ["DiffusionConfig", "DiffusionEngine", "Engine", "load_engine", "save_engine"]
