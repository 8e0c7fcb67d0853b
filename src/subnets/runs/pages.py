"""Building blocks of the report pages of the experiment kinds: grouping units, numbers as text, tables as HTML
and Markdown, plots saved atomically, and a page of a table and plots.

Nothing here imports matplotlib until a plot is drawn (:func:`pyplot`), so tables (``show``) stay fast.
"""

from __future__ import annotations

import html
import io
import os
import statistics
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from subnets import stats

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Units = list[dict[str, Any]]
_DPI = 120


def group_by(units: Units, key: Callable[[dict[str, Any]], Any]) -> dict[Any, Units]:
    """Units grouped by ``key(unit)``, groups in the order first seen."""
    groups: dict[Any, Units] = {}
    for unit in units:
        groups.setdefault(key(unit), []).append(unit)
    return groups


def values(units: Units, key: str) -> list[float]:
    """The present (non-None) values of ``key`` over ``units``."""
    return [float(u[key]) for u in units if u.get(key) is not None]


def mean_std(numbers: list[float], scale: float = 1.0, digits: int = 2) -> str:
    """``mean ± sample std`` of ``numbers`` times ``scale``; the mean alone for one value; a dash for none."""
    return stats.format_mean_std(numbers, scale, digits)


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


def esc(value: Any) -> str:
    """``value`` as text escaped for HTML."""
    return html.escape(str(value))


def cell(value: Any) -> str:
    """A table cell for a plain value: floats to 4 significant digits, None as a dash, the rest as text."""
    if value is None:
        return "–"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def markdown_table(rows: list[dict[str, str]]) -> str:
    """Rows of equal keys as a Markdown table (empty when there are no rows)."""
    if not rows:
        return ""
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r[h] for h in head) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def html_table(rows: list[dict[str, str]], css_class: str = "") -> str:
    """Rows of equal keys as an HTML table."""
    if not rows:
        return "<p>No finished units yet.</p>"
    head = "".join(f"<th>{esc(h)}</th>" for h in rows[0])
    body = "\n".join("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in r.values()) + "</tr>" for r in rows)
    opening = f"<table class='{css_class}'>" if css_class else "<table>"
    return f"{opening}<thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>"


def figures(out_dir: Path, plots: list[tuple[str, Callable[[Path], bool], str]]) -> str:
    """The ``<figure>`` of every plot ``(file name, draw(path) -> drawn?, caption)`` that has something to draw,
    under a "Plots" heading (empty when none has)."""
    shown = [f"<figure><img src='{name}' alt='{esc(caption)}'><figcaption>{esc(caption)}</figcaption></figure>"
             for name, plot, caption in plots if plot(out_dir / name)]
    return "<h2>Plots</h2>\n" + "\n".join(shown) if shown else ""


def page(summary: str, heading: str, note: str, rows: list[dict[str, str]], out_dir: Path,
         plots: list[tuple[str, Callable[[Path], bool], str]]) -> str:
    """A report page: a summary line, the results table under ``heading`` with its ``note``, then every plot
    ``(file name, draw(path) -> drawn?, caption)`` that has something to draw."""
    return "\n".join([f"<p class='summary'>{summary}</p>", f"<h2>{heading}</h2>\n<p class='note'>{note}</p>",
                      html_table(rows), figures(out_dir, plots)])


def unit_rows(run: dict[str, Any], units: Units) -> list[dict[str, str]]:
    """One row per unit with each of its plain (string, number, boolean) fields: the table of a kind that has no
    table of its own."""
    columns: list[str] = []
    for unit in units:
        for key, value in unit.items():
            if key not in columns and (value is None or isinstance(value, str | int | float | bool)):
                columns.append(key)
    return [{c: cell(u.get(c)) for c in columns} for u in units]


def unit_page(run: dict[str, Any], units: Units, out_dir: Path) -> str:
    """A page for a kind without one of its own: :func:`unit_rows` as a table, no plots."""
    return f"<p class='summary'>{len(units)} units.</p>\n<h2>Units</h2>\n" + html_table(unit_rows(run, units))


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file next to ``path`` and rename it over ``path``.

    The temporary file is opened normally (not with ``mkstemp``) so it gets the usual umask permissions.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend, imported on first use (it costs half a second)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Figure, path: Path) -> None:
    """Render ``fig`` to PNG at ``path`` (atomically) and free it."""
    plt = pyplot()
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight")
    finally:
        plt.close(fig)
    atomic_write(path, buf.getvalue())
