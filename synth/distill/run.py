"""Distil a teacher artifact into a few-step student artifact, in this process or on Ray Train.

    teacher artifact -> teacher trajectories (each worker draws its own share, seeded by rank)
    -> the training loop of `synth.train.loop` on a DistillTask -> student artifact whose
    manifest records its teacher and its own re-evaluated fidelity and privacy.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from synth.io import storage
from synth.distill.config import DistillConfig
from synth.distill.student import DistillTask, make_student, teacher_trajectories
from synth.families import load_engine, save_engine
from synth.engine.diffusion import DiffusionEngine
from synth.errors import ConfigError
from synth.io.manifest import base_manifest
from synth.train import loop


@dataclass
class DistillResult:
    artifact_uri: str
    artifact_id: str
    metrics: dict
    manifest: dict
    evaluation: dict | None = None  # student vs teacher on the teacher's held-out rows (kept out of a DP manifest)


def load_teacher(uri: str) -> DiffusionEngine:
    teacher = load_engine(uri)
    if not isinstance(teacher, DiffusionEngine):
        raise ConfigError(f"teacher {uri!r} is a {teacher.family!r} model; only diffusion models can be distilled")
    if teacher.config.distilled is not None:
        raise ConfigError(f"teacher {uri!r} is itself a distilled student; distil from the original model "
                          f"({teacher.config.distilled.teacher.get('uri')})")
    return teacher


def _split(data: torch.Tensor, share: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    n_val = int(round(data.shape[0] * share))
    return data[n_val:], (data[:n_val] if n_val else None)


def distill(cfg: DistillConfig, report: Callable | None = None, trajectories: torch.Tensor | None = None) -> DistillResult:
    """Train a student per `cfg`; in this process when scaling.num_workers is 0, else on Ray Train.
    `trajectories` (in-process only) reuses packed teacher trajectories drawn for this config's
    grid (see `synth.distill.student.thin` to derive fewer-step grids from one draw)."""
    if os.path.abspath(cfg.output) == os.path.abspath(cfg.teacher):
        raise ConfigError("output must differ from the teacher artifact; the teacher is never overwritten")
    teacher = load_teacher(cfg.teacher)
    if cfg.train.batch_size > cfg.trajectories:
        raise ConfigError(f"train.batch_size ({cfg.train.batch_size}) exceeds trajectories ({cfg.trajectories})")
    storage.check_writable(cfg.output)
    if cfg.scaling.num_workers > 0:
        if trajectories is not None:
            raise ConfigError("precomputed trajectories are for in-process distillation; Ray workers draw their own")
        return _distill_on_ray(cfg, teacher)
    t0 = time.perf_counter()
    torch.manual_seed(cfg.train.seed)
    student = make_student(teacher, cfg)
    if trajectories is None:
        trajectories = teacher_trajectories(teacher, cfg, cfg.trajectories)
    x_train, x_val = _split(trajectories, cfg.val_share)
    t1 = time.perf_counter()
    history: list[dict] = []

    def on_report(m: dict, opt) -> None:
        history.append(m)
        if report:
            report(m, opt)

    metrics = loop.train(DistillTask(student), loop.shuffled_batches(x_train, cfg.train.batch_size, cfg.train.seed),
                         cfg.train, x_val=x_val, report=on_report)
    wall = {"trajectories_s": t1 - t0, "train_s": time.perf_counter() - t1}
    return _finish(cfg, teacher, student, metrics, history, wall, workers=0)


def _finish(cfg: DistillConfig, teacher: DiffusionEngine, student: DiffusionEngine, metrics: dict,
            history: list[dict], wall: dict, workers: int) -> DistillResult:
    tm = teacher.manifest or {}
    spec = student.config.distilled
    student.constraints = teacher.constraints  # the teacher's rules hold on the student's rows too
    manifest = base_manifest(
        "model",
        run=cfg.name,
        # the student models the teacher's data: same input, split and columns, so evaluation and
        # bulk synthesis treat it like any model
        **{k: tm[k] for k in ("input", "split", "columns", "constraints") if k in tm},
        teacher={"artifact_id": tm.get("artifact_id"), "uri": cfg.teacher, "sampler": cfg.teacher_sampler,
                 "steps": cfg.teacher_steps, "family": teacher.family},
        distillation={"method": "trajectory distillation (multi-segment progressive-distillation target) "
                                "+ guidance distillation",
                      "steps": spec.steps, "grid": spec.grid, "guidance_max": spec.guidance_max,
                      "trajectories": cfg.trajectories, "uncond_share": cfg.uncond_share,
                      "cond_drop_each": cfg.cond_drop_each, "seed": cfg.seed,
                      "reads_reference_data": False},
        sampling={"sampler": "distilled", "steps": spec.steps, "guidance": student.config.guidance,
                  "nfe": spec.steps},
        train=cfg.train.model_dump(mode="json"),
        workers=workers,
        metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))},
        history=history,
        wall_s={**wall, "total_s": sum(wall.values())},
        # post-processing of the teacher: trajectories come from the teacher alone
        privacy={**tm.get("privacy", {"dp": False}), "inherited_from_teacher": tm.get("artifact_id")},
    )
    evaluation = None
    if cfg.evaluate is not None and "split" in tm:
        t = time.perf_counter()
        evaluation = evaluate_pair(student, teacher, cfg)
        manifest["wall_s"]["evaluate_s"] = time.perf_counter() - t
        # the evaluation reads real train/test rows: a private student's manifest states DP and must
        # hold only DP outputs, so there it is shown to whoever runs the job and not stored
        if not manifest["privacy"].get("dp"):
            manifest["evaluation"] = evaluation
    artifact_id = save_engine(student, cfg.output, manifest)
    return DistillResult(cfg.output, artifact_id, metrics, manifest, evaluation)


def evaluate_pair(student: DiffusionEngine, teacher: DiffusionEngine, cfg: DistillConfig) -> dict[str, Any]:
    """Fidelity, detection and privacy of the student and of the teacher's solver it imitates, on
    the teacher's held-out rows, with rows/s of each."""
    from synth.evaluate.reference import evaluate_against_reference

    out: dict[str, Any] = {}
    runs = {"student": (student, "distilled", cfg.steps),
            "teacher": (teacher, cfg.teacher_sampler, cfg.teacher_steps)}
    for name, (engine, sampler, steps) in runs.items():
        t = time.perf_counter()
        syn = engine.sample(cfg.evaluate.rows, sampler=sampler, steps=steps, seed=cfg.evaluate.seed)
        secs = time.perf_counter() - t
        ev = evaluate_against_reference(syn, teacher.manifest, target=cfg.target, seed=cfg.evaluate.seed)
        out[name] = {"sampler": sampler, "steps": steps, "nfe": engine.cost(sampler, steps, 1.0),
                     "rows_per_s": cfg.evaluate.rows / secs, "overall": ev.get("overall"),
                     "column_shapes": ev["column_shapes"]["mean"], "pair_trends": ev["pair_trends"]["mean"],
                     "c2st_auc": ev["detection"]["c2st_auc"], "dcr_share": ev["privacy"]["dcr_share"],
                     "exact_copy_rate": ev["privacy"]["exact_copy_rate"],
                     "efficacy": ev.get("efficacy")}
    return out


# -- Ray Train ------------------------------------------------------------------------------
def _distill_worker(config: dict[str, Any]) -> None:
    import ray.train

    from synth.train.checkpoint import load_checkpoint, save_checkpoint
    from synth.train.ray_train import training_threads
    from synth.train.session import RaySession

    cfg = DistillConfig.model_validate(config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    training_threads(cfg)
    teacher = load_teacher(cfg.teacher)
    torch.manual_seed(cfg.train.seed)
    student = make_student(teacher, cfg)
    modules = {"net": student.net}  # the EMA is the artifact's own weights
    session = RaySession()
    state = session.restore(lambda d: load_checkpoint(student, d, modules))
    start_step = state.step if state else 0
    history = state.manifest.get("history", []) if state else []
    share = cfg.trajectories // world + (1 if rank < cfg.trajectories % world else 0)
    x_train, x_val = _split(teacher_trajectories(teacher, cfg, share, rank=rank), cfg.val_share)
    batches = loop.shuffled_batches(x_train, max(1, cfg.train.batch_size // world), cfg.train.seed + 7919 * rank + start_step)

    def report(metrics: dict, optimizer) -> None:
        history.append(metrics)
        session.report(metrics, lambda d: save_checkpoint(
            student, metrics["step"], d, {"kind": "checkpoint", "run": cfg.name, "history": history},
            modules=modules, optimizers={"opt": optimizer}))

    loop.train(DistillTask(student), batches, cfg.train, x_val=x_val, accelerator=loop.make_accelerator(cfg.train),
               start_step=start_step, optimizer_state=state.optimizers["opt"] if state else None, report=report)


def _distill_on_ray(cfg: DistillConfig, teacher: DiffusionEngine) -> DistillResult:
    from synth.train.ray_train import prepare_cluster, run_trainer

    storage.check_writable(cfg.storage_path)
    prepare_cluster(cfg.scaling, cfg.train)
    t0 = time.perf_counter()
    student, metrics = run_trainer(_distill_worker, {"cfg": cfg.model_dump(mode="json")}, cfg.scaling,
                                   name=cfg.name, storage_path=cfg.storage_path, what="distillation")
    history = student.manifest.get("history", [])
    return _finish(cfg, teacher, student, metrics, history,
                   {"ray_s": time.perf_counter() - t0}, workers=cfg.scaling.num_workers)
