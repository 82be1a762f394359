"""One way to draw the recipes' PNG plots (headless matplotlib)."""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def figure(path, xlabel: str, ylabel: str, size: tuple[float, float] = (7, 4)):
    """Yields an axes; on exit labels it, adds legend and grid, and saves it to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    try:
        yield ax
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
