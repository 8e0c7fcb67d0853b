"""What every benchmark shares: its command line, the thread counts it measures at, and its JSON result."""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).parent / "results"


def parse_args(doc: str) -> argparse.Namespace:
    """``--quick`` and ``--threads`` (a comma-separated list; default: 1 and torch's default count)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations and repeats (a smoke test)")
    parser.add_argument("--threads", default=None,
                        help="comma-separated torch thread counts to measure at (default: 1 and torch's default)")
    args = parser.parse_args()
    default = torch.get_num_threads()
    args.threads = ([int(t) for t in args.threads.split(",")] if args.threads
                    else sorted({1, default}))
    return args


def write_result(name: str, result: dict[str, Any]) -> Path:
    """Write ``benchmarks/results/NAME.json`` with the machine's description added; returns its path."""
    path = RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": name, **result, "torch": torch.__version__, "machine": platform.machine(),
              "processor": platform.processor() or platform.machine()}
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
