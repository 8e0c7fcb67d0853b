"""Boosted MLP fit time per stage and in total, against an Adam MLP of the same width, on 20,000-row sets.

For each set (make_classification, make_regression and make_friedman1 with 20,000 rows and 20 / 20 / 10
features; 15,000 to fit, 5,000 to score), the boosted MLP grows ``STAGES`` stages of ``UNITS`` units, each fitted
with ``STEPS`` full-batch Adam steps; the baseline is one hidden layer of ``STAGES * UNITS`` units (same width,
same activation, inputs and targets standardised the same way) trained with full-batch Adam for the same total
number of steps, ``STAGES * STEPS``. Both report the fit time and the test score (accuracy or R^2); the boosted MLP
also its time per stage. Prints a table and writes ``benchmarks/results/boosting_fit.json``.

    python benchmarks/boosting_fit.py [--quick] [--threads 1,2]
"""

from __future__ import annotations

import datetime
import statistics
import time

import numpy as np
import torch
from common import parse_args, write_result
from rich.console import Console
from rich.table import Table
from sklearn.datasets import make_classification, make_friedman1, make_regression

from subnets.boosting import BoostedMLPClassifier, BoostedMLPRegressor

STAGES, UNITS, STEPS, ROWS, FIT_ROWS = 20, 8, 200, 20_000, 15_000


def datasets(rows: int) -> dict[str, tuple[np.ndarray, np.ndarray, bool]]:
    """name -> (X, y, is_classification)."""
    x_c, y_c = make_classification(rows, 20, n_informative=10, random_state=0)
    x_r, y_r = make_regression(rows, 20, n_informative=10, noise=10.0, random_state=0)
    x_f, y_f = make_friedman1(rows, 10, noise=1.0, random_state=0)
    return {"make_classification": (x_c, y_c, True), "make_regression": (x_r, y_r, False),
            "make_friedman1": (x_f, y_f, False)}


def adam_mlp(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, classification: bool,
             width: int, steps: int) -> tuple[float, float]:
    """Fit seconds and test score of a one-hidden-layer ReLU MLP trained with full-batch Adam (lr 0.01)."""
    torch.manual_seed(0)
    mean, std = x.mean(0), x.std(0) + 1e-12
    inputs, test = (torch.tensor((a - mean) / std, dtype=torch.float32) for a in (x, x_test))
    outputs = int(y.max()) + 1 if classification else 1
    model = torch.nn.Sequential(torch.nn.Linear(x.shape[1], width), torch.nn.ReLU(), torch.nn.Linear(width, outputs))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    if classification:
        target = torch.tensor(y)
    else:
        shift, scale = y.mean(), y.std()
        target = torch.tensor((y - shift) / scale, dtype=torch.float32)[:, None]
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad()
        out = model(inputs)
        loss = (torch.nn.functional.cross_entropy(out, target) if classification
                else torch.nn.functional.mse_loss(out, target))
        loss.backward()
        optimizer.step()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        pred = model(test)
    if classification:
        return seconds, float((pred.argmax(1).numpy() == y_test).mean())
    pred = pred[:, 0].numpy() * scale + shift
    return seconds, float(1 - ((pred - y_test) ** 2).sum() / ((y_test - y_test.mean()) ** 2).sum())


def main() -> None:
    args = parse_args(__doc__)
    stages, steps, rows, fit_rows = (4, 50, 4000, 3000) if args.quick else (STAGES, STEPS, ROWS, FIT_ROWS)
    results = []
    x, y, _ = datasets(1000)["make_classification"]
    BoostedMLPClassifier(n_stages=2, stage_steps=5).fit(x, y)  # warm-up: first torch and scipy calls
    for threads in args.threads:
        torch.set_num_threads(threads)
        for name, (x, y, classification) in datasets(rows).items():
            estimator = (BoostedMLPClassifier if classification else BoostedMLPRegressor)(
                n_stages=stages, units_per_stage=UNITS, stage_steps=steps, random_state=0)
            start = time.perf_counter()
            estimator.fit(x[:fit_rows], y[:fit_rows])
            boosted_seconds = time.perf_counter() - start
            boosted_score = estimator.score(x[fit_rows:], y[fit_rows:])
            mlp_seconds, mlp_score = adam_mlp(x[:fit_rows], y[:fit_rows], x[fit_rows:], y[fit_rows:], classification,
                                              stages * UNITS, stages * steps)
            results.append({
                "dataset": name, "threads": threads, "metric": "accuracy" if classification else "r2",
                "boosted": {"fit_seconds": boosted_seconds, "stage_seconds_median": statistics.median(
                    estimator.stage_seconds_), "stage_seconds": estimator.stage_seconds_, "test_score": boosted_score},
                "adam_mlp": {"fit_seconds": mlp_seconds, "test_score": mlp_score},
                "fit_time_ratio_boosted_vs_adam": boosted_seconds / mlp_seconds,
            })
    table = Table(title=f"Boosted MLP ({stages} stages x {UNITS} units, {steps} Adam steps each) vs an Adam MLP of "
                        f"{stages * UNITS} units ({stages * steps} steps), {fit_rows:,} rows to fit")
    for column in ("dataset", "threads", "metric", "boosted s", "s / stage", "boosted score", "Adam MLP s",
                   "Adam MLP score", "time ratio"):
        table.add_column(column, justify="right")
    for r in results:
        table.add_row(r["dataset"], str(r["threads"]), r["metric"], f"{r['boosted']['fit_seconds']:.1f}",
                      f"{r['boosted']['stage_seconds_median']:.2f}", f"{r['boosted']['test_score']:.4f}",
                      f"{r['adam_mlp']['fit_seconds']:.1f}", f"{r['adam_mlp']['test_score']:.4f}",
                      f"{r['fit_time_ratio_boosted_vs_adam']:.2f}")
    Console().print(table)
    if not args.quick:
        result = {"date": datetime.date.today().isoformat(), "stages": stages, "units_per_stage": UNITS,
                  "stage_steps": steps, "rows": rows, "fit_rows": fit_rows, "results": results}
        print(f"written to {write_result('boosting_fit', result)}")


if __name__ == "__main__":
    main()
