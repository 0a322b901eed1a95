"""Surprise track figures: one panel per record (up to a limit), called regions shaded."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from titans_cli.errors import TitansInputError

PLOT_FORMATS = (".png", ".svg")


@dataclass
class PanelData:
    chrom: str
    starts: np.ndarray
    ends: np.ndarray
    values: np.ndarray
    regions: list = field(default_factory=list)  # objects with .start and .end
    smoothed: np.ndarray | None = None


def check_plot_path(path: str) -> None:
    if not any(path.lower().endswith(ext) for ext in PLOT_FORMATS):
        raise TitansInputError(f"--plot {path}: the file name must end in .png or .svg")


def plot_tracks(panels: list[PanelData], path: str, metric: str, max_panels: int = 8, title: str | None = None) -> int:
    """Draw up to `max_panels` records into `path` (.png or .svg, written atomically). Returns the
    number of panels drawn."""
    check_plot_path(path)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from titans_cli.io.atomic import atomic_path

    shown = panels[:max_panels]
    if not shown:
        raise TitansInputError("nothing to plot: no records")
    figure, axes = plt.subplots(len(shown), 1, figsize=(11, 2.4 * len(shown) + 0.6), squeeze=False)
    for axis, panel in zip(axes[:, 0], shown):
        centres = (panel.starts + panel.ends) / 2.0
        scale, unit = _scale(float(panel.ends[-1]) if panel.ends.size else 1.0)
        axis.plot(centres / scale, panel.values, lw=0.5, color="#7f8fa6", label=metric)
        if panel.smoothed is not None:
            axis.plot(centres / scale, panel.smoothed, lw=1.2, color="#273c75", label=f"{metric}, smoothed")
        for region in panel.regions:
            axis.axvspan(region.start / scale, region.end / scale, color="#e84118", alpha=0.25, lw=0)
        axis.set_title(f"{panel.chrom}" + (f" — {len(panel.regions)} novel region(s)" if panel.regions else ""),
                       fontsize=9, loc="left")
        axis.set_xlabel(f"position ({unit})", fontsize=8)
        axis.set_ylabel(metric, fontsize=8)
        axis.tick_params(labelsize=7)
        axis.margins(x=0)
    if len(panels) > len(shown):
        figure.text(0.99, 0.005, f"{len(panels) - len(shown)} more record(s) not drawn", ha="right", fontsize=7)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    suffix = ".svg" if path.lower().endswith(".svg") else ".png"
    with atomic_path(path, suffix=suffix) as temporary:
        figure.savefig(temporary, dpi=110, format=suffix[1:])
    plt.close(figure)
    return len(shown)


def _scale(length: float) -> tuple[float, str]:
    if length >= 2e6:
        return 1e6, "Mb"
    if length >= 2e3:
        return 1e3, "kb"
    return 1.0, "bp"
