"""Conditional WGAN-GP engine: `model.family: gan` in the run config, a short in-process fit
writes an ordinary artifact, training-by-sampling over-samples rare categories, monitoring
reports losses/gradients/validation, the kept generator is the best one, non-finite losses stop
training, and sampling works through the same paths as diffusion (CLI, endpoint batching)."""
from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from synth.config import RunConfig
from synth.families import load_engine
from synth.engine.gan import GANConfig, GANEngine
from synth.train.fit import fit
from synth.train.gan import CondSampler, train_gan
from synth.errors import ConfigError
from synth.train.prepare import encode_tensor, prepare

REPO = Path(__file__).resolve().parents[1]
ADULT = pq.read_schema(REPO / "synth/datasets/adult.parquet").remove_metadata()
TINY_GAN = {"family": "gan", "gen_width": 64, "critic_width": 64, "noise_dim": 32, "val_rows": 512}


def tiny_gan_run(out: Path, steps: int = 60, **model) -> dict:
    return {"output": str(out), "model": {**TINY_GAN, **model},
            "train": {"steps": steps, "eval_every": 20, "batch_size": 500, "threads": 1},
            "evaluate": {"check": "warn"}}


@pytest.fixture(autouse=True)
def one_thread():
    """Small GANs on shared cores: more threads than free cores make each step ~50x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def gan_artifact(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("gan")
    return fit(RunConfig.parse(tiny_gan_run(out))).artifact_uri


def test_config_union_on_family():
    assert RunConfig.parse({}).model.family == "autoregressive"  # the default family
    cfg = RunConfig.parse({"model": {"family": "gan", "pac": 5}})
    assert isinstance(cfg.model, GANConfig) and cfg.model.pac == 5
    with pytest.raises(ConfigError, match="'made-up'.*'diffusion', 'gan'"):
        RunConfig.parse({"model": {"family": "made-up"}})
    with pytest.raises(ConfigError, match=r"model\.process: unknown field 'process' in model; model takes family, noise_dim"):
        RunConfig.parse({"model": {"family": "gan", "process": {}}})
    with pytest.raises(ConfigError, match="gan needs scaling.data_mode memory"):
        RunConfig.parse({"model": {"family": "gan"}, "scaling": {"num_workers": 2, "data_mode": "stream"}})


def test_example_config_is_valid():
    cfg = RunConfig.from_yaml(str(REPO / "configs/adult-gan.yaml"))
    assert isinstance(cfg.model, GANConfig) and cfg.scaling.num_workers == 0


def test_fit_writes_a_sampleable_artifact_with_monitoring(gan_artifact):
    engine = load_engine(gan_artifact)
    assert engine.family == "gan"
    m = engine.manifest
    assert m["metrics"]["stop_reason"] == "steps" and 1 <= m["metrics"]["best_step"] <= 60
    for h in m["history"]:
        for key in ("loss_critic", "loss_generator", "loss_gap", "wasserstein", "grad_norm_critic",
                    "grad_norm_generator", "val_distance"):
            assert np.isfinite(h[key]), key
    t = engine.sample(800, seed=1)
    assert t.num_rows == 800 and t.schema == ADULT
    assert engine.sample(300, seed=4).equals(load_engine(gan_artifact).sample(300, seed=4))
    assert not engine.sample(300, seed=4).equals(engine.sample(300, seed=5))
    both = engine.sample(200, {"sex": "Female", "race": "Black"}, seed=2)
    assert set(both["sex"].to_pylist()) == {"Female"} and set(both["race"].to_pylist()) == {"Black"}
    with pytest.raises(ConfigError, match="no category 'Martian'"):
        engine.sample(5, {"race": "Martian"})


def test_training_by_sampling_oversamples_rare_categories():
    cfg = RunConfig.parse(tiny_gan_run(Path("/tmp/unused")))
    prep = prepare(cfg)
    engine = GANEngine(cfg.model, prep.codec)
    x = encode_tensor(prep.codec, prep.train, seed=0)
    sampler = CondSampler(engine, x, np.random.default_rng(0))
    j = engine.cond_columns.index("native-country")
    probs = np.asarray(prep.codec.categorical("native-country").probs)
    rare = np.flatnonzero(probs < 0.01)
    idx, c = sampler.draw(20_000)
    block = c[:, int(engine.cond_offsets[j]):int(engine.cond_offsets[j + 1])]
    chosen = block.sum(1) > 0
    cats = block[chosen].argmax(1).numpy()
    rare_share = np.isin(cats, rare).mean()
    assert rare_share > 5 * probs[rare].sum()  # log-frequency sampling, not frequency
    # every drawn real row holds the category it was drawn for
    rows = x[torch.from_numpy(idx[chosen.numpy()])]
    assert (rows[:, engine.cond_slices[j]].argmax(1).numpy() == cats).all()


def test_rollback_keeps_the_best_generator_and_non_finite_losses_stop(tmp_path):
    cfg = RunConfig.parse(tiny_gan_run(tmp_path, patience=2))
    prep = prepare(cfg)
    engine = GANEngine(cfg.model, prep.codec)
    x = encode_tensor(prep.codec, prep.train, seed=0)
    xv = encode_tensor(prep.codec, prep.val, seed=None, strict=False)
    states = {}

    def report(m, snapshot):
        if not m.get("final"):
            states[m["step"]] = copy.deepcopy(engine.generator.state_dict())

    metrics = train_gan(engine, x, xv, steps=200, batch_size=500, seed=0, eval_every=10, report=report)
    scores = {h["step"]: h["val_distance"] for h in engine.history}
    assert metrics["best_step"] == min(scores, key=scores.get)
    assert metrics["best_val_distance"] == pytest.approx(min(scores.values()))
    kept = engine.generator.state_dict()
    assert all(torch.equal(kept[k], v) for k, v in states[metrics["best_step"]].items())
    if metrics["step"] < 200:
        assert metrics["stop_reason"].startswith("early stop")
    bad = x.clone()
    bad[:, 0] = float("nan")
    fresh = GANEngine(cfg.model, prep.codec)
    out = train_gan(fresh, bad, xv, steps=50, batch_size=500, seed=0, eval_every=10)
    assert out["stop_reason"].startswith("diverged") and out["step"] == 1


def test_cli_fit_with_family_gan(tmp_path):
    config = tmp_path / "gan.yaml"
    config.write_text(yaml.safe_dump(tiny_gan_run(tmp_path / "run", steps=20)))
    r = subprocess.run([sys.executable, "-m", "synth.cli", "fit", "--config", config], capture_output=True, text=True,
                       cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    engine = json.loads((tmp_path / "run" / "model" / "engine.json").read_text())
    assert engine["family"] == "gan" and engine["config"]["pac"] == 10


@pytest.mark.ray
@pytest.mark.slow
def test_two_ray_train_workers_checkpoint_and_resume(ray_session, tmp_path):
    """The GAN on Ray Train: 2 workers average both networks' gradients; every evaluation is a
    checkpoint holding generator, critic, optimizers and the best generator; a rerun under the
    same name resumes from it; the artifact is the rolled-back best generator."""

    raw = tiny_gan_run(tmp_path, steps=40, patience=10)
    raw.update(name="gan2", scaling={"num_workers": 2, "cpus_per_worker": 1})
    raw["train"]["eval_every"] = 10
    result = fit(RunConfig.parse(raw))
    engine = load_engine(result.artifact_uri)
    m = engine.manifest
    assert m["workers"] == 2 and m["metrics"]["step"] == 40 and m["sampling"]["one_pass"]
    assert [h["step"] for h in m["history"]] == [10, 20, 30, 40]
    assert all(np.isfinite(h["grad_norm_critic"]) and h["samples_per_s"] > 0 for h in m["history"])
    best = min(m["history"], key=lambda h: h["val_distance"])
    assert m["metrics"]["best_step"] == best["step"]
    t = engine.sample(200, {"sex": "Female"}, seed=3)
    assert t.num_rows == 200 and set(t.column("sex").to_pylist()) == {"Female"}
    ckpt = sorted((tmp_path / "ray" / "gan2").glob("checkpoint_2*"))[-1]
    state = json.loads((ckpt / "train_state.json").read_text())
    assert set(state["param_groups"]) == {"generator", "critic"} and state["extra"]["stop_reason"] == "steps"

    raw["train"]["steps"] = 60  # same name and storage: resumes at step 40 and trains 20 more
    fit(RunConfig.parse(raw))
    resumed = load_engine(result.artifact_uri).manifest
    assert [h["step"] for h in resumed["history"]] == [10, 20, 30, 40, 50, 60]
    assert resumed["history"][:4] == m["history"]
