"""Which report page and which summary table each experiment kind has (the lottery's live in ``report``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from subnets.runs import report_boosting, report_experts, report_pooling, report_pooling_embeddings

Units = list[dict[str, Any]]

PAGES: dict[str, Callable[[dict[str, Any], Units, Path], str]] = {
    **report_boosting.PAGES, **report_experts.PAGES, **report_pooling.PAGES, **report_pooling_embeddings.PAGES}
TABLES: dict[str, Callable[[Units], list[dict[str, str]]]] = {
    **report_boosting.TABLES, **report_experts.TABLES, **report_pooling.TABLES, **report_pooling_embeddings.TABLES}
