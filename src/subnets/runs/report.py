"""HTML reports of runs: one ``index.html`` with the kind's page and the PNG plots it shows.

A report is rebuilt from the run store's plain dicts, so it can be written at any time, also for a run
that is still going or was cut short (missing units and missing curves are skipped). Every file is
written to a temporary name in the same folder and then renamed, so a killed report never leaves half
a file behind. The page comes from the run's kind (:mod:`subnets.runs.kinds`); a run whose kind is not
registered in this process gets a table of its units.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from subnets.runs.kinds import find_kind
from subnets.runs.pages import atomic_write, esc, unit_page


def write_report(run: dict[str, Any], units: list[dict[str, Any]], out_dir: Path) -> Path:
    """Write the report of ``run`` (its page and plots) into ``out_dir`` and return the page's path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    kind = find_kind(run.get("kind", ""))
    body = kind.page if kind is not None else unit_page
    index = out_dir / "index.html"
    atomic_write(index, _page(run, body(run, units, out_dir)).encode("utf-8"))
    return index


_CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 2em auto; max-width: 1100px;
       padding: 0 1em; color: #222; line-height: 1.4; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
.meta, .note { color: #555; font-size: 0.92em; }
.summary { font-size: 1.05em; }
.status { padding: 0.1em 0.5em; border-radius: 0.6em; color: #fff; background: #777; }
.status-done { background: #2e7d32; } .status-running { background: #1565c0; }
.status-failed { background: #c62828; } .status-partial { background: #ef6c00; }
table { border-collapse: collapse; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; } td:nth-child(2) { text-align: left; }
table.findings td, table.findings th { text-align: left; vertical-align: top; }
.verdict-true { color: #2e7d32; font-weight: bold; } .verdict-false { color: #c62828; font-weight: bold; }
tbody tr:nth-child(even) { background: #fafafa; }
figure { margin: 1.5em 0; } img { max-width: 100%; }
figcaption { color: #444; font-size: 0.92em; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; font-size: 0.88em; }
"""


def _page(run: dict[str, Any], body: str) -> str:
    """The whole page: header with name, id, kind and status, the kind's body, data source and recipe."""
    name, run_id = run.get("name") or run.get("id", "run"), run.get("id", "")
    status = str(run.get("status", "unknown"))
    meta = [
        f"run <code>{esc(run_id)}</code>",
        f"kind {esc(run.get('kind', '–'))}",
        f"status <span class='status status-{esc(status)}'>{esc(status)}</span>",
    ]
    meta += [f"{key} {esc(run[key])}" for key in ("created", "updated") if run.get(key)]
    sections = [body]
    source = run.get("data_source")
    if source:
        rows = "\n".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in source.items())
        sections.append(f"<h2>Data source</h2>\n<table class='source'>{rows}</table>")
    recipe = json.dumps(run.get("recipe", {}), indent=2, default=str)
    sections.append(f"<h2>Recipe</h2>\n<pre>{esc(recipe)}</pre>")
    return (
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
        f"<title>{esc(name)} ({esc(run_id)})</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<h1>{esc(name)}</h1>\n<p class='meta'>{' · '.join(meta)}</p>\n"
        + "\n".join(sections)
        + "\n</body>\n</html>\n"
    )
