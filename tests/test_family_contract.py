"""The family contract: every family of `synth.families` fits a small table, saves and reloads its
artifact, samples reproducibly, meets a categorical condition exactly, and reports one NFE through
`synth sample`'s Parquet metadata, `synth synthesize`'s manifest and the endpoint's cost; every
family with a trainer also fits on Ray Train workers. A new family is done when it passes here:
give it a small run in RUNS (or a closed-form fit in FIT) and nothing else changes. Families that
`synth fit` fits in closed form in the driver (`Family.fit`) have no Ray Train run.
"""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml
from typer.testing import CliRunner

from synth.config import RunConfig
from synth.families import FAMILIES, load_engine
from synth.train.fit import fit

# small runs (seconds): the family's model settings and the table it learns
RUNS = {
    "diffusion": {"model": {"family": "diffusion", "net": {"width": 32, "depth": 1, "embed_dim": 16}, "sampler": "dpmpp_2m", "steps": 3}},
    "gan": {"model": {"family": "gan", "gen_width": 32, "critic_width": 32, "noise_dim": 16, "pac": 5,
                      "val_rows": 256}},
    "autoregressive": {"model": {"family": "autoregressive", "hidden": 32}},
    "flow": {"model": {"family": "flow", "transforms": 1, "hidden": 16, "depth": 1, "bins": 4}},
    "vae": {"model": {"family": "vae", "latent": 4, "hidden": 32, "depth": 1, "mixture_components": 2,
                      "iw_samples": 4}},
    "array": {"data": {"uri": "bundled:digits"},
              "model": {"family": "array", "net": {"channels": [8, 16], "attention": False}, "steps": 2}},
    # five of Adult's columns and MST's fixed rounds keep the JAX compilations few (AIM, the default
    # method, is fitted end to end in tests/test_marginal.py)
    "marginal": {"data": {"codec": {"ignore": ["fnlwgt", "education-num", "marital-status", "occupation",
                                               "relationship", "race", "capital-gain", "capital-loss",
                                               "native-country", "workclass"]}},
                 "model": {"family": "marginal", "method": "mst", "iters": 50},
                 "privacy": {**yaml.safe_load((Path(__file__).resolve().parents[1] / "configs/adult-marginal.yaml")
                                              .read_text())["privacy"], "epsilon": 3.0}},
}


def _fit_fingerprint(tmp_path) -> str:
    from synth.table.fingerprint import build_fingerprint, write_fingerprint
    from synth.table import CodecConfig
    from synth.train.fit import fit_fingerprint

    write_fingerprint(build_fingerprint("bundled:adult", CodecConfig(), quantiles=51), str(tmp_path / "fp.json"))
    fit_fingerprint(str(tmp_path / "fp.json"), str(tmp_path / "model"))
    return str(tmp_path / "model")


FIT = {"fingerprint": _fit_fingerprint}  # families fitted in closed form (no trainer)


def run_config(name: str, out, **scaling) -> RunConfig:
    raw = json.loads(json.dumps(RUNS[name]))
    raw.update(name=f"contract-{name}", output=str(out), scaling=scaling,
               train={"steps": 6, "eval_every": 3, "batch_size": 64, "warmup_steps": 1, "threads": 1,
                      "precision": "fp32"}, evaluate={"check": "warn"})
    return RunConfig.parse(raw)


def test_every_family_has_a_contract_run():
    assert set(FAMILIES) == set(RUNS) | set(FIT)
    assert all((FAMILIES[n].trainer is None and FAMILIES[n].fit is None) == (n in FIT) for n in FAMILIES)


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def artifact(request, tmp_path_factory) -> str:
    name = request.param
    out = tmp_path_factory.mktemp(name)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        uri = FIT[name](out) if name in FIT else fit(run_config(name, out)).artifact_uri
    finally:
        torch.set_num_threads(before)
    return uri


def _condition(engine) -> tuple[str, object]:
    col = engine.codec.categorical(engine.cond_columns[0])
    return col.name, col.categories[-1]


def test_fits_saves_reloads_and_samples_reproducibly(artifact):
    engine = load_engine(artifact)
    assert engine.family in FAMILIES and engine.manifest["family"] == engine.family
    a = engine.sample(40, seed=7)
    assert a.num_rows == 40 and a.schema == engine.codec.schema
    assert load_engine(artifact).sample(40, seed=7).equals(a)  # the artifact alone gives the same rows
    assert not engine.sample(40, seed=8).equals(a)


def test_conditions_on_a_categorical_exactly(artifact):
    engine = load_engine(artifact)
    assert engine.cond_columns, "a family conditions on the table's categorical columns"
    name, value = _condition(engine)
    t = engine.sample(30, {name: value}, seed=1)
    assert t.column(name).to_pylist() == [value] * 30
    assert engine.sample(30, {name: value}, seed=1).equals(t)


def test_the_endpoints_batching_path_gives_engine_sample_rows(artifact):
    """Jobs merged into one model batch by the endpoint get the rows `engine.sample` gives each."""
    from synth.serving.batching import make_job, run_jobs

    engine = load_engine(artifact)
    name, value = _condition(engine)
    sampler, steps, guidance = engine.settings()

    def job(rows, seed, cond):
        c, req = engine.encode_conditions(rows, cond)
        return make_job(engine, rows, c, req, sampler, steps, guidance, seed, True)

    tables, _ = run_jobs(engine, [job(40, 1, {}), job(25, 9, {name: value}), job(30, 5, {})], max_cost=32768)
    assert tables[1].equals(engine.sample(25, {name: value}, seed=9))
    assert tables[2].equals(engine.sample(30, seed=5))


@pytest.mark.parametrize("guidance", [1.0, 2.5])
def test_one_nfe_through_sample_synthesize_and_the_endpoint(artifact, guidance, tmp_path):
    """`synth sample` (Parquet metadata), bulk synthesis (its manifest's settings) and the endpoint
    (a job's NFE and headers) count network evaluations with the engine's one `cost`."""
    from synth.cli import app
    from synth.serving import ServeArgs
    from synth.serving.schemas import SampleRequest
    from synth.serving.service import SamplingService
    from synth.pipelines.synthesize import SynthesizeConfig, generation_settings

    engine = load_engine(artifact)
    name, value = _condition(engine)
    sampler, steps, _ = engine.settings()
    expected = engine.cost(sampler, steps, guidance, conditioned=True)
    fixed = engine.fixed_steps()
    assert expected >= 1 and (fixed != 1 or expected == 1)  # a one-pass family costs one evaluation

    out = tmp_path / "rows.parquet"
    r = CliRunner().invoke(app, ["sample", artifact, "-n", "5", "-o", str(out), "--guidance", str(guidance),
                                 "--condition", f"{name}={value}"])
    assert r.exit_code == 0, r.output
    recorded = json.loads(pq.read_schema(out).metadata[b"synth.generation"])
    assert (recorded["sampler"], recorded["steps"], recorded["nfe"]) == (sampler, steps, expected)

    bulk = SynthesizeConfig(artifact=artifact, rows=10, output=str(tmp_path / "bulk"), guidance=guidance,
                            conditions={"fixed": {name: value}})
    assert generation_settings(engine, bulk) == {"sampler": sampler, "steps": steps, "guidance": guidance,
                                                 "nfe": expected}

    service = SamplingService(ServeArgs(artifact_uri=artifact), engine=engine)
    # a model with its own steps gets none chosen from steps_candidates; others are asked for `steps`
    job = service.validate(SampleRequest(rows=3, guidance=guidance, conditions={name: value},
                                         steps=None if fixed is not None else steps))
    assert job.nfe == expected and service.headers(job)["X-Synth-NFE"] == str(expected)
    assert job.steps == steps and service.headers(job)["X-Synth-Steps"] == str(steps)


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in sorted(RUNS) if FAMILIES[n].trainer is not None])
def test_trains_on_ray_train_workers(name, ray_session, tmp_path):
    result = fit(run_config(name, tmp_path, num_workers=1, cpus_per_worker=1))
    engine = load_engine(result.artifact_uri)
    assert engine.family == name and engine.manifest["workers"] == 1 and engine.manifest["history"]
    assert engine.sample(5, seed=0).num_rows == 5
