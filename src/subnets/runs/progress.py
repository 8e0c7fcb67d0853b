"""Progress bars (rich) for long work reported through :class:`subnets.progress.Progress`."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichBars

from subnets.progress import Progress


class BarProgress(Progress):
    """Draws one bar per task on stderr; finished inner tasks disappear, log lines stay. Nothing is drawn before the
    first task or log line, so a run that fails its checks prints only its error."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.bars = RichBars(
            TextColumn("{task.description}"), BarColumn(bar_width=24), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=self.console,
        )
        self.tasks: dict[str, int] = {}
        self.drawing = False

    def __enter__(self) -> BarProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.drawing:
            self.bars.stop()

    def _draw(self) -> None:
        if not self.drawing:
            self.bars.start()
            self.drawing = True

    def start(self, key: str, total: int, description: str = "") -> None:
        self._draw()
        self.tasks[key] = self.bars.add_task(f"{key} {description}".strip(), total=total, info="")

    def advance(self, key: str, steps: int = 1, **metrics: float) -> None:
        if key not in self.tasks:
            return
        info = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
        self.bars.update(self.tasks[key], advance=steps, **({"info": info} if info else {}))

    def finish(self, key: str) -> None:
        task = self.tasks.pop(key, None)
        if task is not None and len(self.tasks) > 0:
            self.bars.remove_task(task)

    def log(self, message: str) -> None:
        self._draw()
        self.console.print(message, highlight=False)
