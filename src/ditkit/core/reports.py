"""What `ditkit eval` leaves behind: JSON, matplotlib plots and a one-page Markdown
report per run. Plots use the Agg backend and are written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ditkit.core.files import atomic_write, atomic_write_json, atomic_write_text


def write_json(path: str | Path, data: dict) -> None:
    atomic_write_json(path, data)


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib  # optional heavy dependency: loaded only when a plot is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path) -> None:
    """Write a figure as PNG atomically and free it."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    pyplot().close(fig)


def bar_plot(path: str | Path, values: dict[str, float], title: str, ylabel: str = "score",
             ylim: tuple[float, float] | None = (0.0, 1.0)) -> None:
    """One bar per key, the value printed on top."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(values) + 1.5), 3.5))
    names, vals = list(values), [float(v) for v in values.values()]
    bars = ax.bar(range(len(vals)), vals, color="tab:blue")
    ax.set_xticks(range(len(vals)), names, rotation=20 if len(names) > 5 else 0, ha="right" if len(names) > 5 else "center")
    for b, v in zip(bars, vals):
        ax.text(b.get_x() + b.get_width() / 2, v, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    if ylim:
        ax.set_ylim(*ylim)
    ax.set_ylabel(ylabel), ax.set_title(title)
    fig.tight_layout()
    save_figure(fig, path)


def line_plot(path: str | Path, xs: Sequence[float], series: dict[str, Sequence[float]], title: str,
              xlabel: str, ylabel: str = "score", logx: bool = False, ylim: tuple[float, float] | None = (0.0, 1.02)) -> None:
    """Several named series over the same x values."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, ys in series.items():
        ax.plot(xs, ys, "o-", label=name, lw=2.2 if name == "overall" else 1.2)
    if logx:
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(xs), [str(x) for x in xs])
    if ylim:
        ax.set_ylim(*ylim)
    ax.set_xlabel(xlabel), ax.set_ylabel(ylabel), ax.set_title(title), ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def confusion_plot(path: str | Path, confusion: Sequence[Sequence[int]], title: str) -> None:
    """Rows: prompted class, columns: predicted class."""
    plt = pyplot()
    m = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(m, cmap="Blues")
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            if m[i, j]:
                ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if m[i, j] > m.max() / 2 else "black")
    ax.set_xticks(range(m.shape[1])), ax.set_yticks(range(m.shape[0]))
    ax.set_xlabel("predicted"), ax.set_ylabel("prompted"), ax.set_title(title)
    fig.tight_layout()
    save_figure(fig, path)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    def fmt(v) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_report(path: str | Path, title: str, command: str, sections: Sequence[tuple[str, str]]) -> None:
    """A one-page Markdown report: title, the command that made it, then (heading, body) sections.
    Bodies are Markdown (tables, image links relative to the report's folder)."""
    parts = [f"# {title}", "", "Produced by:", "", "```", command, "```", ""]
    for heading, body in sections:
        parts += [f"## {heading}", "", body.strip(), ""]
    text = "\n".join(parts)
    atomic_write_text(path, text)
