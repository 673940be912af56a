"""Evaluation reports: metrics.json, report.md, a self-contained report.html and PNG plots.

Everything here renders a metrics dict (the one `evaluate` builds, documented in
`evaluate.py`) and never computes a metric itself, so what the report says is exactly what
metrics.json holds. Plots use matplotlib's object API with the Agg canvas (no pyplot, no
global backend switch), so they render on a machine without a display.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from symile_clinical.formats.atomic import write_bytes_atomic, write_json_atomic, write_text_atomic
from symile_clinical.formats.run_dir import MARKDOWN_FILE, METRICS_FILE

HTML_FILE = "report.html"
PLOT_FILES = {
    "accuracy": "accuracy_ci.png",
    "lab_bins": "accuracy_by_observed_labs.png",
    "ranks": "rank_histogram.png",
    "examples": "example_queries.png",
}
PLOT_CAPTIONS = {
    "accuracy": "Top-1 accuracy among the candidates, with 95% CI, per run",
    "lab_bins": "Top-1 accuracy against the number of observed labs",
    "ranks": "Rank of the true CXR among its candidates",
    "examples": "Example queries: top-5 CXRs, the true one boxed",
}
_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


# ----------------------------------------------------------------------------- files


def figure_to_png(figure: Figure, dpi: int = 110) -> bytes:
    """Render a matplotlib Figure to PNG bytes with the Agg canvas."""
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


# ----------------------------------------------------------------------------- plots


def _error_bars(estimates: Sequence[Mapping[str, float] | None]) -> tuple[np.ndarray, ...]:
    """(values, [2, n] asymmetric error bars) from estimate dicts; None -> NaN."""
    values = np.array([e["estimate"] if e else np.nan for e in estimates], dtype=float)
    low = np.array([e["ci_low"] if e else np.nan for e in estimates], dtype=float)
    high = np.array([e["ci_high"] if e else np.nan for e in estimates], dtype=float)
    return values, np.vstack([values - low, high - values])


def plot_accuracy_with_ci(metrics: Mapping[str, Any]) -> bytes:
    """Bars of candidate-set top-1 accuracy per run (full query and ECG-only), 95% CI bars."""
    runs = metrics["runs"]
    names = [r["name"] for r in runs]
    x = np.arange(len(runs))
    figure = Figure(figsize=(max(4.5, 1.6 * len(runs) + 2), 3.6))
    ax = figure.add_subplot()
    width = 0.38
    for offset, key, label, colour in (
        (-width / 2, None, "ECG + labs", _COLOURS[0]),
        (width / 2, "ecg_only", "ECG only (all labs masked)", "#9ecae1"),
    ):
        estimates = [r[key]["candidate_top1"] if key else r["candidate_top1"] for r in runs]
        values, errors = _error_bars(estimates)
        ax.bar(x + offset, values, width, yerr=errors, capsize=4, label=label, color=colour)
    ax.axhline(metrics["chance_top1"], color="grey", linestyle="--", label="chance")
    ax.set_xticks(x, [f"{n}\n({r['objective']})" for n, r in zip(names, runs, strict=True)])
    ax.set_ylabel(f"top-1 accuracy among {metrics['n_candidates']}")
    ax.set_ylim(0, 1)
    ax.set_title(f"Candidate-set retrieval, {metrics['split']} split (95% bootstrap CI)")
    ax.legend(fontsize=8, loc="upper right")
    return figure_to_png(figure)


def plot_accuracy_by_lab_bins(metrics: Mapping[str, Any]) -> bytes:
    """Top-1 accuracy against the number of observed labs (bins), one line per run."""
    bins = metrics["lab_bins"]
    labels = [b["label"] for b in bins]
    x = np.arange(len(bins))
    figure = Figure(figsize=(6.4, 3.6))
    ax = figure.add_subplot()
    n_runs = len(metrics["runs"])
    for i, run in enumerate(metrics["runs"]):
        values, errors = _error_bars([b["top1"] for b in run["by_observed_labs"]])
        shift = (i - (n_runs - 1) / 2) * 0.06  # keep overlapping CI bars readable
        ax.errorbar(
            x + shift,
            values,
            yerr=errors,
            marker="o",
            capsize=3,
            color=_COLOURS[i % len(_COLOURS)],
            label=f"{run['name']} ({run['objective']})",
        )
    ax.axhline(metrics["chance_top1"], color="grey", linestyle="--", label="chance")
    counts = [b["n"] for b in metrics["runs"][0]["by_observed_labs"]] if n_runs else []
    ax.set_xticks(x, [f"{lab}\nn={n}" for lab, n in zip(labels, counts, strict=False)])
    ax.set_xlabel("labs observed in the query")
    ax.set_ylabel("top-1 accuracy")
    ax.set_ylim(0, 1)
    ax.set_title("Accuracy by number of observed labs (95% CI)")
    ax.legend(fontsize=8)
    return figure_to_png(figure)


def plot_rank_histogram(metrics: Mapping[str, Any]) -> bytes:
    """Share of queries at each rank of the true CXR within its candidate set, per run."""
    k = metrics["n_candidates"]
    ranks = np.arange(1, k + 1)
    figure = Figure(figsize=(6.4, 3.4))
    ax = figure.add_subplot()
    runs = metrics["runs"]
    width = 0.8 / max(1, len(runs))
    for i, run in enumerate(runs):
        counts = np.asarray(run["candidate_rank_counts"], dtype=float)
        share = counts / counts.sum() if counts.sum() else counts
        ax.bar(
            ranks + (i - (len(runs) - 1) / 2) * width,
            share,
            width,
            color=_COLOURS[i % len(_COLOURS)],
            label=f"{run['name']} ({run['objective']})",
        )
    ax.axhline(1.0 / k, color="grey", linestyle="--", label="uniform (chance)")
    ax.set_xticks(ranks)
    ax.set_xlabel("rank of the true CXR among its candidates (1 = retrieved)")
    ax.set_ylabel("share of queries")
    ax.set_title("Rank histogram")
    ax.legend(fontsize=8)
    return figure_to_png(figure)


@dataclass(frozen=True)
class ExampleQuery:
    """One query row of the example grid: its top-k CXRs and where the true one is."""

    title: str  # e.g. "hadm 2001, 7/50 labs"
    thumbnails: np.ndarray  # uint8 [k, T, T], best first (0 = black)
    scores: np.ndarray  # float [k], the model's scores of those thumbnails
    true_position: int | None  # index of the true CXR among the k, None when not in the top k
    true_thumbnail: np.ndarray  # uint8 [T, T]
    true_rank: int  # 1-based rank of the true CXR among the query's candidates


def plot_example_queries(examples: Sequence[ExampleQuery], run_name: str) -> bytes:
    """A grid: one row per query, its top-k CXR thumbnails with the true one boxed in green.

    When the true CXR is not in the top k it is shown in an extra last column, boxed in red.
    """
    k = max((len(e.thumbnails) for e in examples), default=1)
    cols = k + 1
    rows = max(1, len(examples))
    figure = Figure(figsize=(1.55 * cols, 1.75 * rows), layout="constrained")
    for r, example in enumerate(examples):
        for c in range(cols):
            ax = figure.add_subplot(rows, cols, r * cols + c + 1)
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c < len(example.thumbnails):
                image, caption = example.thumbnails[c], f"#{c + 1}  {example.scores[c]:.2f}"
                edge = "#2ca02c" if example.true_position == c else None
            elif c == k and example.true_position is None:
                image, caption = example.true_thumbnail, f"true: rank {example.true_rank}"
                edge = "#d62728"
            else:
                ax.set_axis_off()
                continue
            ax.imshow(image, cmap="gray", vmin=0, vmax=255)
            ax.set_xlabel(caption, fontsize=7)
            if edge:
                height, width = image.shape
                ax.add_patch(
                    Rectangle((-0.5, -0.5), width, height, fill=False, edgecolor=edge, linewidth=4)
                )
            if c == 0:
                ax.set_ylabel(example.title, fontsize=7)
    figure.suptitle(f"{run_name}: top-{k} CXRs per query (green box = the true CXR)", fontsize=9)
    return figure_to_png(figure)


# ----------------------------------------------------------------------------- text


def _pct(estimate: Mapping[str, float] | None) -> str:
    """'34.0% [30.1, 38.2]' from an estimate dict."""
    if not estimate or estimate.get("estimate") is None:
        return "n/a"
    return (
        f"{100 * estimate['estimate']:.1f}% "
        f"[{100 * estimate['ci_low']:.1f}, {100 * estimate['ci_high']:.1f}]"
    )


def _decimal(estimate: Mapping[str, float] | None) -> str:
    """'0.314 [0.263, 0.367]' from an estimate dict (for MRR, which is not a percentage)."""
    if not estimate or estimate.get("estimate") is None:
        return "n/a"
    return f"{estimate['estimate']:.3f} [{estimate['ci_low']:.3f}, {estimate['ci_high']:.3f}]"


def _signed_difference(key: str, estimate: Mapping[str, float]) -> str:
    """MRR differences as signed decimals, accuracy/recall differences in percentage points."""
    if "mrr" in key:
        return (
            f"{estimate['estimate']:+.3f} [{estimate['ci_low']:+.3f}, {estimate['ci_high']:+.3f}]"
        )
    return _signed_pct(estimate)


def _signed_pct(estimate: Mapping[str, float]) -> str:
    return (
        f"{100 * estimate['estimate']:+.1f} pts "
        f"[{100 * estimate['ci_low']:+.1f}, {100 * estimate['ci_high']:+.1f}]"
    )


def _num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def metric_rows(metrics: Mapping[str, Any]) -> list[tuple[str, list[str]]]:
    """The side-by-side table: (metric name, one cell per run), shared by markdown and HTML."""
    runs = metrics["runs"]
    k = metrics["n_candidates"]
    rows: list[tuple[str, list[str]]] = [
        ("objective", [r["objective"] for r in runs]),
        (f"top-1 among {k} (95% CI)", [_pct(r["candidate_top1"]) for r in runs]),
        (f"MRR among {k} (95% CI)", [_decimal(r["candidate_mrr"]) for r in runs]),
        (
            "ECG-only top-1 (labs masked)",
            [_pct(r["ecg_only"]["candidate_top1"]) for r in runs],
        ),
        (
            "labs' gain: full - ECG-only",
            [_signed_pct(r["ecg_only"]["full_minus_ecg_only"]) for r in runs],
        ),
    ]
    pool_size = metrics["pool_size"]
    for key in ("recall@1", "recall@5", "recall@10"):
        rows.append((f"pool of {pool_size}: {key}", [_pct(r["pool"][key]) for r in runs]))
    rows.append((f"pool of {pool_size}: MRR", [_decimal(r["pool"]["mrr"]) for r in runs]))
    rows.append(
        (f"pool of {pool_size}: median rank", [_num(r["pool"]["median_rank"], 1) for r in runs])
    )
    for i, bin_ in enumerate(metrics["lab_bins"]):
        rows.append(
            (
                f"top-1, {bin_['label']} labs observed",
                [
                    f"{_pct(r['by_observed_labs'][i]['top1'])} (n={r['by_observed_labs'][i]['n']})"
                    for r in runs
                ],
            )
        )
    if any("missing_labs" in r for r in runs):
        rows += missing_labs_rows(metrics)
    return rows


# How each way of handling missing labs is named in the table (evaluate.missing_labs_ways).
MISSING_LABS_WAYS = {"observed_mask": "observed mask", "null_option": "NULL option"}


def missing_labs_rows(metrics: Mapping[str, Any]) -> list[tuple[str, list[str]]]:
    """Gated Symile's two ways of handling missing labs side by side: the ECG-only top-1 and
    the top-1 per observed-lab bin of each way ("-" for a run without them)."""
    runs = metrics["runs"]
    rows: list[tuple[str, list[str]]] = []
    for way, label in MISSING_LABS_WAYS.items():
        rows.append(
            (
                f"ECG-only top-1 ({label})",
                [
                    _pct(r["missing_labs"][way]["ecg_only"]["candidate_top1"])
                    if "missing_labs" in r
                    else "-"
                    for r in runs
                ],
            )
        )
        for i, bin_ in enumerate(metrics["lab_bins"]):
            rows.append(
                (
                    f"top-1, {bin_['label']} labs observed ({label})",
                    [
                        _pct(r["missing_labs"][way]["by_observed_labs"][i]["top1"])
                        if "missing_labs" in r
                        else "-"
                        for r in runs
                    ],
                )
            )
    return rows


def comparison_sentences(metrics: Mapping[str, Any]) -> list[str]:
    """One sentence per paired comparison; a claim is made only when the CI excludes 0."""
    sentences = []
    for comp in metrics.get("comparisons", []):
        diff = comp["candidate_top1"]
        a, b = comp["a"], comp["b"]
        what = f"top-1 {a} - {b}: {_signed_pct(diff)} (paired bootstrap, same queries)"
        if diff["significant"]:
            better, worse = (a, b) if diff["estimate"] > 0 else (b, a)
            sentences.append(f"{what}: {better} beats {worse} at 95% confidence.")
        else:
            sentences.append(f"{what}: the CI includes 0, so no winner is claimed.")
    return sentences


def render_markdown(metrics: Mapping[str, Any], plot_files: Mapping[str, str]) -> str:
    """report.md: header, the side-by-side table, comparisons, and links to the PNGs."""
    runs = metrics["runs"]
    boot = metrics["bootstrap"]
    lines = [
        f"# Retrieval evaluation: {', '.join(r['name'] for r in runs)}",
        "",
        f"Dataset `{metrics['dataset']}`, split `{metrics['split']}`: "
        f"{metrics['n_queries']} queries, {metrics['n_candidates']} candidates each "
        f"(chance top-1 = {100 * metrics['chance_top1']:.1f}%), pool of "
        f"{metrics['pool_size']} CXRs. Ties broken at random (seed {metrics['seed']}). "
        f"Intervals: {100 * boot['confidence']:.0f}% percentile bootstrap over queries, "
        f"{boot['n_resamples']} resamples, seed {boot['seed']}; every run sees the same "
        "resamples.",
        "",
        *[f"> **Warning:** {warning}\n" for warning in metrics.get("warnings", [])],
        "| metric | " + " | ".join(r["name"] for r in runs) + " |",
        "|---|" + "---|" * len(runs),
    ]
    lines += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in metric_rows(metrics)]
    sentences = comparison_sentences(metrics)
    if sentences:
        lines += ["", "## Comparison", ""]
        lines += [f"- {s}" for s in sentences]
        lines += ["", "| paired difference (a - b) | estimate [95% CI] | a better in |"]
        lines += ["|---|---|---|"]
        lines += [f"| {' | '.join(row)} |" for row in comparison_rows(metrics)]
    lines += ["", "## Runs", ""]
    lines += [f"- {line}" for line in run_lines(metrics)]
    lines += ["", "## Plots", ""]
    lines += [f"![{PLOT_CAPTIONS.get(key, key)}]({file})" for key, file in plot_files.items()]
    return "\n".join(lines) + "\n"


def comparison_rows(metrics: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(difference name, estimate [CI], share of resamples where a is better) per paired metric."""
    rows = []
    for comp in metrics.get("comparisons", []):
        for key, value in comp.items():
            if isinstance(value, Mapping):
                rows.append(
                    (
                        f"{comp['a']} - {comp['b']}: {key}",
                        _signed_difference(key, value),
                        f"{100 * value['fraction_a_better']:.1f}% of resamples",
                    )
                )
    return rows


def run_lines(metrics: Mapping[str, Any]) -> list[str]:
    """One line per run: folder, objective, the checkpoint evaluated, where its encoders
    started."""
    return [
        f"{r['name']}: {r['run_dir']}, {r['objective']}, checkpoint {r['checkpoint']} "
        f"(sha256 {r['checkpoint_sha256'][:12]})"
        + (f"; {r['encoders']}" if r.get("encoders") else "")
        for r in metrics["runs"]
    ]


def render_html(metrics: Mapping[str, Any], pngs: Mapping[str, bytes]) -> str:
    """report.html: the same content as report.md, with every PNG embedded as base64."""
    esc = html.escape
    runs = metrics["runs"]
    header = "".join(f"<th>{esc(r['name'])}</th>" for r in runs)
    body = "".join(
        "<tr><th>" + esc(name) + "</th>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>"
        for name, cells in metric_rows(metrics)
    )
    comparisons = "".join(f"<li>{esc(s)}</li>" for s in comparison_sentences(metrics))
    if comparisons:
        paired = "".join(
            "<tr>" + "".join(f"<td>{esc(cell)}</td>" for cell in row) + "</tr>"
            for row in comparison_rows(metrics)
        )
        comparisons = (
            f"<h2>Comparison</h2><ul>{comparisons}</ul><table><thead><tr>"
            "<th>paired difference (a - b)</th><th>estimate [95% CI]</th><th>a better in</th>"
            f"</tr></thead><tbody>{paired}</tbody></table>"
        )
    run_items = "".join(f"<li>{esc(line)}</li>" for line in run_lines(metrics))
    images = "".join(
        f'<figure><img alt="{esc(PLOT_CAPTIONS.get(key, key))}" src="data:image/png;base64,'
        f'{base64.b64encode(data).decode("ascii")}"><figcaption>'
        f"{esc(PLOT_CAPTIONS.get(key, key))}</figcaption></figure>"
        for key, data in pngs.items()
    )
    boot = metrics["bootstrap"]
    summary = (
        f"Dataset {metrics['dataset']}, split {metrics['split']}: {metrics['n_queries']} "
        f"queries, {metrics['n_candidates']} candidates each (chance "
        f"{100 * metrics['chance_top1']:.1f}%), pool of {metrics['pool_size']}. "
        f"{100 * boot['confidence']:.0f}% bootstrap CIs over queries, "
        f"{boot['n_resamples']} resamples (seed {boot['seed']})."
        + "".join(f" Warning: {warning}" for warning in metrics.get("warnings", []))
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>symile-clinical evaluation</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 1100px; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; font-size: 14px; }}
thead th {{ background: #f0f0f0; }}
img {{ max-width: 100%; }}
figure {{ margin: 1.5em 0; }}
</style></head><body>
<h1>Retrieval evaluation</h1>
<p>{esc(summary)}</p>
<table><thead><tr><th>metric</th>{header}</tr></thead><tbody>{body}</tbody></table>
{comparisons}
<h2>Runs</h2><ul>{run_items}</ul>
<h2>Plots</h2>
{images}
</body></html>
"""


def write_report(
    out_dir: Path, metrics: Mapping[str, Any], pngs: Mapping[str, bytes]
) -> dict[str, Path]:
    """Write metrics.json, the PNGs, report.md and report.html into out_dir (each atomic).

    pngs maps a plot key (PLOT_FILES keys, or any name) to PNG bytes. Returns name -> path.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    plot_files: dict[str, str] = {}
    for key, data in pngs.items():
        name = PLOT_FILES.get(key, f"{key}.png")
        write_bytes_atomic(out_dir / name, data)
        plot_files[key] = name
        written[key] = out_dir / name
    write_text_atomic(out_dir / MARKDOWN_FILE, render_markdown(metrics, plot_files))
    write_text_atomic(out_dir / HTML_FILE, render_html(metrics, pngs))
    # metrics.json last: its presence means the whole report is written.
    write_json_atomic(out_dir / METRICS_FILE, metrics)
    written.update(
        metrics=out_dir / METRICS_FILE,
        markdown=out_dir / MARKDOWN_FILE,
        html=out_dir / HTML_FILE,
    )
    return written
