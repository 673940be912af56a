"""The joint-fraction study's report: OUT/report/ with summary.json, report.md, report.html
(the PNG inlined) and accuracy_vs_F.png, from `study_cells.summarise_study`'s summary and the
tables of `study_cells.report_tables`. Writes files; trains and measures nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from symile_clinical.experiments.study_cells import report_tables


def plot_accuracy_vs_fraction(summary: dict[str, Any]) -> bytes:
    """PNG: mean test top-1 against the joint fraction, one curve per objective and encoders'
    start, with CI error bars."""
    from matplotlib.figure import Figure

    from symile_clinical.evaluation.report import figure_to_png

    figure = Figure(figsize=(5.5, 3.8))
    axes = figure.add_subplot()
    curves = [(s, o) for s in summary.get("starts", [""]) for o in summary["objectives"]]
    offsets = np.linspace(-0.03, 0.03, len(curves)) if len(curves) > 1 else [0.0]
    for offset, (start, objective) in zip(offsets, curves, strict=True):
        rows = [
            c
            for c in summary["cells"].values()
            if c["objective"] == objective and c.get("start", "") == start
        ]
        x = np.array([c["joint_fraction"] for c in rows]) + offset
        y = np.array([100 * c["top1"]["mean"] for c in rows])
        low = np.array([100 * c["top1"]["ci_low"] for c in rows])
        high = np.array([100 * c["top1"]["ci_high"] for c in rows])
        err = np.nan_to_num(np.vstack([y - low, high - y]))
        label = f"{objective} ({start})" if start else objective
        style = "-" if objective == "symile" else "--"
        axes.errorbar(x, y, yerr=err, marker="o", capsize=4, linestyle=style, label=label)
    axes.set_xticks(summary["fractions"])
    axes.set_xlim(-0.1, 1.1)
    axes.axhline(10, color="grey", linestyle=":", label="chance (1/10)")
    axes.set_xlabel("joint fraction F (share of XOR markers)")
    axes.set_ylabel("test top-1 (%)")
    axes.set_title("CXR retrieval from ECG + labs, synthetic cohorts")
    axes.legend()
    return figure_to_png(figure)


OBJECTIVE_NAMES = {
    "symile": "Symile",
    "clip": "CLIP",
    "gram": "GRAM",
    "triangle": "TRIANGLE",
    "gated-symile": "Gated Symile",
}


def study_title(summary: dict[str, Any]) -> str:
    """The objectives measured, Symile first: "Symile vs CLIP", "Symile vs CLIP and GRAM"."""
    names = [OBJECTIVE_NAMES.get(o, o) for o in summary["objectives"]]
    if len(names) < 2:
        return "".join(names)
    others = names[1:]
    listed = others[0] if len(others) == 1 else ", ".join(others[:-1]) + " and " + others[-1]
    return f"{names[0]} vs {listed}"


def write_study_report(out: str | Path, summary: dict[str, Any], command: str) -> dict[str, Path]:
    """OUT/report/: summary.json, report.md, report.html (PNG inlined), accuracy_vs_F.png."""
    import base64
    import html

    from symile_clinical.formats.atomic import (
        write_bytes_atomic,
        write_json_atomic,
        write_text_atomic,
    )

    folder = Path(out) / "report"
    png = plot_accuracy_vs_fraction(summary)
    tables = report_tables(summary)
    title = f"{study_title(summary)} on synthetic cohorts by joint fraction"
    lines = [
        f"# {title}",
        "",
        f"Command: `{command}`",
        "",
        f"{summary['n_runs']} runs.",
        "",
    ]
    for heading, header, rows in tables:
        lines += [f"## {heading}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines.append("")
    lines += ["![accuracy vs F](accuracy_vs_F.png)", ""]
    parts = [
        f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>Command: <code>{html.escape(command)}</code>; {summary['n_runs']} runs.</p>",
    ]
    for heading, header, rows in tables:
        parts.append(f"<h2>{html.escape(heading)}</h2><table border='1' cellpadding='4'>")
        parts.append("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
        parts += [
            "<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row) + "</tr>" for row in rows
        ]
        parts.append("</table>")
    parts.append(
        f"<img alt='accuracy vs F' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
    )
    files = {
        "summary": write_json_atomic(folder / "summary.json", summary),
        "markdown": write_text_atomic(folder / "report.md", "\n".join(lines)),
        "html": write_text_atomic(folder / "report.html", "\n".join(parts) + "\n"),
        "png": write_bytes_atomic(folder / "accuracy_vs_F.png", png),
    }
    return files
