"""Tests of the run report: files written, table contents, statistics, partial runs, escaping."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from subnets.runs.kinds.lottery import lottery_findings, summarize_levels
from subnets.runs.report import write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PLOTS = (
    "accuracy_vs_weights.png",
    "early_stop_vs_weights.png",
    "final_accuracy_vs_weights.png",
    "curves.png",
)
WEIGHTS = (1.0, 0.512, 0.262, 0.134)


def _curve(final: float, stop: int) -> dict[str, list[float]]:
    """A rising test accuracy curve from chance to ``final`` with early stop at ``stop``."""
    iterations = list(range(0, 5001, 250))
    acc = [0.1 + (final - 0.1) * (1 - 0.5 ** (i / 250)) for i in iterations]
    ones = [1.0] * len(iterations)
    return {"iteration": iterations, "train_loss": ones, "val_loss": ones, "val_acc": acc, "test_acc": acc}


def _units(seeds: tuple[int, ...] = (0, 1)) -> list[dict[str, Any]]:
    """Synthetic lottery units: 4 levels, imp/reinit/random_prune (level 0 imp only), with curves."""
    units = []
    for level, weights in enumerate(WEIGHTS):
        for branch, drop in (("imp", -0.002), ("reinit", 0.01), ("random_prune", 0.015)):
            if level == 0 and branch != "imp":
                continue
            for seed in seeds:
                acc = 0.98 - drop * level + 0.001 * seed
                stop = 3000 - 250 * level if branch == "imp" else 3000 + 250 * level
                units.append(
                    {
                        "level": level,
                        "branch": branch,
                        "seed": seed,
                        "weights_remaining": weights,
                        "test_acc": acc,
                        "test_acc_end": acc - 0.002,
                        "early_stop_iter": stop,
                        "iterations": 5000,
                        "seconds": 1.5,
                        "curve": _curve(acc, stop),
                    }
                )
    return units


def _run(**changes: Any) -> dict[str, Any]:
    run = {
        "id": "a1b2c3d4e5",
        "kind": "lottery",
        "name": "lth-mnist-lenet300",
        "status": "done",
        "recipe": {"model": {"name": "lenet300"}, "prune": {"rate": 0.2, "levels": 3}},
        "created": "2026-11-23T10:00:00Z",
        "updated": "2026-11-23T11:00:00Z",
        "data_source": {"name": "mnist", "source": "https://example.org/mnist", "sha256": "ab" * 32},
    }
    run.update(changes)
    return run


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 5000


def _table_rows(page: str) -> list[str]:
    body = page.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return re.findall(r"<tr>.*?</tr>", body, flags=re.S)


def test_lottery_report_writes_page_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "report"
    index = write_report(_run(), _units(), out)
    assert index == out / "index.html"
    page = index.read_text(encoding="utf-8")
    for name in PLOTS:
        _assert_png(out / name)
        assert f"src='{name}'" in page
    assert "a1b2c3d4e5" in page and "lth-mnist-lenet300" in page and "done" in page
    rows = _table_rows(page)
    assert len(rows) == 1 + 3 * 3
    for level in range(4):
        for branch in ("imp", "reinit", "random_prune") if level else ("imp",):
            assert sum(f"<td>{level}</td><td>{branch}</td>" in row for row in rows) == 1
    assert "51.2" in page and "98.05 ± 0.07" in page  # sample std of two seeds 0.001 apart
    assert "ab" * 32 in page and "&quot;lenet300&quot;" in page
    assert "<script" not in page and not re.search(r"(src|href)='?\"?https?:", page)
    assert sorted(p.name for p in out.iterdir()) == sorted([*PLOTS, "index.html"])  # no temp files left


def test_report_can_be_rewritten(tmp_path: Path) -> None:
    write_report(_run(status="running"), _units()[:5], tmp_path)
    page = write_report(_run(), _units(), tmp_path).read_text(encoding="utf-8")
    assert "status-done" in page and len(_table_rows(page)) == 10


def test_summarize_levels_hand_numbers() -> None:
    def unit(level: int, branch: str, seed: int, acc: float, end: float, stop: int) -> dict[str, Any]:
        weights = 1.0 if level == 0 else 0.5
        return {
            "level": level,
            "branch": branch,
            "seed": seed,
            "weights_remaining": weights,
            "test_acc": acc,
            "test_acc_end": end,
            "early_stop_iter": stop,
        }

    units = [
        unit(1, "random_prune", 0, 0.7, 0.6, 10),
        unit(1, "imp", 1, 0.8, 0.7, 300),
        unit(0, "imp", 0, 0.95, 0.94, 50),
        unit(1, "imp", 0, 0.9, 0.8, 100),
        unit(1, "reinit", 0, 0.6, 0.5, 20),
    ]
    rows = summarize_levels(units)
    assert [(r["level"], r["branch"]) for r in rows] == [
        (0, "imp"),
        (1, "imp"),
        (1, "reinit"),
        (1, "random_prune"),
    ]
    imp = rows[1]
    assert imp["weights_remaining"] == pytest.approx(0.5)
    assert imp["test_acc_mean"] == pytest.approx(0.85)
    assert imp["test_acc_std"] == pytest.approx(0.1 / 2**0.5)  # sample std (ddof=1), not 0.05
    assert imp["test_acc_end_mean"] == pytest.approx(0.75)
    assert imp["test_acc_end_std"] == pytest.approx(0.1 / 2**0.5)
    assert imp["early_stop_iter_mean"] == pytest.approx(200)
    assert imp["n_seeds"] == 2
    assert rows[0]["test_acc_std"] is None and rows[0]["n_seeds"] == 1  # no spread from one seed
    assert imp["test_acc_by_seed"] == {0: 0.9, 1: 0.8}
    assert set(rows[0]) == {
        "level",
        "branch",
        "weights_remaining",
        "test_acc_mean",
        "test_acc_std",
        "test_acc_end_mean",
        "test_acc_end_std",
        "early_stop_iter_mean",
        "macs_mean",
        "n_seeds",
        "test_acc_by_seed",
    }


def test_partial_run_still_writes_report(tmp_path: Path) -> None:
    units = [u for u in _units() if u["branch"] != "random_prune" and (u["level"], u["seed"]) != (3, 1)]
    units[0]["curve"] = None
    units[1]["curve"] = {}
    del units[2]["curve"]
    units[3]["test_acc_end"] = None
    page = write_report(_run(status="partial", data_source=None), units, tmp_path).read_text(encoding="utf-8")
    for name in PLOTS:
        _assert_png(tmp_path / name)
    assert "status-partial" in page and "Data source" not in page
    assert len(_table_rows(page)) == 1 + 3 * 2


def test_run_without_curves_has_no_curve_plot(tmp_path: Path) -> None:
    units = [{k: v for k, v in u.items() if k != "curve"} for u in _units(seeds=(3,))]
    page = write_report(_run(), units, tmp_path).read_text(encoding="utf-8")
    assert not (tmp_path / "curves.png").exists() and "curves.png" not in page
    _assert_png(tmp_path / "accuracy_vs_weights.png")


def test_empty_run_writes_page_without_plots(tmp_path: Path) -> None:
    page = write_report(_run(status="running"), [], tmp_path).read_text(encoding="utf-8")
    assert "a1b2c3d4e5" in page and "<img" not in page
    assert not list(tmp_path.glob("*.png"))


def test_generic_kind_writes_table_without_plots(tmp_path: Path) -> None:
    units = [{"step": 1, "loss": 0.123456, "tag": "x<y"}, {"step": 2, "loss": 0.1, "extra": None}]
    page = write_report(_run(kind="sweep"), units, tmp_path).read_text(encoding="utf-8")
    assert not list(tmp_path.glob("*.png")) and "<img" not in page
    assert "0.1235" in page and "x&lt;y" in page and "<th>extra</th>" in page
    assert len(_table_rows(page)) == 2 and "&quot;lenet300&quot;" in page


def test_run_name_is_escaped(tmp_path: Path) -> None:
    name = "<script>alert('x')</script> & co"
    page = write_report(_run(name=name), _units(seeds=(0,)), tmp_path).read_text(encoding="utf-8")
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; co" in page


def _row(level: int, branch: str, weights: float, accs: tuple[float, ...], stop: float = 3000) -> dict:
    mean = sum(accs) / len(accs)
    std = None if len(accs) < 2 else (sum((a - mean) ** 2 for a in accs) / (len(accs) - 1)) ** 0.5
    return {"level": level, "branch": branch, "weights_remaining": weights, "test_acc_mean": mean,
            "test_acc_std": std, "early_stop_iter_mean": stop, "test_acc_by_seed": dict(enumerate(accs))}


def test_lottery_findings_hold_and_fail_by_their_criteria() -> None:
    rows = [
        _row(0, "imp", 1.0, (0.980, 0.980, 0.980), stop=4000),
        _row(3, "imp", 0.51, (0.982, 0.982, 0.982), stop=3000),
        _row(7, "imp", 0.21, (0.984, 0.984, 0.984), stop=3500),
        _row(7, "reinit", 0.21, (0.975, 0.975, 0.975)),
        _row(12, "imp", 0.069, (0.982, 0.983, 0.984)),
        _row(12, "reinit", 0.069, (0.969, 0.970, 0.972)),  # paired gaps 1.3, 1.3, 1.2 points
    ]
    match, reinit, early = lottery_findings(rows)
    assert match["holds"] is True and "21.0%: +0.40" in match["evidence"] and "6.9%: +0.30" in match["evidence"]
    assert reinit["holds"] is True and reinit["evidence"].startswith("6.9%: +1.27 (Holm p 0.00")
    assert "paired t-test" in reinit["criterion"]
    assert early["holds"] is True and early["evidence"] == "51.0%: -1000; 21.0%: -500"

    rows[4] = _row(12, "imp", 0.069, (0.977, 0.978, 0.979))  # 0.2 points below dense
    rows[5] = _row(12, "reinit", 0.069, (0.960, 0.980, 0.970))  # gap 0.8 points, but not consistent over seeds
    rows[2] = _row(7, "imp", 0.21, (0.984, 0.984, 0.984), stop=4500)  # later than dense
    match, reinit, early = lottery_findings(rows)
    assert (match["holds"], reinit["holds"], early["holds"]) == (False, False, False)

    rows[4], rows[5] = _row(12, "imp", 0.069, (0.983,)), _row(12, "reinit", 0.069, (0.970,))
    assert lottery_findings(rows)[1]["holds"] is None  # one seed: no test, no verdict
    assert [f["holds"] for f in lottery_findings(rows[1:])] == [None, None, None]  # no dense level
    assert lottery_findings(rows[:2])[1] == {**lottery_findings(rows[:2])[1], "holds": None,
                                             "evidence": "no level in range"}


def test_lottery_report_shows_the_findings(tmp_path: Path) -> None:
    page = write_report(_run(), _units(), tmp_path).read_text(encoding="utf-8")
    assert "Findings of Frankle &amp; Carbin (2019)" in page
    assert page.count("class='verdict-") == 3
