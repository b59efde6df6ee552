"""Distillation (synth.distill): students that sample in 1-4 evaluations with guidance as an input,
used like any artifact by sampling, bulk synthesis and the endpoint."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from synth.distill import DistillConfig, distill
from synth.distill.run import load_teacher
from synth.distill.student import DistillTask, make_student, teacher_trajectories
from synth.families import load_engine
from synth.errors import ConfigError, SynthError

REPO = Path(__file__).resolve().parents[1]


def tiny_cfg(teacher: str, output: Path, **kw) -> DistillConfig:
    raw = {"teacher": teacher, "output": str(output), "steps": 2, "teacher_steps": 8, "trajectories": 3000,
           "train": {"steps": 150, "batch_size": 256, "lr": 2e-3, "eval_every": 75, "warmup_steps": 10,
                     "ema_decay": 0.9},
           "evaluate": {"rows": 500}, "target": "income"}
    for k, v in kw.items():
        raw[k] = {**raw.get(k, {}), **v} if isinstance(v, dict) and isinstance(raw.get(k), dict) else v
    return DistillConfig.parse(raw)


@pytest.fixture(scope="module")
def student(tiny_artifact, tmp_path_factory):
    cfg = tiny_cfg(tiny_artifact, tmp_path_factory.mktemp("student") / "model")
    result = distill(cfg)
    return load_engine(result.artifact_uri), result


def test_student_artifact_records_teacher_grid_and_its_own_evaluation(student, tiny_artifact):
    engine, result = student
    teacher = load_engine(tiny_artifact)
    m = engine.manifest
    assert m["teacher"]["artifact_id"] == teacher.manifest["artifact_id"]
    assert m["teacher"]["sampler"] == "dpmpp_2m" and m["teacher"]["steps"] == 8
    spec = engine.config.distilled
    assert spec.steps == 2 and len(spec.grid) == 3 and spec.grid[-1] == 0.0
    # the student's grid lies on the teacher's solver grid
    from synth.diffusion.processes import timesteps

    full = timesteps(teacher.process, 8, "logsnr").tolist()
    assert all(any(abs(g - f) < 1e-12 for f in full) for g in spec.grid)
    assert m["distillation"]["reads_reference_data"] is False
    assert m["privacy"]["inherited_from_teacher"] == teacher.manifest["artifact_id"]
    assert m["input"] == teacher.manifest["input"] and m["split"] == teacher.manifest["split"]
    ev = m["evaluation"]
    assert ev["student"]["nfe"] == 2 and ev["teacher"]["nfe"] == 8
    for side in ("student", "teacher"):
        assert 0 < ev[side]["column_shapes"] <= 1 and 0 <= ev[side]["c2st_auc"] <= 1
        assert 0 <= ev[side]["dcr_share"] <= 1 and ev[side]["rows_per_s"] > 0
    assert [h["step"] for h in m["history"]] == [75, 150]


def test_student_samples_deterministically_with_one_evaluation_per_step(student):
    engine, _ = student
    calls = []
    hook = engine.ema.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape[0]))
    try:
        a = engine.sample(64, {"sex": "Female"}, guidance=2.5, seed=3)
    finally:
        hook.remove()
    assert calls == [64, 64]  # 2 steps, guided, one batch of 64 rows each: no second CFG half
    assert set(a["sex"].to_pylist()) == {"Female"}
    b = engine.sample(64, {"sex": "Female"}, guidance=2.5, seed=3)
    assert a.equals(b)
    assert engine.sample(64, seed=4).schema == a.schema


def test_guidance_input_changes_guided_rows_only(student):
    engine, _ = student
    x = engine.prior(32, torch.Generator().manual_seed(0))
    cond, _ = engine.encode_conditions(32, {"income": ">50K"})
    null = engine.null_conditions(32)
    run = lambda c, w: engine.sample_features(x, c, sampler="distilled", steps=2, guidance=w, generator=None)  # noqa: E731
    assert not torch.allclose(run(cond, 0.5), run(cond, 3.0))
    assert torch.equal(run(null, 0.5), run(null, 3.0))  # unconditional rows ignore w


def test_student_and_teacher_refuse_each_others_samplers(student, tiny_artifact):
    engine, _ = student
    with pytest.raises(ConfigError, match="only with sampler 'distilled'"):
        engine.sample(4, sampler="dpmpp_2m", steps=2)
    with pytest.raises(ConfigError, match="distilled for steps=2"):
        engine.sample(4, sampler="distilled", steps=4)
    with pytest.raises(ConfigError, match="above 3.0"):
        engine.sample(4, {"sex": "Male"}, guidance=5.0)
    teacher = load_engine(tiny_artifact)
    with pytest.raises(ConfigError, match="synth distill"):
        teacher.sample(4, sampler="distilled", steps=2)
    assert engine.samplers() == ["distilled"] and "distilled" not in teacher.samplers()


def test_distillation_beats_the_teachers_own_few_step_solver(tmp_path_factory):
    """On held-out teacher trajectories, the trained 2-step student lands closer to the teacher's
    8-step result than the teacher's own 2-step solvers do from the same noise. (The teacher has a
    v head: an eps head's x0 estimate near t = 1 divides by alpha ~ 0.007, which a tiny teacher
    makes a near-discontinuous map that a 300-step student cannot learn; see docs/distillation.md.)"""
    from tests.conftest import tiny_run
    from synth.config import RunConfig
    from synth.train import loop
    from synth.train.fit import fit

    out = tmp_path_factory.mktemp("vteacher")
    art = fit(RunConfig.parse(tiny_run(out, steps=150, model={"objective": {"head": "v"}}))).artifact_uri
    teacher = load_teacher(art)
    cfg = tiny_cfg(art, Path("/nonexistent/unused"), uncond_share=1.0, train={"steps": 300, "eval_every": 300})
    student = make_student(teacher, cfg)
    data = teacher_trajectories(teacher, cfg, 3000)
    held = teacher_trajectories(teacher, cfg.model_copy(update={"seed": 99}), 512)
    task = DistillTask(student)
    states, cond, _ = task.unpack(held)
    x_T, target = states[:, 0], states[:, -1]
    mse = lambda y: float(((y - target) ** 2).mean())  # noqa: E731
    kw = dict(guidance=1.0, generator=None)
    before = mse(student.sample_features(x_T, cond, sampler="distilled", steps=2, **kw))
    loop.train(task, loop.shuffled_batches(data, 256, 0), cfg.train)
    err_student = mse(student.sample_features(x_T, cond, sampler="distilled", steps=2, **kw))
    err_ddim = mse(teacher.sample_features(x_T, cond, sampler="ddim", steps=2, **kw))
    err_dpm = mse(teacher.sample_features(x_T, cond, sampler="dpmpp_2m", steps=2, **kw))
    assert err_student < 0.8 * min(err_ddim, err_dpm), (err_student, err_ddim, err_dpm)
    assert err_student < 0.5 * before


def test_bad_configs_are_refused_before_work(tiny_artifact, tmp_path):
    with pytest.raises(ConfigError, match="multiple of steps"):
        tiny_cfg(tiny_artifact, tmp_path / "s", steps=4, teacher_steps=10)
    with pytest.raises(ConfigError, match="teacher_sampler must be a deterministic"):
        tiny_cfg(tiny_artifact, tmp_path / "s", teacher_sampler="ddpm")
    with pytest.raises(SynthError, match="no model artifact"):
        distill(tiny_cfg(str(tmp_path / "missing"), tmp_path / "s"))
    with pytest.raises(ConfigError, match="must differ from the teacher"):
        distill(tiny_cfg(tiny_artifact, Path(tiny_artifact)))
    assert not (tmp_path / "s").exists()


def test_student_of_a_student_is_refused(student, tmp_path):
    engine, result = student
    with pytest.raises(ConfigError, match="itself a distilled student"):
        distill(tiny_cfg(result.artifact_uri, tmp_path / "s2"))


@pytest.mark.ray
def test_distill_on_ray_train_with_two_workers(ray_session, tiny_artifact, tmp_path):
    cfg = tiny_cfg(tiny_artifact, tmp_path / "student", steps=1, teacher_steps=4, trajectories=1024,
                   train={"steps": 20, "eval_every": 10, "batch_size": 128}, evaluate=None,
                   scaling={"num_workers": 2, "cpus_per_worker": 1})
    result = distill(cfg)
    engine = load_engine(result.artifact_uri)
    assert engine.manifest["workers"] == 2 and engine.config.distilled.steps == 1
    assert [h["step"] for h in engine.manifest["history"]] == [10, 20]
    t = engine.sample(100, {"income": ">50K"}, guidance=2.0, seed=0)
    assert t.num_rows == 100 and set(t["income"].to_pylist()) == {">50K"}


@pytest.mark.ray
def test_bulk_synthesis_and_cli_with_a_student(ray_session, student, tmp_path):
    engine, result = student
    from synth.pipelines.synthesize import SynthesizeConfig, synthesize

    m = synthesize(SynthesizeConfig(artifact=result.artifact_uri, rows=3000, output=str(tmp_path / "bulk"),
                                    shard_rows=1000, actors=1))
    assert m["sampler"] == "distilled" and m["steps"] == 2 and m["nfe"] == 2 and m["rows"] == 3000
    out = subprocess.run([sys.executable, "-m", "synth.cli", "sample", result.artifact_uri, "--rows", "50",
                          "-o", str(tmp_path / "s.parquet")], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert pq.read_table(tmp_path / "s.parquet").num_rows == 50


def test_distill_cli_and_job_entry_point(tiny_artifact, tmp_path):
    out = subprocess.run([sys.executable, "-m", "synth.cli", "distill", tiny_artifact, "--steps", "1",
                          "-o", str(tmp_path / "cli-student"), "--train-steps", "20", "--trajectories", "600"],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "1 NFE" in out.stderr and "student" in out.stdout
    assert load_engine(str(tmp_path / "cli-student")).config.distilled.steps == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text(json.dumps({"teacher": tiny_artifact, "output": str(tmp_path / "x"), "steps": 3,
                               "teacher_steps": 8, "bogus": 1}))
    out = subprocess.run([sys.executable, "-m", "jobs.distill", "--config", str(bad)], capture_output=True,
                         text=True, cwd=REPO)
    assert out.returncode == 2 and "bogus" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.ray
def test_endpoint_serves_a_student_over_http(ray_session, student):
    import httpx
    import ray
    from ray import serve

    from serve.app import build_app
    from tests.conftest import free_port

    engine, result = student
    serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
    port = ray.get(serve.context._get_global_client()._controller.get_http_config.remote()).port
    serve.run(build_app({"artifact_uri": result.artifact_uri, "num_cpus": 1, "deployment_name": "Student"}),
              name="student", route_prefix="/student")
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}/student", timeout=60) as c:
            info = c.get("/v1/model").json()
            assert [s["name"] for s in info["samplers"]] == ["distilled"]
            assert info["defaults"]["sampler"] == "distilled" and info["defaults"]["steps"] == 2
            r = c.post("/v1/sample", json={"rows": 3, "conditions": {"sex": "Female"}, "guidance": 2.0, "seed": 1})
            assert r.status_code == 200, r.text
            assert r.headers["x-synth-sampler"] == "distilled" and r.headers["x-synth-nfe"] == "2"
            assert [rec["sex"] for rec in r.json()["records"]] == ["Female"] * 3
            bad = c.post("/v1/sample", json={"rows": 1, "sampler": "ddim", "steps": 4})
            assert bad.status_code == 422 and "distilled" in bad.text
    finally:  # leave no Serve proxy behind: it would hold ports other tests' clusters need
        serve.shutdown()


def test_thinned_trajectories_equal_a_fresh_draw_for_fewer_steps(tiny_artifact):
    from synth.distill.student import thin

    teacher = load_teacher(tiny_artifact)
    cfg2 = tiny_cfg(tiny_artifact, Path("/nonexistent/unused"))
    cfg1 = tiny_cfg(tiny_artifact, Path("/nonexistent/unused"), steps=1)
    two = teacher_trajectories(teacher, cfg2, 300)
    assert torch.equal(thin(two, teacher.codec.width, 2, 1), teacher_trajectories(teacher, cfg1, 300))


def test_student_of_a_private_teacher_keeps_its_real_row_evaluation_out_of_the_manifest(tiny_artifact, tmp_path,
                                                                                        monkeypatch):
    """The student inherits `dp: true`; the evaluation against the teacher's real train/test rows is
    not DP, so it is returned to the caller and never stored in that manifest."""
    import synth.distill.run as run

    teacher = load_teacher(tiny_artifact)
    teacher.manifest = {**teacher.manifest, "privacy": {"dp": True, "epsilon": 3.0, "delta": 1e-6}}
    monkeypatch.setattr(run, "load_teacher", lambda uri: teacher)
    result = distill(tiny_cfg(tiny_artifact, tmp_path / "s", trajectories=256, evaluate={"rows": 200}, target=None,
                              train={"steps": 4, "eval_every": 2, "warmup_steps": 1, "batch_size": 128}))
    m = load_engine(result.artifact_uri).manifest
    assert m["privacy"]["dp"] is True and m["distillation"]["reads_reference_data"] is False
    assert "evaluation" not in m and result.evaluation["student"]["nfe"] == 2
