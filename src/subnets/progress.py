"""Progress reporting for long work, without printing.

Library code below ``subnets.runs`` never prints: it calls a :class:`Progress` object. The default one
does nothing; ``subnets.runs`` passes one that draws progress bars.
"""

from __future__ import annotations


class Progress:
    """Receives progress of long work. Every method is a no-op here; subclasses render it."""

    def start(self, key: str, total: int, description: str = "") -> None:
        """A task named ``key`` with ``total`` steps begins."""

    def advance(self, key: str, steps: int = 1, **metrics: float) -> None:
        """Task ``key`` made ``steps`` more steps; ``metrics`` are the latest values worth showing."""

    def finish(self, key: str) -> None:
        """Task ``key`` ended (completed or abandoned)."""

    def log(self, message: str) -> None:
        """A line worth keeping in the run log."""


SILENT = Progress()
