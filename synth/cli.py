"""The `synth` command line: fit, distill, sample, synthesize, evaluate, inspect, sign, verify, quickstart."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from synth.errors import ConfigError, SynthError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Learn a reference table's distribution and generate synthetic data from it.")
console = Console(stderr=True)


def _fail(e: Exception) -> None:
    console.print(f"[bold red]error:[/] {e}", markup=True, highlight=False, soft_wrap=True)  # one line
    raise typer.Exit(2)


class _LazyProgress:
    """A context manager that shows the bar from the first reported step on: a fit refused before
    training (no rows, an unusable column) prints its error alone, not a "training 0/N steps" bar."""

    def __init__(self, progress):
        self.progress, self.started = progress, False

    def start(self) -> None:
        if not self.started:
            self.progress.start()
            self.started = True

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if self.started:
            self.progress.stop()


def _progress_printer(total_steps: int):
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("[bold]training"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
                        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console, transient=False)
    task = progress.add_task("train", total=total_steps, info="")
    lazy = _LazyProgress(progress)

    def report(m: dict, _optimizer=None) -> None:
        lazy.start()
        progress.update(task, completed=m["step"],
                        info=f"loss {m['loss']:.4f} val {m['val_loss']:.4f} {m['samples_per_s']:.0f} rows/s")
    return lazy, report


def _load_config(config: Optional[str], overrides: dict):
    from synth.config import RunConfig
    from synth.errors import with_overrides

    return RunConfig.from_yaml(config, overrides) if config else RunConfig.parse(with_overrides({}, overrides))


def run_fit(cfg, quiet: bool = False):
    from synth.train.fit import fit

    progress, report = _progress_printer(cfg.train.steps)
    with progress:
        result = fit(cfg, report=None if quiet else report)
    return result


@app.command("fit")
def fit_cmd(config: Optional[str] = typer.Option(None, "--config", "-c", help="run config YAML (local, s3://, gs://)"),
            data: Optional[str] = typer.Option(None, help="reference Parquet (overrides data.uri)"),
            output: Optional[str] = typer.Option(None, help="run folder (overrides output)"),
            steps: Optional[int] = typer.Option(None, help="training steps (overrides train.steps)"),
            workers: Optional[int] = typer.Option(None, help="Ray Train workers (0 = in this process)"),
            epsilon: Optional[float] = typer.Option(None, help="train privately with this total epsilon (overrides "
                                                               "privacy.epsilon; needs privacy.schema, docs/privacy.md)")):
    """Train a model; writes the artifact to OUTPUT/model."""
    try:
        cfg = _load_config(config, {"data.uri": data, "output": output, "train.steps": steps,
                                    "scaling.num_workers": workers, "privacy.epsilon": epsilon,
                                    "privacy.enabled": True if epsilon is not None else None})
        result = run_fit(cfg)
    except SynthError as e:
        _fail(e)
    console.print(f"model artifact: [bold]{result.artifact_uri}[/] (id {result.artifact_id}), "
                  f"val loss {result.metrics.get('val_loss', float('nan')):.4f}"
                  + (f", training epsilon {result.metrics['epsilon']:.3f} (total in the manifest's privacy block)"
                     if "epsilon" in result.metrics else ""), soft_wrap=True)
    _report_check(result.check)


def _report_check(check: dict) -> None:
    """The held-out fit check, loudly when the fit failed (exit status 3) or is weak."""
    from synth.evaluate.fit_check import FAILED_EXIT, summary

    style = {"failed": "bold red", "weak": "bold yellow"}.get(check.get("verdict"), "")
    console.print(f"[{style}]{summary(check)}[/]" if style else summary(check), highlight=False, soft_wrap=True)
    if check.get("verdict") == "failed" and check.get("on_failure") == "refuse":
        raise typer.Exit(FAILED_EXIT)


@app.command("distill")
def distill_cmd(teacher: str = typer.Argument(..., help="teacher model artifact URI"),
                steps: Optional[int] = typer.Option(None, "--steps", help="student NFE: 1, 2, 4 (default 4)"),
                output: Optional[str] = typer.Option(None, "--output", "-o", help="student artifact (default "
                                                     "TEACHER-distilled-STEPS)"),
                config: Optional[str] = typer.Option(None, "--config", "-c", help="distill config YAML (local, s3://, "
                                                                                  "gs://)"),
                train_steps: Optional[int] = typer.Option(None, help="student training steps (train.steps)"),
                trajectories: Optional[int] = typer.Option(None, help="teacher trajectories to distil from"),
                workers: Optional[int] = typer.Option(None, help="Ray Train workers (0 = in this process)")):
    """Distil a model into a student that samples in STEPS network evaluations, guidance included."""
    try:
        from synth.io import storage
        from synth.distill import DistillConfig, distill
        from synth.errors import with_overrides

        raw = storage.read_yaml(config) if config is not None else {}
        raw["teacher"] = teacher
        k = steps or raw.get("steps", 4)
        raw["steps"] = k
        raw["output"] = output or raw.get("output") or f"{teacher.rstrip('/')}-distilled-{k}"
        with_overrides(raw, {"train.steps": train_steps, "trajectories": trajectories, "scaling.num_workers": workers})
        cfg = DistillConfig.parse(raw, source=config or "distill options")
        progress, report = _progress_printer(cfg.train.steps)
        with progress:
            result = distill(cfg, report=report)
    except SynthError as e:
        _fail(e)
    console.print(f"student artifact: [bold]{result.artifact_uri}[/] (id {result.artifact_id}), "
                  f"{cfg.steps} NFE with sampler 'distilled'")
    ev = result.evaluation
    if ev:
        if "evaluation" not in result.manifest:
            console.print("[yellow]evaluation on the teacher's real rows: shown here, not stored in the private "
                          "student's manifest[/]")
        table = Table("", "sampler", "NFE", "rows/s", "shapes", "pair trends", "C2ST AUC")
        for name, r in ev.items():
            table.add_row(name, r["sampler"], str(r["nfe"]), f"{r['rows_per_s']:,.0f}", f"{r['column_shapes']:.4f}",
                          f"{r['pair_trends']:.4f}", f"{r['c2st_auc']:.3f}")
        Console().print(table)


def _parse_conditions(items: list[str]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"condition {item!r} must look like column=value")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _coerce_conditions(engine, conditions: dict) -> dict:
    """CLI values arrive as strings: a category is converted to its column's value type; a numeric
    condition (a value, min..max, min.., ..max, ISO datetimes) is parsed by the engine's codec."""
    out = {}
    cons = engine.constraints
    for name, value in conditions.items():
        if cons is not None and name in cons.owner:  # a constraint's column: it maps (or refuses) the condition
            values = cons.condition_values(name)
            out[name] = value if values is None else {str(c): c for c in values}.get(value, value)
            continue
        if name in engine.range_columns:
            out[name] = value
            continue
        if name not in engine.cond_columns:
            engine.refuse_condition(name)
        col = engine.codec.categorical(name)
        known = {str(c): c for c in col.categories + col.tail_values}
        if value not in known:
            raise ConfigError(col.unseen_message(value))
        out[name] = known[value]
    return out


def _parse_rebalance(engine, items: list[str]) -> dict:
    """--rebalance column=value:share (repeatable, one column) -> {column: {value: share}}."""
    out: dict = {}
    for item in items:
        column, sep, rest = item.partition("=")
        value, colon, share = rest.rpartition(":")
        if not sep or not colon or not column.strip():
            raise ConfigError(f"--rebalance {item!r} must look like column=value:share, e.g. income='>50K':0.5")
        try:
            fraction = float(share)
        except ValueError:
            raise ConfigError(f"--rebalance {item!r}: the share {share!r} is not a number in [0, 1]") from None
        column = column.strip()
        (coerced,) = _coerce_conditions(engine, {column: value.strip()}).values()
        out.setdefault(column, {})[coerced] = fraction
    if len(out) > 1:
        raise ConfigError(f"--rebalance takes one column, got {sorted(out)}; condition on the others or rebalance "
                          "them in another run")
    return out


@app.command("sample")
def sample_cmd(artifact: str = typer.Argument(..., help="model artifact URI"),
               rows: int = typer.Option(..., "--rows", "-n", help="number of rows"),
               output: str = typer.Option(..., "--output", "-o", help="Parquet file to write"),
               condition: list[str] = typer.Option([], "--condition", help="column=value, or for a numeric or datetime "
                                                   "column column=min..max (either end may be left out; repeatable)"),
               rebalance: list[str] = typer.Option([], "--rebalance", help="column=value:share, e.g. "
                                                   "income='>50K':0.5: that share of the rows have the value, the "
                                                   "column's other values split the rest (repeatable, one column)"),
               sampler: Optional[str] = typer.Option(None, help="ddpm, ddim, dpmpp_2m, unipc, euler, heun"),
               steps: Optional[int] = typer.Option(None, help="sampler steps"),
               guidance: Optional[float] = typer.Option(None, help="classifier-free guidance scale"),
               seed: int = typer.Option(0, help="seed (same seed, same rows)")):
    """Sample rows from an artifact into one Parquet file that records how they were made (`synth
    replay FILE` makes them again and checks them; use `synth synthesize` for sharded bulk output)."""
    try:
        from synth.families import load_engine
        from synth.pipelines.sample import sample_to_file

        if rows < 1:
            raise ConfigError(f"--rows must be a positive integer, got {rows}")
        engine = load_engine(artifact)
        conds = _coerce_conditions(engine, _parse_conditions(condition))
        table, dt = sample_to_file(engine, artifact, rows, output, conds, sampler=sampler, steps=steps,
                                   guidance=guidance, seed=seed, rebalance=_parse_rebalance(engine, rebalance))
    except SynthError as e:
        _fail(e)
    console.print(f"wrote {table.num_rows} rows to [bold]{output}[/] in {dt:.2f} s ({table.num_rows / dt:,.0f} rows/s)")


@app.command("impute")
def impute_cmd(artifact: str = typer.Argument(..., help="model artifact URI"),
               data: str = typer.Argument(..., help="Parquet file (local, s3://, gs://) with the model's columns"),
               output: str = typer.Option(..., "--output", "-o", help="Parquet file to write"),
               seed: int = typer.Option(0, help="seed (same seed, same draws)")):
    """Fill the null cells of real rows with draws consistent with each row's known cells; known
    cells are written back unchanged (docs/conditions.md)."""
    try:
        from synth.families import load_engine
        from synth.pipelines.sample import impute_file

        t0 = time.perf_counter()
        filled, cells = impute_file(load_engine(artifact), data, output, seed)
    except SynthError as e:
        _fail(e)
    console.print(f"filled {cells} null cells of {filled.num_rows} rows into [bold]{output}[/] in "
                  f"{time.perf_counter() - t0:.2f} s")


@app.command("synthesize")
def synthesize_cmd(artifact: str = typer.Argument(..., help="model artifact URI"),
                   rows: int = typer.Option(..., "--rows", "-n", help="total rows (exact)"),
                   output: str = typer.Option(..., "--output", "-o", help="shard folder (local, s3://, gs://)"),
                   shard_rows: int = typer.Option(100_000, help="rows per Parquet shard"),
                   actors: int = typer.Option(2, help="sampler actors"),
                   condition: list[str] = typer.Option([], "--condition", help="column=value (numeric: or min..max) for "
                                                       "every row"),
                   sampler: Optional[str] = typer.Option(None), steps: Optional[int] = typer.Option(None),
                   guidance: Optional[float] = typer.Option(None), seed: int = typer.Option(0)):
    """Bulk synthesis on Ray Data: deterministic, resumable Parquet shards and a run manifest."""
    try:
        from rich.progress import Progress

        from synth.families import load_engine
        from synth.pipelines.synthesize import SynthesizeConfig, synthesize

        if rows < 1:
            raise ConfigError(f"--rows must be a positive integer, got {rows}")
        fixed = _coerce_conditions(load_engine(artifact), _parse_conditions(condition)) if condition else {}
        cfg = SynthesizeConfig(artifact=artifact, rows=rows, output=output, shard_rows=shard_rows, actors=actors,
                               sampler=sampler, steps=steps, guidance=guidance, seed=seed,
                               conditions={"fixed": fixed})
        with Progress(console=console) as progress:
            task = progress.add_task("synthesizing", total=rows)
            m = synthesize(cfg, progress=lambda done, total: progress.update(task, completed=done))
    except SynthError as e:
        _fail(e)
    rate = f"{m['rows_per_s']:,.0f} rows/s" if m["rows_per_s"] else "all shards already committed"
    console.print(f"wrote {m['rows']} rows in {len(m['shards'])} shards to [bold]{output}[/] ({rate}); "
                  f"manifest {output}/_manifest.json")


@app.command("replay")
def replay_cmd(made: str = typer.Argument(..., help="a `synth sample` Parquet file, or a `synth synthesize` output "
                                                  "folder or its _manifest.json"),
               output: Optional[str] = typer.Option(None, "--output", "-o", help="keep the replayed rows here "
                                                    "(default: not kept)")):
    """Make rows again from their record and check them: a `synth sample` file against its recorded
    content digest, a bulk synthesis shard by shard against the recorded sha256 (exit 0: identical,
    1: something differs)."""
    try:
        from synth.io import storage

        if made.endswith(".parquet") and not storage.is_dir(made):
            from synth.pipelines.sample import replay_sample

            r = replay_sample(made, output)
            differs = None if r["matched"] else f"the {r['rows']} replayed rows are not the recorded ones"
            done = f"replayed {r['rows']} rows: their content digest matches the recorded one"
        else:
            from synth.pipelines.synthesize import replay

            r = replay(made, output)
            differs = (f"{len(r['mismatched'])} of {r['shards']} shards have other bytes than recorded: "
                       f"{r['mismatched'][:10]}") if r["mismatched"] else None
            done = f"replayed {r['shards']} shards: every shard's sha256 matches the manifest"
    except SynthError as e:
        _fail(e)
    note = (f" (library versions differ from the run's: {r['versions_differ']})" if r["versions_differ"] else "")
    if differs:
        console.print(f"[bold red]differs:[/] {differs}{note}", soft_wrap=True)
        raise typer.Exit(1)
    console.print(done + note, soft_wrap=True)


def _print_eval(result: dict) -> None:
    from synth.evaluate.suite import summary_table

    t = Table(title="evaluation (synthetic vs held-out real rows)")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for name, value in summary_table(result):
        t.add_row(name, value)
    console.print(t)


def _print_contract(result) -> None:
    t = Table(title=f"contract {result.name} ({result.source}): {'PASSED' if result.passed else 'VIOLATED'}")
    for col in ("threshold", "value", "required", "verdict"):
        t.add_column(col, justify="right" if col == "value" else "left")
    for v in result.verdicts:
        value = "not measured" if v.value is None else f"{v.value:.4g}"
        t.add_row(v.threshold, value, f"{v.op} {v.limit:g}", "ok" if v.passed else "[bold red]VIOLATED[/]")
    console.print(t)


@app.command("evaluate")
def evaluate_cmd(synthetic: str = typer.Argument(..., help="synthetic Parquet file or folder of shards"),
                 artifact: str = typer.Option(..., "--artifact", "-a", help="the model artifact it came from"),
                 data: Optional[str] = typer.Option(None, help="reference data (default: the one in the manifest)"),
                 target: Optional[str] = typer.Option(None, help="column for ML efficacy (default: the contract's)"),
                 contract: Optional[str] = typer.Option(
                     None, "--contract", help="release contract YAML: exit 1 and name each violated threshold"),
                 sampler: Optional[str] = typer.Option(None, help="sampler the rows were drawn with, when not "
                                                                  "recorded (default: the artifact's)"),
                 steps: Optional[int] = typer.Option(None, help="sampler steps the rows were drawn with"),
                 guidance: Optional[float] = typer.Option(None, help="guidance scale the rows were drawn with"),
                 output: Optional[str] = typer.Option(None, "--output", "-o", help="write the result JSON here")):
    """Score synthetic rows against the reference split recorded in the artifact; with --contract,
    check the release gate (exit 1 when a threshold is violated)."""
    verdict = None
    try:
        from synth.io import storage
        from synth.io.data import open_dataset
        from synth.families import load_engine
        from synth.evaluate.contract import evaluate_contract, generation_info, load_contract
        from synth.evaluate.reference import evaluate_against_reference

        gate = load_contract(contract) if contract else None
        engine = load_engine(artifact)
        gen = generation_info(synthetic, engine, sampler=sampler, steps=steps, guidance=guidance)
        syn = open_dataset(synthetic).to_table()
        if gate is not None:
            if target:
                gate.evaluation.target = target
            result, verdict = evaluate_contract(gate, syn, engine, gen, data_uri=data, source=contract)
            result["contract"] = verdict.to_dict()
        else:
            result = evaluate_against_reference(syn, engine.manifest, data_uri=data, target=target, engine=engine)
        result["generation"] = gen.__dict__
        if output:
            storage.write_bytes(output, json.dumps(result, indent=1).encode())
    except SynthError as e:
        _fail(e)
    _print_eval(result)
    if verdict is not None:
        _print_contract(verdict)
        if not verdict.passed:
            for line in verdict.violations:
                console.print(f"[bold red]threshold violated:[/] {line}", highlight=False)
            raise typer.Exit(1)


@app.command("score")
def score_cmd(artifact: str = typer.Argument(..., help="model artifact URI (a family with a likelihood)"),
              data: str = typer.Argument(..., help="rows to score: Parquet file or folder with the model's columns"),
              output: str = typer.Option(..., "--output", "-o", help="Parquet file to write"),
              scores_only: bool = typer.Option(False, "--scores-only", help="write only the score columns"),
              seed: int = typer.Option(0, help="seed of any estimator draws (same seed, same scores)")):
    """Score every row's log-likelihood under a model (outlier detection): appends log_prob (nats),
    bpd and unseen_values; the least likely rows are the most unusual."""
    try:
        from synth.pipelines.score import score_file

        s = score_file(artifact, data, output, seed=seed, scores_only=scores_only)
    except SynthError as e:
        _fail(e)
    console.print(f"scored {s['rows']} rows: mean {s['nats_per_row']:.3f} nats/row ({s['bpd']:.4f} bpd, "
                  f"{s['estimate'].split(':')[0]}); least likely rows "
                  f"{[r['row'] for r in s['least_likely'][:5]]}; {s['rows_with_unseen_values']} rows with unseen "
                  f"values; wrote [bold]{output}[/]", highlight=False, soft_wrap=True)


@app.command("report")
def report_cmd(path: str = typer.Argument(..., metavar="RUN_OR_SYNTHETIC",
                                         help="run folder (model/ + synthetic/) or synthetic Parquet file/folder"),
               artifact: Optional[str] = typer.Option(None, "--artifact", "-a",
                                                      help="model artifact (default: RUN/model)"),
               contract: Optional[str] = typer.Option(None, "--contract", help="release contract YAML to check"),
               output: Optional[str] = typer.Option(None, "--output", "-o",
                                                    help="HTML file (default: RUN/report.html or SYNTHETIC.report.html)"),
               data: Optional[str] = typer.Option(None, help="reference data (default: the one in the manifest)"),
               target: Optional[str] = typer.Option(None, help="column for ML efficacy (default: the contract's)"),
               sampler: Optional[str] = typer.Option(None, help="sampler the rows were drawn with, when not recorded"),
               steps: Optional[int] = typer.Option(None, help="sampler steps the rows were drawn with"),
               guidance: Optional[float] = typer.Option(None, help="guidance scale the rows were drawn with"),
               rows: int = typer.Option(10_000, help="at most this many rows per side are scored and plotted")):
    """Write a self-contained HTML evaluation report (marginals, association heatmaps, scores,
    contract verdicts, manifest). Exits 1 when a given contract is violated (the report is written)."""
    try:
        from synth.report import report_for

        res = report_for(path, artifact=artifact, contract=contract, output=output, data_uri=data, target=target,
                         sampler=sampler, steps=steps, guidance=guidance, max_rows=rows)
    except SynthError as e:
        _fail(e)
    _print_eval(res.evaluation)
    if res.contract is not None:
        _print_contract(res.contract)
    console.print(f"report: [bold]{res.output}[/]", highlight=False)
    if res.contract is not None and not res.contract.passed:
        raise typer.Exit(1)


@app.command("inspect")
def inspect_cmd(artifact: str = typer.Argument(..., help="model artifact URI")):
    """Show what an artifact holds: columns, settings, training metrics, privacy, versions."""
    try:
        from synth.io.artifact import read_artifact

        art = read_artifact(artifact)
    except SynthError as e:
        _fail(e)
    m = art.manifest
    t = Table(title=f"artifact {artifact} (id {m['artifact_id']}, {m['family']})")
    t.add_column("field")
    t.add_column("value")
    for key in ("run", "created_at", "workers", "seeds", "process", "objective", "sampling", "metrics", "privacy",
                "split", "versions"):
        if key in m:
            t.add_row(key, json.dumps(m[key]))
    t.add_row("input", f"{m['input']['uri']} sha256 {m['input']['sha256'][:16]}...")
    t.add_row("columns", ", ".join(f"{k}:{v}" for k, v in m["columns"].items()))
    Console().print(t)


@app.command("sign")
def sign_cmd(artifact: str = typer.Argument(..., help="model artifact URI"),
             key: Optional[str] = typer.Option(None, "--key", help="Ed25519 private key PEM file "
                                               "(default: $SYNTH_SIGNING_KEY, the PEM text or its path)")):
    """Sign a reviewed artifact (writes ARTIFACT/signature.json): serving and the nightly job with
    require_signature then load it only if it is unchanged since. Make a key with
    `openssl genpkey -algorithm ed25519 -out signing.pem`."""
    try:
        from synth.io.artifact import sign_artifact

        artifact_id, key_id = sign_artifact(artifact, key)
    except SynthError as e:
        _fail(e)
    console.print(f"signed artifact [bold]{artifact}[/] (id {artifact_id}) with key {key_id}", highlight=False,
                  soft_wrap=True)


@app.command("verify")
def verify_cmd(artifact: str = typer.Argument(..., help="model artifact URI"),
               public_key: Optional[str] = typer.Option(None, "--public-key", help="Ed25519 public key PEM file "
                                                        "(default: $SYNTH_PUBLIC_KEY, the PEM text or its path)")):
    """Check that an artifact is intact (every file's hash, the manifest's id) and signed with the
    key whose public half is given (`openssl pkey -in signing.pem -pubout -out signing.pub`)."""
    try:
        from synth.io.artifact import read_artifact

        art = read_artifact(artifact, require_signature=True, public_key=public_key)
    except SynthError as e:
        _fail(e)
    console.print(f"artifact [bold]{artifact}[/] (id {art.artifact_id}) is intact and signed with key "
                  f"{art.signed_by}", highlight=False, soft_wrap=True)


@app.command("quickstart")
def quickstart_cmd(output: str = typer.Option("runs/quickstart", help="run folder"),
                   steps: Optional[int] = typer.Option(None, help="most training steps (default: the family's, with early stopping)"),
                   rows: int = typer.Option(10_000, help="synthetic rows to write and evaluate"),
                   workers: Optional[int] = typer.Option(None, help="Ray Train workers (0 = in process)")):
    """Train on the bundled UCI Adult data, write synthetic Parquet and an evaluation summary."""
    try:
        from synth.io import storage
        from synth.config import RunConfig
        from synth.families import load_engine
        from synth.io.data import open_dataset
        from synth.evaluate.reference import evaluate_against_reference
        from synth.pipelines.synthesize import MANIFEST, PLAN, SynthesizeConfig, synthesize

        if rows < 1:
            raise ConfigError(f"--rows must be a positive integer, got {rows}")
        cfg = RunConfig.parse(_quickstart_defaults(output, steps, workers), source="quickstart")
        t0 = time.perf_counter()
        result = run_fit(cfg)
        engine = load_engine(result.artifact_uri)
        t1 = time.perf_counter()
        # the rows come from the bulk synthesis path (Ray Data, sampler actor, committed shards) on
        # a local Ray; a rerun replaces the synthetic/ folder of the previous quickstart
        syn_dir = storage.join(output, "synthetic")
        if storage.exists(storage.join(syn_dir, MANIFEST)) or storage.exists(storage.join(syn_dir, PLAN)):
            storage.delete_dir(syn_dir)
        console.print(f"synthesizing {rows} rows with Ray Data on a local Ray (`synth synthesize`'s path) ...")
        m = synthesize(SynthesizeConfig(artifact=result.artifact_uri, output=syn_dir, rows=rows, actors=1,
                                        seed=cfg.evaluate.seed))
        table = open_dataset(syn_dir).to_table()
        sample_s = time.perf_counter() - t1
        syn_uri = storage.join(syn_dir, m["shards"][0]["file"]) if len(m["shards"]) == 1 else syn_dir
        ev = evaluate_against_reference(table, engine.manifest, target=cfg.data.target, engine=engine)
        ev["timing"] = {"fit_s": t1 - t0, "sample_s": sample_s, "rows": rows}
        eval_uri = storage.join(output, "evaluation.json")
        storage.write_bytes(eval_uri, json.dumps(ev, indent=1).encode())
    except SynthError as e:
        _fail(e)
    _print_eval(ev)
    console.print(f"model:      [bold]{result.artifact_uri}[/]\nsynthetic:  [bold]{syn_uri}[/] "
                  f"({rows} rows, bulk synthesis on Ray Data in {sample_s:.1f} s)\nevaluation: [bold]{eval_uri}[/]\n"
                  f"fit took {t1 - t0:.0f} s. Next: synth inspect {result.artifact_uri}")
    _report_check(result.check)


def _quickstart_defaults(output: str, steps: Optional[int], workers: Optional[int]) -> dict:
    """The RunConfig defaults are the Adult quickstart; only the target and overrides are added."""
    raw: dict = {"output": output, "data": {"uri": "bundled:adult", "target": "income"}}
    if steps is not None:
        raw["train"] = {"steps": steps}
    if workers is not None:
        raw["scaling"] = {"num_workers": workers}
    return raw


# -- engine families: statistical fingerprint (issue 9) -------------------------------------------
@app.command("fingerprint")
def fingerprint_cmd(data: str = typer.Argument(..., help="reference Parquet file or folder (or bundled:NAME)"),
                    output: str = typer.Option(..., "--output", "-o", help="fingerprint JSON to write"),
                    quantiles: int = typer.Option(201, help="quantile points per numeric column (p = 0..1)"),
                    override: list[str] = typer.Option([], "--kind", help="column=kind to pin a column's kind"),
                    ignore: list[str] = typer.Option([], "--ignore", help="column to leave out (repeatable)"),
                    seed: int = typer.Option(0, help="seed of the normal-score jitter"),
                    epsilon: Optional[float] = typer.Option(None, help="release it under (epsilon, delta)-DP "
                                                                        "(needs --schema)"),
                    delta: float = typer.Option(1e-5, help="delta of a private fingerprint"),
                    schema: Optional[str] = typer.Option(None, help="declared schema (YAML/JSON, or a run config's "
                                                                    "privacy.schema) of a private fingerprint"),
                    bins: int = typer.Option(32, help="histogram cells per numeric column unless declared "
                                                      "(private fingerprint)")):
    """Summarise a table as a statistical fingerprint (no rows): per-column statistics and a
    Gaussian-copula correlation matrix; with --epsilon, noisy ones under differential privacy.
    Fit a model from it with `synth fit-fingerprint`."""
    try:
        from synth.table.fingerprint import build_fingerprint, write_fingerprint
        from synth.table import CodecConfig

        kinds = _parse_conditions(override)
        try:
            codec_cfg = CodecConfig(overrides=kinds, ignore=ignore)
        except ValueError as e:
            raise ConfigError(f"--kind: {e}") from None
        if epsilon is not None:
            from synth.privacy.fingerprint import build_private_fingerprint, read_schema

            if schema is None or kinds:
                raise ConfigError("--epsilon needs --schema (the declared grid; docs/privacy.md) and no --kind")
            fp = build_private_fingerprint(data, read_schema(schema), epsilon, delta, codec_cfg, bins, quantiles)
        else:
            fp = build_fingerprint(data, codec_cfg, quantiles=quantiles, seed=seed)
        write_fingerprint(fp, output)
    except SynthError as e:
        _fail(e)
    dp = f" under ({fp['privacy']['epsilon']:.3g}, {delta:g})-DP" if epsilon is not None else ""
    console.print(f"wrote the fingerprint of {fp['rows']} rows x {len(fp['columns'])} columns{dp} to [bold]{output}[/] "
                  f"(no raw rows); next: synth fit-fingerprint {output} -o MODEL")


@app.command("fit-fingerprint")
def fit_fingerprint_cmd(fingerprint: str = typer.Argument(..., help="fingerprint JSON (from `synth fingerprint`)"),
                        output: str = typer.Option(..., "--output", "-o", help="model artifact folder to write"),
                        refuse_invalid: bool = typer.Option(
                            False, "--refuse-invalid/--repair",
                            help="refuse a correlation matrix that is not positive definite instead of repairing "
                                 "it to the nearest valid one")):
    """Fit the `fingerprint` engine from a fingerprint alone; writes an ordinary model artifact
    (`synth sample`, `synth synthesize` and the endpoint use it like any other)."""
    import warnings

    try:
        from synth.train.fit import fit_fingerprint
        from synth.table.fingerprint import FingerprintWarning

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", FingerprintWarning)
            artifact_id, report = fit_fingerprint(fingerprint, output, "refuse" if refuse_invalid else "repair")
        for w in caught:
            if issubclass(w.category, FingerprintWarning):
                console.print(f"[bold yellow]warning:[/] {w.message}", highlight=False)
    except SynthError as e:
        _fail(e)
    console.print(f"model artifact: [bold]{output}[/] (id {artifact_id}, family fingerprint)", soft_wrap=True)


# -- hybrid blending (issue 9) ---------------------------------------------------------------------
@app.command("blend")
def blend_cmd(a: str = typer.Argument(..., help="source A: Parquet file or folder (e.g. synthetic rows)"),
              b: str = typer.Argument(..., help="source B: Parquet of the same schema (e.g. rule-based rows)"),
              output: str = typer.Option(..., "--output", "-o", help="Parquet file to write"),
              mode: str = typer.Option(..., "--mode", help="interpolate | select | ensemble"),
              weight: Optional[float] = typer.Option(None, "--weight", help="share of A in [0, 1] "
                                                     "(interpolate, select)"),
              columns: list[str] = typer.Option([], "--columns", help="columns to blend (interpolate, select) "
                                                "or to take from A (ensemble); comma-separated or repeated"),
              seed: int = typer.Option(0, help="seed of the per-record draws")):
    """Blend two tables of one schema row by row: interpolate (weighted average of numerics,
    categoricals picked per record by weight), select (whole records from A with probability
    WEIGHT) or ensemble (COLUMNS from A, the rest from B)."""
    try:
        from synth.pipelines.blend import blend_files

        cols = [c.strip() for item in columns for c in item.split(",") if c.strip()]
        if mode in ("interpolate", "select") and weight is None:
            raise ConfigError(f"--weight is required for {mode} mode (the share of A, in [0, 1])")
        out = blend_files(a, b, output, mode, weight, cols or None, seed)
    except SynthError as e:
        _fail(e)
    console.print(f"wrote {out.num_rows} blended rows ({mode}) to [bold]{output}[/]")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
