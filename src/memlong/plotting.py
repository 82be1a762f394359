"""One way to draw the recipes' PNG plots (headless matplotlib)."""

from __future__ import annotations

from contextlib import contextmanager


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend: plots are written to files, no display needed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@contextmanager
def figure(path, xlabel: str, ylabel: str, size: tuple[float, float] = (7, 4)):
    """Yields an axes; on exit labels it, adds legend and grid, and saves it to ``path``."""
    fig, ax = pyplot().subplots(figsize=size)
    try:
        yield ax
        finish(ax, xlabel, ylabel)
        save(fig, path)
    finally:
        pyplot().close(fig)


def finish(ax, xlabel: str, ylabel: str, legend_size: float | None = None, legend: bool = True) -> None:
    """Labels ``ax``, adds a grid and, when something on it is labelled, a legend (``legend=False``:
    none, e.g. on a panel beside one that has it)."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=legend_size)


def save(fig, path, dpi: int = 120) -> None:
    """Lays ``fig`` out tightly, writes it to ``path`` and closes it."""
    try:
        fig.tight_layout()
        fig.savefig(path, dpi=dpi)
    finally:
        pyplot().close(fig)


def score_grid(
    ax, cells: list[list[float]], xticks: list[str], yticks: list[str], title: str, fontsize: float = 7
) -> None:
    """A heatmap of scores in [0, 1], ``cells[row][column]`` (NaN where nothing was measured), red to
    green, each cell labelled with its value (``-`` where NaN, at ``fontsize``)."""
    ax.imshow(cells, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
    ax.set_title(title, fontsize=9)
    ax.set_xticks(range(len(xticks)), xticks, fontsize=7)
    ax.set_yticks(range(len(yticks)), yticks, fontsize=7)
    for i, row in enumerate(cells):
        for j, v in enumerate(row):
            ax.text(j, i, "-" if v != v else f"{v:.2f}", ha="center", va="center", fontsize=fontsize)
