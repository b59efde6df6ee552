"""The sampling service without Ray: request validation (field-level errors), SLO-aware step
choice, admission control (backpressure), batched execution and bookkeeping. The Serve
deployment (`synth.serving.deployment`) wraps it in HTTP and `@serve.batch`."""
from __future__ import annotations

import math
import secrets
import time
from typing import Any


from synth.diffusion.samplers import SAMPLERS
from synth.families import load_engine
from synth.errors import ConfigError
from synth.serving.formats import encode
from synth.serving.batching import BatchStats, Job, make_job, run_jobs
from synth.serving.config import ServeArgs
from synth.serving.control import SLOController
from synth.serving.metrics import NullMetrics
from synth.serving.schemas import MEDIA_TYPES, SampleRequest
from synth.serving.slo import LatencyModel, SLOTracker, calibrate
from synth.table.columns import NumericColumn

MAX_LISTED_VALUES = 1000
MAX_ERRORS = 20  # field errors in one 422; validation stops there
MAX_MESSAGE = 500  # characters of one error message
MAX_NAME = 64  # characters of a request's condition key echoed back


class RequestProblem(Exception):
    """A request the endpoint refuses with 422; `errors` are FastAPI-style {loc, msg, type}."""

    def __init__(self, errors: list[dict[str, Any]]):
        super().__init__("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors))
        self.errors = errors


class Overloaded(Exception):
    """The replica refuses more work for now (429 with Retry-After)."""

    def __init__(self, reason: str, retry_after_s: float):
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


def _problem(loc: tuple, msg: str, kind: str = "value_error") -> dict[str, Any]:
    msg = msg if len(msg) <= MAX_MESSAGE else msg[:MAX_MESSAGE] + " ..."
    return {"loc": ["body", *loc], "msg": msg, "type": kind}


def _short(name: str) -> str:
    """A request's key as echoed in an error: never more than MAX_NAME characters."""
    return name if len(name) <= MAX_NAME else name[:MAX_NAME] + "..."


class SamplingService:
    """One model's endpoint state: its engine, latency model, SLO window, closed loop and admission.
    A replica serving several models holds one per loaded model (synth.serving.models)."""

    def __init__(self, args: ServeArgs, engine: Any | None = None, metrics: Any | None = None,
                 replica: str | None = None, model_id: str | None = None):
        self.args = args
        self.model_id = model_id or args.default_id
        self.artifact_uri = args.catalogue[self.model_id]
        # the artifact is verified here: integrity always, its signature with require_signature
        self.engine = engine if engine is not None else load_engine(
            self.artifact_uri, require_signature=args.require_signature, public_key=args.public_key)
        self.metrics = metrics or NullMetrics()
        self.replica = replica
        self.latency = LatencyModel(max_cost=args.max_batch_cost,
                                    evals=lambda s, k: self.engine.cost(s, k, 1.0, conditioned=False))
        self.tracker = SLOTracker(args.slo_p99_ms)
        self.control = SLOController(args.control, args.slo_p99_ms, args.steps_candidates, args.ongoing)
        self.pending: dict[tuple[str, int, int], int] = {}  # (sampler, steps, cfg) -> net rows admitted
        self.inflight_requests = 0
        self.inflight_rows = 0
        self._state_exported = -math.inf  # when the controller's state gauges were last written
        self.ready = False
        cfg = self.engine.config
        self.defaults = {"sampler": cfg.sampler, "steps": cfg.steps, "guidance": float(cfg.guidance)}

    # -- start-up ---------------------------------------------------------------------------
    def warm_up(self) -> None:
        if self.args.calibrate:
            a, b = calibrate(self.engine, self.defaults["sampler"])
            self.latency.a, self.latency.b = a, b
        self.ready = True

    # -- requests ---------------------------------------------------------------------------
    def validate(self, req: SampleRequest) -> Job:
        """A runnable job, or RequestProblem listing the bad fields (at most MAX_ERRORS). Runs on the
        event loop, so its work is bounded by the model's condition columns, not by the request."""
        a, engine = self.args, self.engine
        errors: list[dict[str, Any]] = []
        if req.rows > a.max_rows:
            errors.append(_problem(("rows",), f"rows must be at most {a.max_rows} per request, got {req.rows}; "
                                              "split the request or use bulk synthesis", "less_than_equal"))
        if req.steps is not None and req.steps > a.max_steps:
            errors.append(_problem(("steps",), f"steps must be at most {a.max_steps}, got {req.steps}",
                                   "less_than_equal"))
        if req.guidance is not None and req.guidance > a.max_guidance:
            errors.append(_problem(("guidance",), f"guidance must be at most {a.max_guidance}, got {req.guidance}",
                                   "less_than_equal"))
        sampler = req.sampler or self.defaults["sampler"]
        if sampler not in engine.samplers():
            errors.append(_problem(("sampler",), f"sampler {sampler!r} is not available for this model; choose one "
                                                 f"of {engine.samplers()}"))
        n = min(req.rows, a.max_rows)
        conditions = req.plain_conditions()
        usable = len(engine.cond_columns) + len(engine.range_columns) + \
            (len(engine.constraints.owner) if engine.constraints is not None else 0)
        if len(conditions) > usable:
            errors.append(_problem(("conditions",), f"{len(conditions)} conditions given but this model has "
                                                    f"{usable} condition columns (GET /v1/model lists them)"))
            conditions = {}
        for name, value in conditions.items():
            if len(errors) >= MAX_ERRORS:
                break
            constrained = engine.constraints is not None and name in engine.constraints.owner  # mapped or refused
            if name not in engine.cond_columns and name not in engine.range_columns and not constrained:
                if isinstance(engine.codec.by_name.get(name), NumericColumn):
                    try:
                        engine.refuse_condition(name)
                    except ConfigError as e:
                        errors.append(_problem(("conditions", name), str(e)))
                        continue
                errors.append(_problem(("conditions", _short(name)), f"{_short(name)!r} is not a condition column "
                                                                     "of this model (GET /v1/model lists them)"))
                continue
            if isinstance(value, list) and len(value) != req.rows:
                errors.append(_problem(("conditions", name), f"condition {name!r} has {len(value)} values for "
                                                             f"{req.rows} rows; give one value or one per row"))
                continue
            try:
                engine.encode_conditions(len(value) if isinstance(value, list) else 1, {name: value})
            except ConfigError as e:
                errors.append(_problem(("conditions", name), str(e)))
            except (TypeError, ValueError) as e:
                errors.append(_problem(("conditions", name), f"invalid value for condition {name!r}: {e}"))
        if req.format == "png" and self.image_column() is None:
            errors.append(_problem(("format",), "format png is for image models (model.family array with an image "
                                                "layout); use json, arrow or parquet"))
        if errors:
            raise RequestProblem(errors[:MAX_ERRORS])

        guidance = self.defaults["guidance"] if req.guidance is None else float(req.guidance)
        seeded = req.seed is not None
        seed = req.seed if seeded else secrets.randbits(63)
        cond, requested = engine.encode_conditions(n, conditions, seed)
        steps = self.choose_steps(sampler, n, guidance) if req.steps is None else req.steps
        try:
            engine.validate_request(n, sampler, steps, guidance)
        except ConfigError as e:
            raise RequestProblem([_problem((), str(e))]) from None
        job = make_job(engine, n, cond, requested, sampler, steps, guidance, seed, seeded, req.format)
        job.enforced = engine.enforcement(conditions)
        predicted = self.latency.predict(sampler, steps, n * job.net_factor)
        if predicted > a.max_request_s:
            raise RequestProblem([_problem((), f"this request would take about {predicted:.1f} s of model time "
                                               f"(predicted), over this endpoint's limit of {a.max_request_s:g} s "
                                               "per request; ask for fewer rows or steps, a cheaper sampler or "
                                               "lower guidance, or use bulk synthesis", "too_costly")])
        return job

    def choose_steps(self, sampler: str, rows: int, guidance: float) -> int:
        """The model's fixed steps (one-pass families, distilled students), else the largest candidate
        whose predicted latency fits the SLO."""
        fixed = self.engine.fixed_steps()
        if fixed is not None:
            return fixed
        factor = self.engine.cost(sampler, 1, guidance) // self.engine.cost(sampler, 1, 1.0)
        budget = self.args.steps_headroom * self.args.slo_p99_ms / 1000.0
        cap = self.control.steps_cap()  # the closed loop's cap from the measured p99 (None: off)
        candidates = [s for s in self.args.steps_candidates if cap is None or s <= cap] or \
            [min(self.args.steps_candidates)]
        return self.latency.choose_steps(sampler, rows * factor, candidates,
                                         budget, self.args.batch_wait_timeout_s, self.backlog_s())

    def backlog_s(self) -> float:
        return sum(self.latency.predict(s, k, rows) for (s, k, _), rows in self.pending.items() if rows > 0)

    def shed(self) -> None:
        """Raise Overloaded (429, reason `slo`) when the replica already holds as many requests as
        the closed loop's admission limit allows: cheap, before the body is parsed."""
        if not self.control.admits(self.inflight_requests):
            self._reject("slo", max(self.args.retry_after_s, self.backlog_s()))

    def admit(self, job: Job) -> None:
        """Count the job in, or raise Overloaded when this replica is past its limits."""
        a = self.args
        if self.inflight_rows and self.inflight_rows + job.rows > a.max_inflight_rows:
            self._reject("rows", max(1.0, self.backlog_s()))
        backlog = self.backlog_s()
        if backlog > 0 and backlog + self.latency.predict(job.sampler, job.steps, job.rows) > a.backlog_limit_s:
            self._reject("backlog", backlog)
        key = (job.sampler, job.steps, job.net_factor)
        self.pending[key] = self.pending.get(key, 0) + job.rows * key[2]
        self.inflight_rows += job.rows
        self.inflight_requests += 1
        self.metrics.set_inflight(self.inflight_requests)

    def _reject(self, reason: str, retry_after_s: float):
        self.tracker.rejected_total += 1
        self.metrics.reject(reason)
        raise Overloaded(reason, retry_after_s)

    def release(self, job: Job) -> None:
        """Stop counting an admitted job (once, whoever calls first)."""
        if job.released:
            return
        job.released = True
        key = (job.sampler, job.steps, job.net_factor)
        self.pending[key] = self.pending.get(key, 0) - job.rows * key[2]
        if self.pending[key] <= 0:
            del self.pending[key]
        self.inflight_rows -= job.rows
        self.inflight_requests -= 1
        self.metrics.set_inflight(self.inflight_requests)

    # -- execution (runs in a worker thread) ------------------------------------------------
    def run(self, jobs: list[Job]) -> tuple[list[bytes | BaseException], list[BatchStats]]:
        """Sample and encode every job of one @serve.batch call; an error fails only its job."""
        tables, stats = run_jobs(self.engine, jobs, self.args.max_batch_cost)
        out: list[bytes | BaseException] = []
        for job, table in zip(jobs, tables):
            try:
                out.append(table if isinstance(table, BaseException)
                           else encode(table, job.fmt, self.meta(job), self.image_column()))
            except Exception as e:  # noqa: BLE001 - reported as that request's 500
                out.append(e)
        return out, stats

    def observe_batches(self, stats: list[BatchStats]) -> None:
        for s in stats:
            self.latency.observe(s.sampler, s.steps, s.net_rows, s.seconds)
            self.metrics.batch(s.sampler, s.rows)

    def record(self, job: Job, latency_ms: float) -> None:
        violated = self.tracker.record(latency_ms)
        self.metrics.request(job.sampler, job.steps, job.rows, job.nfe, latency_ms, violated)
        now = time.monotonic()
        decisions = self.control.record(latency_ms, now)
        for d in decisions:
            self.metrics.control(d.what)
        # the controller's state changes only at its decisions (at most one per interval_s): exported
        # then, not with every request (each gauge write costs the request path)
        if decisions or now - self._state_exported >= self.args.control.interval_s:
            self._state_exported = now
            self.metrics.control_state(self.control.steps.steps_cap, self.control.admission.current,
                                       self.control.steps.last_p99_ms)

    # -- responses ---------------------------------------------------------------------------
    def seed_reproducible(self, job: Job) -> bool:
        return job.seeded or not job.stochastic

    def meta(self, job: Job) -> dict[str, Any]:
        return {"sampler": job.sampler, "steps": job.steps, "nfe": job.nfe, "guidance": job.guidance,
                "seed": job.seed if self.seed_reproducible(job) else None, "enforced": job.enforced}

    def headers(self, job: Job) -> dict[str, str]:
        h = {"X-Synth-Sampler": job.sampler, "X-Synth-Steps": str(job.steps), "X-Synth-NFE": str(job.nfe),
             "X-Synth-Guidance": repr(job.guidance), "X-Synth-Rows": str(job.rows),
             "X-Synth-Batch-Requests": str(job.batch_requests)}
        if self.seed_reproducible(job):
            h["X-Synth-Seed"] = str(job.seed)
        return h

    def image_column(self) -> tuple[str, float, float] | None:
        """(column, min, max) of an image model's array column, for PNG responses."""
        e = self.engine
        if getattr(e, "layout", None) != "image" or len(e.array.shape) == 3 and e.array.shape[0] not in (1, 3):
            return None
        return e.array.name, e.array.min, e.array.max

    @staticmethod
    def media_type(fmt: str) -> str:
        return MEDIA_TYPES[fmt]

    def model_info(self) -> dict[str, Any]:
        e, a = self.engine, self.args
        kinds = e.output_kinds()
        conds = []
        mapped = e.constraints.condition_columns(e.cond_columns) if e.constraints is not None else None
        for name in e.cond_columns if mapped is None else mapped:
            col = e.codec.categorical(name) if mapped is None or mapped[name] is None else None
            values = list(col.categories) + list(col.tail_values) if col is not None else mapped[name]
            conds.append({"name": name, "kind": col.kind if col is not None else "categorical",
                          "values": values[:MAX_LISTED_VALUES],
                          "truncated": len(values) > MAX_LISTED_VALUES})
        for name in e.range_columns:  # a value or a range; no values listed (they would be the data's)
            conds.append({"name": name, "kind": e.codec.by_name[name].kind, "values": [], "truncated": False})
        manifest = getattr(e, "manifest", None) or {}
        return {
            "model_id": self.model_id,
            "artifact_uri": self.artifact_uri,
            "artifact_id": manifest.get("artifact_id"),
            "cost": self.cost(),
            "family": getattr(e, "family", "unknown"),
            "schema": [{"name": f.name, "arrow_type": str(f.type), "kind": kinds.get(f.name, "unknown"),
                        "nullable": f.nullable} for f in e.output_schema()],
            "condition_columns": conds,
            "samplers": [{"name": s, "nfe_per_step": e.cost(s, 8, 1.0, conditioned=False) / 8,
                          "stochastic": SAMPLERS[s].stochastic}
                         for s in e.samplers()],
            "defaults": dict(self.defaults),
            "steps_candidates": sorted(a.steps_candidates),
            "slo_p99_ms": a.slo_p99_ms,
            "formats": list(MEDIA_TYPES),
            "limits": {"max_rows": a.max_rows, "max_steps": a.max_steps, "max_guidance": a.max_guidance,
                       "max_body_bytes": a.max_body_bytes, "max_batch_size": a.max_batch_size,
                       "max_batch_cost": a.max_batch_cost},
        }

    def cost(self) -> dict[str, Any]:
        """What one row of this model costs, by its family's generator (`engine.cost`, the definition
        manifests and contracts use): network evaluations per row at the model's default settings."""
        e, d = self.engine, self.defaults
        steps = e.fixed_steps() or d["steps"]
        return {"family": getattr(e, "family", "unknown"), "sampler": d["sampler"], "steps": steps,
                "guidance": d["guidance"], "nfe_per_row": e.cost(d["sampler"], steps, d["guidance"], conditioned=False),
                "fixed_steps": e.fixed_steps() is not None}

    def slo_report(self, window_s: float | None = None) -> dict[str, Any]:
        rep = self.tracker.report(window_s=window_s)
        rep["model_id"] = self.model_id
        rep["backlog_ms"] = 1000.0 * self.backlog_s()
        rep["auto_steps"] = {s: self.choose_steps(s, 1, self.defaults["guidance"]) for s in self.engine.samplers()}
        rep["latency_model"] = self.latency.report()
        rep["replica"] = self.replica
        rep["controller"] = self.control.state()
        return rep


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))

