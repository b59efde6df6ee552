"""The self-contained HTML evaluation report: one file, inline SVG plots, no scripts, nothing
fetched from anywhere.

Sections: summary scores (synth.evaluate), contract verdicts, real vs synthetic marginals of
every tabular column, image grids or series windows with autocorrelation for array columns,
association heatmaps (real, synthetic, |difference|), and the manifests.
"""
from __future__ import annotations

import html
import json
from typing import Any, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa

from synth.io import storage
from synth.errors import ConfigError
from synth.evaluate.fidelity import KINDS as TABULAR_KINDS, NULL_LABEL, _categorical, _is_numeric, _numeric
from synth.io.manifest import base_manifest

from synth.report import plots
from synth.report.association import association_matrix

__all__ = ["build_report", "render_html"]

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1280px;
     color:#222;padding:0 16px}
h1{font-size:1.5em;margin-bottom:4px} h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
.sub{color:#666;margin-top:0}
table{border-collapse:collapse;margin:8px 0;font-size:0.92em}
td,th{border:1px solid #ddd;padding:4px 10px;text-align:left} td.num{text-align:right;font-variant-numeric:tabular-nums}
th{background:#f5f5f5}
.pass{color:#0a7a2f;font-weight:600} .fail{color:#b00020;font-weight:600}
.badge{display:inline-block;padding:2px 10px;border-radius:10px;color:#fff;font-weight:600}
.badge.pass{background:#0a7a2f;color:#fff} .badge.fail{background:#b00020;color:#fff}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(380px,1fr));gap:12px}
figure{margin:0;border:1px solid #eee;padding:6px;background:#fff}
figure svg{width:100%;height:auto} figcaption{font-size:0.85em;color:#444}
.heatmaps{display:grid;grid-template-columns:repeat(auto-fit,minmax(360px,1fr));gap:12px}
pre{background:#f7f7f7;padding:8px;overflow:auto;font-size:0.8em;max-height:480px}
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        if not np.isfinite(v):
            return "inf" if v > 0 else "n/a"
        return f"{v:.4g}"
    return str(v)


def _marginals(real: pd.DataFrame, syn: pd.DataFrame, kinds: Mapping[str, str], scores: Mapping[str, dict]) -> str:
    figs = []
    for col, kind in kinds.items():
        score = (scores.get(col) or {})
        caption = f"{_e(col)} ({_e(kind)})"
        if score.get("score") is not None:
            caption += f" &middot; {_e(score.get('metric'))} {score['score']:.3f}"
        nr, ns = real[col].isna().mean() if len(real) else 0.0, syn[col].isna().mean() if len(syn) else 0.0
        if nr or ns:
            caption += f" &middot; nulls real {nr:.1%}, synthetic {ns:.1%}"
        if _is_numeric(kind):
            rv, sv = _numeric(real[col], kind), _numeric(syn[col], kind)
            if kind == "datetime":  # epoch ns -> days, readable axis
                rv, sv = rv / 86_400e9, sv / 86_400e9
            svg = plots.numeric_marginal(rv, sv, col + (" (days since 1970-01-01)" if kind == "datetime" else ""))
            cls = "numeric"
        else:
            rc, sc = ({("(null)" if k == NULL_LABEL else k): v for k, v in
                       _categorical(f[col]).astype(str).value_counts().to_dict().items()} for f in (real, syn))
            svg = plots.categorical_marginal(rc, sc, col)
            cls = "categorical"
        figs.append(f'<figure class="plot marginal {cls}" data-column="{_e(col)}">{svg}'
                    f"<figcaption>{caption}</figcaption></figure>")
    return '<div class="grid">' + "\n".join(figs) + "</div>"


def _arrays(real: pa.Table, syn: pa.Table, kinds: Mapping[str, str], scores: Mapping[str, dict]) -> str:
    """Per array column: a real/synthetic image grid, or series windows with their autocorrelation."""
    from synth.evaluate.arrays import acf
    from synth.table.columns.array import flatten

    figs = []
    for col in (c for c, k in kinds.items() if k == "array"):
        r, shape = flatten(col, real.column(col))
        s, _ = flatten(col, syn.column(col), shape)
        m = scores.get(col) or {}
        if len(shape) == 1:
            lags = max(1, min(48, shape[0] // 2))
            svg = plots.series_panel(r, s, acf(r, lags), acf(s, lags), col)
            caption = f"{_e(col)} (series, length {shape[0]}) &middot; ACF MAE {_fmt(m.get('acf_mae'))}, " \
                      f"log-spectral distance {_fmt(m.get('log_spectral_distance'))} dB"
            cls = "series"
        else:
            svg = plots.image_grid(r.reshape(-1, *shape), s.reshape(-1, *shape), col)
            caption = f"{_e(col)} (image {'&times;'.join(map(str, shape))}) &middot; KID {_fmt(m.get('kid'))}, " \
                      f"precision {_fmt(m.get('precision'))}, recall {_fmt(m.get('recall'))}"
            if "label_accuracy" in m:
                caption += f", {_e(m['label'])} accuracy {_fmt(m['label_accuracy'])}"
            cls = "image"
        figs.append(f'<figure class="plot array {cls}" data-column="{_e(col)}">{svg}'
                    f"<figcaption>{caption}</figcaption></figure>")
    return "\n".join(figs)


def _heatmaps(real: pd.DataFrame, syn: pd.DataFrame, kinds: Mapping[str, str]) -> str:
    cols = list(kinds)
    ar, as_ = association_matrix(real, kinds), association_matrix(syn, kinds)
    diff = np.abs(ar - as_)
    vmax = float(max(0.2, np.nanmax(diff))) if diff.size else 0.2
    parts = [("real", plots.heatmap(ar, cols, "real", vmin=-1, vmax=1, cmap="RdBu_r")),
             ("synthetic", plots.heatmap(as_, cols, "synthetic", vmin=-1, vmax=1, cmap="RdBu_r")),
             ("difference", plots.heatmap(diff, cols, "|real - synthetic|", vmin=0, vmax=vmax, cmap="Reds"))]
    iu = np.triu_indices(len(cols), k=1)
    mean_diff = float(np.nanmean(diff[iu])) if len(iu[0]) else 0.0
    figs = "\n".join(f'<figure class="plot heatmap" data-matrix="{name}">{svg}</figure>' for name, svg in parts)
    return (f"<p>Pearson correlation between numeric columns, Cram&eacute;r's V between categorical columns, "
            f"correlation ratio &eta; between a numeric and a categorical column. Mean absolute difference over "
            f"{len(iu[0])} pairs: <b>{mean_diff:.4f}</b>.</p><div class=\"heatmaps\">{figs}</div>")


def _summary(evaluation: Mapping[str, Any]) -> str:
    from synth.evaluate.suite import summary_table

    rows = "".join(f"<tr><td>{_e(k)}</td><td class=\"num\">{_e(v)}</td></tr>" for k, v in summary_table(evaluation))
    n = evaluation.get("rows") or evaluation.get("n_rows") or {}
    note = ", ".join(f"{k} {v:,}" for k, v in n.items()) if n else ""
    return (f"<table id=\"summary\"><tr><th>metric</th><th>value</th></tr>{rows}</table>"
            f"<p class=\"sub\">Rows scored: {_e(note)}. Fidelity and detection compare the synthetic rows with "
            "the training rows; ML efficacy and the DCR holdout use the held-out test rows (synth.evaluate).</p>")


def _contract(result: Mapping[str, Any] | None) -> str:
    if result is None:
        return ("<p id=\"contract\">No contract given (<code>synth report ... --contract contracts/NAME.yaml</code> "
                "adds the release gate's verdicts).</p>")
    ok = result["passed"]
    rows = []
    for v in result["verdicts"]:
        value = "not measured" if v["value"] is None else _fmt(v["value"])
        state = '<span class="pass">ok</span>' if v["passed"] else '<span class="fail">VIOLATED</span>'
        rows.append(f"<tr><td>{_e(v['threshold'])}</td><td>{_e(v['metric'])}</td><td class=\"num\">{_e(value)}</td>"
                    f"<td>{_e(v['op'])} {_e(_fmt(v['limit']))}</td><td>{state}</td></tr>")
    gen = result.get("generation") or {}
    gen_note = (f"Generated with {_e(gen.get('sampler'))}, {_e(gen.get('steps'))} steps (NFE {_e(gen.get('nfe'))}), "
                f"guidance {_e(gen.get('guidance'))} &mdash; from the {_e(gen.get('source'))}.") if gen else ""
    return (f"<p id=\"contract\">Contract <b>{_e(result['name'])}</b> ({_e(result['source'])}): "
            f"<span class=\"badge {'pass' if ok else 'fail'}\">{'PASSED' if ok else 'VIOLATED'}</span></p>"
            f"<table id=\"verdicts\"><tr><th>threshold</th><th>metric</th><th>value</th><th>required</th>"
            f"<th>verdict</th></tr>{''.join(rows)}</table><p class=\"sub\">{gen_note}</p>")


def _manifests(manifests: Mapping[str, Any]) -> str:
    out = []
    for name, m in manifests.items():
        if m is None:
            continue
        text = json.dumps(m, indent=1, sort_keys=True, default=str)
        out.append(f"<details open><summary>{_e(name)}</summary><pre>{_e(text)}</pre></details>")
    return "\n".join(out)


def render_html(*, title: str, subtitle: str, evaluation: Mapping[str, Any], contract: Mapping[str, Any] | None,
                real: pd.DataFrame, synthetic: pd.DataFrame, kinds: Mapping[str, str],
                manifests: Mapping[str, Any], arrays: str = "") -> str:
    """`kinds` are the tabular columns; `arrays` the rendered array-column section (`_arrays`)."""
    scores = (evaluation.get("column_shapes") or {}).get("columns") or {}
    array_section = f"<h2>Array columns: real vs synthetic</h2><section id=\"arrays\">{arrays}</section>" if arrays else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title><style>{CSS}</style></head>
<body>
<h1>{_e(title)}</h1><p class="sub">{subtitle}</p>
<h2>Summary scores</h2>{_summary(evaluation)}
<h2>Contract</h2>{_contract(contract)}
<h2>Marginals: real vs synthetic</h2>
<p class="sub">Real: {len(real):,} held-out test rows; synthetic: {len(synthetic):,} rows. Histograms share bins
(0.5&ndash;99.5th percentiles, outliers in the end bins); bar charts show the {plots.MAX_BARS} most frequent real
categories.</p>
<section id="marginals">{_marginals(real, synthetic, kinds, scores)}</section>
{array_section}
<h2>Associations</h2><section id="correlations">{_heatmaps(real, synthetic, kinds) if len(kinds) > 1 else
    "<p>Fewer than two tabular columns: no pairs to compare.</p>"}</section>
<h2>Manifest</h2><section id="manifest">{_manifests(manifests)}</section>
</body></html>
"""


def build_report(synthetic: pa.Table, manifest: dict, *, output: str, evaluation: dict | None = None,
                 contract=None, data_uri: str | None = None, target: str | None = None, seed: int = 0,
                 max_rows: int = 10_000, title: str | None = None,
                 extra_manifests: Mapping[str, Any] | None = None) -> str:
    """Write the HTML report for `synthetic` (rows from the model whose artifact `manifest` is
    given) to `output` (local path or URI, written atomically) and return `output`.

    `evaluation` (synth.evaluate.reference.evaluate_against_reference) is computed when not given;
    `contract` is a ContractResult or its dict. Plots compare at most `max_rows` synthetic rows
    with at most `max_rows` held-out test rows of the reference split in the manifest."""
    from synth.io.data import SplitConfig, load_splits
    from synth.evaluate.reference import evaluate_against_reference

    kinds = manifest["columns"]
    if evaluation is None:
        evaluation = evaluate_against_reference(synthetic, manifest, data_uri=data_uri, target=target, seed=seed,
                                                max_rows=max_rows)
    if manifest.get("split") is None:  # a model fitted without rows records no split: use --data, split by default
        if data_uri is None:
            raise ConfigError("this model records no reference split; give the reference data to compare with (--data)")
        _, _, test = load_splits(data_uri, SplitConfig())
    else:
        split = SplitConfig(**{k: manifest["split"][k] for k in ("train", "val", "test", "seed")})
        _, _, test = load_splits(data_uri or manifest["input"]["uri"], split)
    arrays = _arrays(test.slice(0, 200), synthetic.slice(0, 200), kinds, evaluation.get("arrays") or {})
    kinds = {c: k for c, k in kinds.items() if k in TABULAR_KINDS}  # not arrays, not identifiers
    cols = list(kinds)
    real = test.select(cols).to_pandas()
    syn = synthetic.select(cols).to_pandas()
    if len(real) > max_rows:
        real = real.sample(max_rows, random_state=seed)
    if len(syn) > max_rows:
        syn = syn.sample(max_rows, random_state=seed)
    verdicts = contract.to_dict() if hasattr(contract, "to_dict") else contract
    meta = base_manifest("report")
    subtitle = (f"Model artifact <code>{_e(manifest.get('artifact_id'))}</code> ({_e(manifest.get('family'))}) "
                f"trained on <code>{_e((manifest.get('input') or {}).get('uri', 'n/a'))}</code> &middot; report created "
                f"{_e(meta['created_at'])}")
    manifests = {"model artifact manifest": {k: v for k, v in manifest.items() if k != "history"},
                 **(extra_manifests or {}), "report": meta}
    doc = render_html(title=title or f"synth evaluation report: {manifest.get('run', 'run')}", subtitle=subtitle,
                      evaluation=evaluation, contract=verdicts, real=real, synthetic=syn, kinds=kinds,
                      manifests=manifests, arrays=arrays)
    storage.write_bytes(output, doc.encode())
    return output
