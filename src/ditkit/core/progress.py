"""Progress reporting on stderr (rich), shared by the CLI, trainer and evaluator."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator


def stderr_console():
    from rich.console import Console  # lazy: rich loads only when something is shown

    return Console(stderr=True)


@contextmanager
def progress_bar(label: str, total: int, enabled: bool = True,
                 follow_total: bool = False) -> Iterator[Callable[[int, int], None]]:
    """Yields a callback(done, total) that advances a rich bar on stderr."""
    if not enabled:
        yield lambda done, total: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # lazy, as above

    with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=stderr_console(), transient=True) as p:
        task = p.add_task(label, total=total)
        if follow_total:  # one bar for phases of different lengths: each report sets the total
            yield lambda done, total: p.update(task, completed=done, total=total)
        else:
            yield lambda done, _total: p.update(task, completed=done)


def progress_callback(bar: Callable[[int, int], None]) -> Callable[[dict], None]:
    """An engine callback (it receives the step dict of ditkit.engine, with "done" and "total"
    counted in image-steps over the whole request) that advances a bar(done, total)."""
    return lambda info: bar(info["done"], info["total"])
