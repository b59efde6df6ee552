"""Training checkpoints: a model artifact plus the training state, both without pickle.

A checkpoint directory is an ordinary artifact (loadable by `load_engine`) with two more
files: `train_state.safetensors` (the trained modules' weights beyond the artifact's sampling
weights, e.g. the online net, or the critic, and every optimizer's moments) and
`train_state.json` (step, optimizer param groups, and any JSON-able state a family's loop needs
to resume; the metric history stays in the manifest). Resuming checks that the checkpoint's
model config and codec match the run's, and refuses otherwise.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from synth.io.artifact import CODEC, ENGINE, STATE_JSON, STATE_TENSORS, read_artifact, write_artifact
from synth.engine.base import Engine
from synth.errors import ArtifactError


@dataclass
class TrainState:
    """What a loop gets back from a checkpoint besides the module weights loaded in place."""
    step: int
    manifest: dict  # the checkpoint's manifest (its "history": the metrics reported so far)
    optimizers: dict[str, dict]  # name -> optimizer state dict, for `Optimizer.load_state_dict`
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # extra tensors saved by the loop
    extra: dict = field(default_factory=dict)  # extra JSON saved by the loop


def save_checkpoint(engine: Engine, step: int, directory: str, manifest: dict, *,
                    modules: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer],
                    tensors: dict[str, torch.Tensor] | None = None, extra: dict | None = None) -> None:
    out = {f"mod.{name}.{k}": v.detach().cpu().contiguous()
           for name, module in modules.items() for k, v in module.state_dict().items()}
    out.update({f"extra.{k}": v.detach().cpu().contiguous() for k, v in (tensors or {}).items()})
    groups = {}
    for name, optimizer in optimizers.items():
        opt = optimizer.state_dict()
        groups[name] = opt["param_groups"]
        for pid, state in opt["state"].items():
            for key, value in state.items():
                out[f"opt.{name}.{pid}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    state = {STATE_TENSORS: st_save(out),  # hashed in the manifest like the weights: `step` drives the accountant
             STATE_JSON: json.dumps({"step": step, "param_groups": groups, "extra": extra or {}}).encode()}
    write_artifact(directory, family=engine.family, config=engine.config_dict(), codec=engine.codec.to_dict(),
                   tensors=engine.sampling_state(), manifest={**manifest, "step": step}, extra=state)


def load_checkpoint(engine: Engine, directory: str, modules: dict[str, nn.Module]) -> TrainState:
    """Load the artifact's sampling weights and the named modules' weights into `engine` (after
    checking the checkpoint is of this model and data); returns the step, manifest, optimizer
    states and the loop's extra state."""
    art = read_artifact(directory)
    check_compatible(art.engine, art.codec, engine)
    engine.load_sampling_state(art.tensors)
    if set(art.extra) != {STATE_TENSORS, STATE_JSON}:
        raise ArtifactError(f"{directory!r} is a model artifact without training state ({STATE_TENSORS} and "
                            f"{STATE_JSON} listed in its manifest); resume from a checkpoint, or use a new run name")
    saved = st_load(art.extra[STATE_TENSORS])
    for name, module in modules.items():
        prefix = f"mod.{name}."
        module.load_state_dict({k[len(prefix):]: v for k, v in saved.items() if k.startswith(prefix)})
    meta = json.loads(art.extra[STATE_JSON])
    optimizers = {name: {"state": {}, "param_groups": groups} for name, groups in meta["param_groups"].items()}
    for key, value in saved.items():
        if key.startswith("opt."):
            _, name, pid, rest = key.split(".", 3)
            optimizers[name]["state"].setdefault(int(pid), {})[rest] = value
    extra_tensors = {k[len("extra."):]: v for k, v in saved.items() if k.startswith("extra.")}
    return TrainState(meta["step"], art.manifest, optimizers, extra_tensors, meta.get("extra", {}))


def check_compatible(engine_json: dict, codec: dict, engine: Engine) -> None:
    if engine_json.get("family") != engine.family or engine_json.get("config") != engine.config_dict():
        raise ArtifactError(f"the checkpoint was trained with a different model config ({ENGINE} differs); "
                            "resume with the same config, or use a new run name / storage path")
    if codec != engine.codec.to_dict():
        raise ArtifactError(f"the checkpoint was trained on data with a different schema or statistics "
                            f"({CODEC} differs); use a new run name / storage path for new data")
