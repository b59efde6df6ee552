"""`synth report`: a self-contained HTML evaluation report for a run or a synthetic table.

    synth report runs/quickstart                                   # a run folder: model/ + synthetic/
    synth report synth.parquet --artifact runs/adult/model --contract contracts/adult.yaml
"""
from __future__ import annotations

from dataclasses import dataclass

from synth.io import storage
from synth.errors import ConfigError

from .html import build_report, render_html

__all__ = ["ReportResult", "build_report", "render_html", "report_for", "resolve_inputs"]


@dataclass
class ReportResult:
    output: str
    synthetic: str
    artifact: str
    evaluation: dict
    contract: object | None  # synth.evaluate.contract.ContractResult


def resolve_inputs(path: str, artifact: str | None, output: str | None) -> tuple[str, str, str]:
    """(synthetic, artifact, output) for a run folder (model/ and synthetic/ inside) or for a
    synthetic Parquet file/folder given with its artifact."""
    from synth.io.artifact import MANIFEST

    if not storage.exists(path):
        raise ConfigError(f"{path!r} does not exist; give a run folder (with model/ and synthetic/) or a "
                          "synthetic Parquet file or folder with --artifact")
    run_model = storage.join(path, "model")
    if storage.is_dir(path) and storage.exists(storage.join(run_model, MANIFEST)):
        synthetic = storage.join(path, "synthetic")
        if not storage.exists(synthetic):
            raise ConfigError(f"run folder {path!r} has no synthetic/ folder; sample rows first "
                              f"(synth sample {run_model} --rows 10000 -o {path}/synthetic/part-00000.parquet) "
                              "or pass a synthetic file with --artifact")
        return synthetic, artifact or run_model, output or storage.join(path, "report.html")
    if artifact is None:
        raise ConfigError(f"{path!r} is not a run folder (no model/manifest.json inside); pass the model it was "
                          "sampled from with --artifact")
    base = path.rstrip("/")
    default = (base[: -len(".parquet")] if base.endswith(".parquet") else base) + ".report.html"
    return path, artifact, output or default


def report_for(path: str, *, artifact: str | None = None, contract: str | None = None, output: str | None = None,
               data_uri: str | None = None, target: str | None = None, sampler: str | None = None,
               steps: int | None = None, guidance: float | None = None, max_rows: int = 10_000,
               seed: int = 0) -> ReportResult:
    """Evaluate (and check the contract, when given) and write the HTML report."""
    import json

    from synth.io.data import open_dataset
    from synth.families import load_engine
    from synth.evaluate.contract import evaluate_contract, generation_info, load_contract
    from synth.evaluate.reference import evaluate_against_reference

    synthetic, artifact, output = resolve_inputs(path, artifact, output)
    if not output.endswith((".html", ".htm")):
        raise ConfigError(f"report output {output!r} must end in .html")
    gate = load_contract(contract) if contract else None
    engine = load_engine(artifact)
    gen = generation_info(synthetic, engine, sampler=sampler, steps=steps, guidance=guidance)
    table = open_dataset(synthetic).to_table()
    verdict = None
    if gate is not None:
        if target:
            gate.evaluation.target = target
        ev, verdict = evaluate_contract(gate, table, engine, gen, data_uri=data_uri, source=contract)
    else:
        ev = evaluate_against_reference(table, engine.manifest, data_uri=data_uri, target=target, seed=seed,
                                        max_rows=max_rows, engine=engine)
    extra = {"generation": gen.__dict__}
    syn_manifest = storage.join(synthetic, "_manifest.json")
    if storage.exists(syn_manifest):
        extra["synthesis manifest"] = json.loads(storage.read_bytes(syn_manifest))
    build_report(table, engine.manifest, output=output, evaluation=ev, contract=verdict, data_uri=data_uri,
                 seed=seed, max_rows=max_rows, extra_manifests=extra)
    return ReportResult(output, synthetic, artifact, ev, verdict)
