"""Building blocks of the report pages of the experiment kinds: grouping units, numbers as text, tables as HTML
and Markdown, and a page of a table and plots."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from subnets.runs import report as base

Units = list[dict[str, Any]]


def group_by(units: Units, key: Callable[[dict[str, Any]], Any]) -> dict[Any, Units]:
    """Units grouped by ``key(unit)``, groups in the order first seen."""
    groups: dict[Any, Units] = {}
    for unit in units:
        groups.setdefault(key(unit), []).append(unit)
    return groups


def mean_std(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    """``mean ± population std`` of ``values`` times ``scale``, or a dash when there are none."""
    if not values:
        return "–"
    mean, std = base._mean_std(values)
    return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}"


def p_value(value: float | None) -> str:
    """A p-value as text: three decimals, scientific below 0.001, a dash when undefined."""
    if value is None:
        return "–"
    return f"{value:.3f}" if value >= 0.001 else f"{value:.1e}"


def mean_curve(group: Units, section: str, key: str) -> tuple[list[float], list[float]]:
    """The iterations and the mean over ``group`` of the curve ``unit[section][key]`` (cut to the shortest)."""
    curves = [u[section] for u in group if u.get(section) and u[section].get(key)]
    if not curves:
        return [], []
    length = min(len(c[key]) for c in curves)
    xs = [float(x) for x in curves[0]["iteration"][:length]]
    return xs, [statistics.fmean(float(c[key][i]) for c in curves) for i in range(length)]


def markdown_table(rows: list[dict[str, str]]) -> str:
    """Rows of equal keys as a Markdown table (empty when there are no rows)."""
    if not rows:
        return ""
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r[h] for h in head) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def html_table(rows: list[dict[str, str]]) -> str:
    """Rows of equal keys as an HTML table."""
    if not rows:
        return "<p>No finished units yet.</p>"
    head = "".join(f"<th>{base._esc(h)}</th>" for h in rows[0])
    body = "\n".join("<tr>" + "".join(f"<td>{base._esc(v)}</td>" for v in r.values()) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>"


def page(summary: str, heading: str, note: str, rows: list[dict[str, str]], out_dir: Path,
         plots: list[tuple[str, Callable[[Path], bool], str]]) -> str:
    """A report page: a summary line, the results table under ``heading`` with its ``note``, then every plot
    ``(file name, draw(path) -> drawn?, caption)`` that has something to draw."""
    figures = [f"<figure><img src='{name}' alt='{base._esc(caption)}'><figcaption>{base._esc(caption)}"
               "</figcaption></figure>" for name, plot, caption in plots if plot(out_dir / name)]
    return "\n".join([f"<p class='summary'>{summary}</p>", f"<h2>{heading}</h2>\n<p class='note'>{note}</p>",
                      html_table(rows), "<h2>Plots</h2>\n" + "\n".join(figures) if figures else ""])
