"""Static plots for the HTML report, rendered by matplotlib (Agg) to inline SVG strings.

Text stays as SVG <text> (fonttype "none") so the files are small and need no font files; no
plot refers to anything outside itself.
"""
from __future__ import annotations

import io
import re
from typing import Sequence

import numpy as np

REAL, SYNTH = "#1f77b4", "#ff7f0e"
MAX_BARS = 20  # categories shown per column (most frequent in the real data); the rest are pooled


def _mpl():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "synth", "font.size": 9,
                         "axes.spines.top": False, "axes.spines.right": False})
    return plt


def to_svg(fig) -> str:
    plt = _mpl()
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]  # drop the XML declaration and DOCTYPE (an external DTD address)
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)
    return svg


def numeric_marginal(real: np.ndarray, synth: np.ndarray, title: str, bins: int = 40) -> str:
    """Overlaid density histograms on shared bins spanning the 0.5-99.5th percentiles of both sides
    (values outside are counted in the end bins)."""
    plt = _mpl()
    r, s = real[~np.isnan(real)], synth[~np.isnan(synth)]
    fig, ax = plt.subplots(figsize=(4.6, 2.6))
    pooled = np.concatenate([r, s])
    if pooled.size:
        lo, hi = np.quantile(pooled, [0.005, 0.995])
        if not hi > lo:
            lo, hi = float(pooled.min()) - 0.5, float(pooled.max()) + 0.5
        if np.allclose(pooled, np.round(pooled)):  # integers: bins of whole units, centred on them
            width = max(1.0, np.ceil((np.ceil(hi) - np.floor(lo) + 1) / bins))
            edges = np.arange(np.floor(lo) - 0.5, np.ceil(hi) + width, width)
        else:
            edges = np.linspace(lo, hi, bins + 1)
        for values, color, label in ((r, REAL, "real"), (s, SYNTH, "synthetic")):
            if values.size:
                ax.hist(np.clip(values, edges[0], edges[-1]), bins=edges, density=True, histtype="stepfilled",
                        alpha=0.35, color=color, label=f"{label} (n={values.size:,})")
                ax.hist(np.clip(values, edges[0], edges[-1]), bins=edges, density=True, histtype="step",
                        color=color, linewidth=1.2)
        ax.legend(frameon=False, fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel("density")
    return to_svg(fig)


def categorical_marginal(real_counts: dict[str, int], synth_counts: dict[str, int], title: str) -> str:
    """Grouped horizontal bars of category shares, the MAX_BARS most frequent real categories
    first and the rest pooled as "(other)"."""
    plt = _mpl()
    order = sorted(set(real_counts) | set(synth_counts), key=lambda k: (-real_counts.get(k, 0),
                                                                        -synth_counts.get(k, 0), k))
    shown, rest = order[:MAX_BARS], order[MAX_BARS:]
    labels = list(shown) + ([f"(other: {len(rest)})"] if rest else [])
    rt, st = max(1, sum(real_counts.values())), max(1, sum(synth_counts.values()))
    rv = [real_counts.get(k, 0) / rt for k in shown] + ([sum(real_counts.get(k, 0) for k in rest) / rt] if rest else [])
    sv = [synth_counts.get(k, 0) / st for k in shown] + ([sum(synth_counts.get(k, 0) for k in rest) / st]
                                                          if rest else [])
    y = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(4.6, max(1.6, 0.22 * len(labels) + 0.8)))
    ax.barh(y - 0.2, rv, height=0.4, color=REAL, label="real")
    ax.barh(y + 0.2, sv, height=0.4, color=SYNTH, label="synthetic")
    ax.set_yticks(y, [_short(lab) for lab in labels])
    ax.invert_yaxis()
    ax.set_xlabel("share of rows")
    ax.legend(frameon=False, fontsize=8, loc="lower right")
    ax.set_title(title, fontsize=10)
    return to_svg(fig)


def heatmap(matrix: np.ndarray, labels: Sequence[str], title: str, *, vmin: float, vmax: float, cmap: str) -> str:
    plt = _mpl()
    n = len(labels)
    size = max(3.2, 0.32 * n + 1.6)
    fig, ax = plt.subplots(figsize=(size + 0.8, size))
    im = ax.imshow(np.nan_to_num(matrix, nan=0.0), vmin=vmin, vmax=vmax, cmap=cmap)
    ax.set_xticks(range(n), [_short(c, 14) for c in labels], rotation=90)
    ax.set_yticks(range(n), [_short(c, 14) for c in labels])
    if n <= 16:
        for i in range(n):
            for j in range(n):
                v = matrix[i, j]
                if np.isfinite(v):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if abs(v) > 0.6 * max(abs(vmin), abs(vmax)) else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(title, fontsize=10)
    return to_svg(fig)


def _short(text: str, n: int = 24) -> str:
    text = str(text)
    return text if len(text) <= n else text[: n - 1] + "\u2026"


def image_grid(real: np.ndarray, synth: np.ndarray, title: str, per_row: int = 10) -> str:
    """Real images on the top rows, synthetic below, on one shared grey scale. Arrays of shape
    (n, h, w) or (n, c, h, w) (the first channel is shown)."""
    plt = _mpl()
    real, synth = (a[:, 0] if a.ndim == 4 else a for a in (real, synth))
    rows = [("real", real[i:i + per_row]) for i in range(0, min(len(real), 2 * per_row), per_row)]
    rows += [("synthetic", synth[i:i + per_row]) for i in range(0, min(len(synth), 2 * per_row), per_row)]
    lo = float(min(real.min(), synth.min())) if real.size and synth.size else 0.0
    hi = float(max(real.max(), synth.max())) if real.size and synth.size else 1.0
    fig, axes = plt.subplots(len(rows), per_row, figsize=(per_row * 0.5, len(rows) * 0.55), squeeze=False)
    for r, (label, imgs) in enumerate(rows):
        for c in range(per_row):
            ax = axes[r][c]
            ax.set_axis_off()
            if c < len(imgs):
                ax.imshow(imgs[c], cmap="gray_r", vmin=lo, vmax=hi, interpolation="nearest")
        axes[r][0].text(-0.6, 0.5, label, transform=axes[r][0].transAxes, ha="right", va="center", fontsize=7,
                        color=REAL if label == "real" else SYNTH)
    fig.suptitle(title, fontsize=10)
    return to_svg(fig)


def series_panel(real: np.ndarray, synth: np.ndarray, real_acf: np.ndarray, synth_acf: np.ndarray,
                 title: str, lines: int = 6) -> str:
    """A few real and synthetic windows, and their mean autocorrelation by lag."""
    plt = _mpl()
    fig, (a, b) = plt.subplots(1, 2, figsize=(8.0, 2.6))
    for values, color, label in ((real, REAL, "real"), (synth, SYNTH, "synthetic")):
        for i, w in enumerate(values[:lines]):
            a.plot(w, color=color, alpha=0.6, linewidth=0.9, label=label if i == 0 else None)
    a.set_title("windows", fontsize=9)
    a.legend(frameon=False, fontsize=8)
    lags = np.arange(1, len(real_acf) + 1)
    b.plot(lags, real_acf, color=REAL, label="real")
    b.plot(lags, synth_acf, color=SYNTH, label="synthetic")
    b.set_title("mean autocorrelation", fontsize=9)
    b.set_xlabel("lag")
    b.legend(frameon=False, fontsize=8)
    fig.suptitle(title, fontsize=10)
    return to_svg(fig)
