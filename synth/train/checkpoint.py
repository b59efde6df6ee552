"""Training checkpoints: a model artifact plus the optimizer state, both without pickle.

A checkpoint directory is an ordinary artifact (loadable by `load_engine`) with two more
files: `train_state.safetensors` (online weights and Adam moments) and `train_state.json`
(step, optimizer param groups). Resuming checks that the checkpoint's model config and codec
match the run's, and refuses otherwise.
"""
from __future__ import annotations

import json
import os

import torch
from safetensors.torch import load_file, save_file

from synth.artifact import CODEC, ENGINE, read_artifact, write_artifact
from synth.engine.base import Engine
from synth.errors import ArtifactError

STATE_TENSORS, STATE_JSON = "train_state.safetensors", "train_state.json"


def save_checkpoint(engine: Engine, optimizer: torch.optim.Optimizer, step: int, directory: str,
                    manifest: dict) -> None:
    write_artifact(directory, family=engine.family, config=engine.config_dict(), codec=engine.codec.to_dict(),
                   tensors=engine.sampling_state(), manifest={**manifest, "step": step})
    tensors = {f"net.{k}": v.detach().cpu().contiguous() for k, v in engine.net.state_dict().items()}
    opt = optimizer.state_dict()
    for pid, state in opt["state"].items():
        for name, value in state.items():
            tensors[f"opt.{pid}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
    save_file(tensors, os.path.join(directory, STATE_TENSORS))
    with open(os.path.join(directory, STATE_JSON), "w") as f:
        json.dump({"step": step, "param_groups": opt["param_groups"]}, f)


def load_checkpoint(engine: Engine, directory: str) -> tuple[int, dict]:
    """Load weights and EMA into `engine`; returns (step, optimizer state dict)."""
    art = read_artifact(directory)
    check_compatible(art.engine, art.codec, engine)
    engine.ema.load_state_dict(art.tensors)
    tensors = load_file(os.path.join(directory, STATE_TENSORS))
    engine.net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
    with open(os.path.join(directory, STATE_JSON)) as f:
        meta = json.load(f)
    state: dict = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    return meta["step"], {"state": state, "param_groups": meta["param_groups"]}


def check_compatible(engine_json: dict, codec: dict, engine: Engine) -> None:
    if engine_json.get("family") != engine.family or engine_json.get("config") != engine.config_dict():
        raise ArtifactError(f"the checkpoint was trained with a different model config ({ENGINE} differs); "
                            "resume with the same config, or use a new run name / storage path")
    if codec != engine.codec.to_dict():
        raise ArtifactError(f"the checkpoint was trained on data with a different schema or statistics "
                            f"({CODEC} differs); use a new run name / storage path for new data")
