"""Novel regions: a smoothed track, a robust z-score per record, threshold, merge, minimum length.

The z-score is robust, `(x - median) / (1.4826 * MAD)`, so a few large islands in a genome do not
inflate the scale they are measured against (1.4826 makes the MAD estimate a Gaussian sigma).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class Region:
    """One called region, BED6-ready: 0-based half-open [start, end) on `chrom`."""

    chrom: str
    start: int
    end: int
    name: str
    score: int  # BED score 0..1000: 100 x the region's mean z, clipped
    mean_z: float
    max_z: float
    strand: str = "."


def robust_z(values: np.ndarray) -> np.ndarray:
    """(x - median) / (1.4826 MAD); NaNs stay NaN. A zero MAD falls back to the standard
    deviation, and a constant track gives all zeros."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.full_like(values, np.nan)
    median = np.median(finite)
    scale = MAD_TO_SIGMA * np.median(np.abs(finite - median))
    if not scale > 0:
        scale = finite.std()
    if not scale > 0:
        return np.where(np.isfinite(values), 0.0, np.nan)
    return (values - median) / scale


def smooth(values: np.ndarray, bins: int) -> np.ndarray:
    """Centred moving average over `bins` windows, ignoring NaNs; the ends average what exists."""
    values = np.asarray(values, dtype=np.float64)
    if bins <= 1 or values.size == 0:
        return values.copy()
    finite = np.isfinite(values)
    filled = np.where(finite, values, 0.0)
    kernel = np.ones(int(bins))
    sums = np.convolve(filled, kernel, mode="same")
    counts = np.convolve(finite.astype(np.float64), kernel, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def call_regions(
    chrom: str,
    starts: np.ndarray,
    ends: np.ndarray,
    values: np.ndarray,
    threshold: float = 3.0,
    smooth_bases: int = 2000,
    min_length: int = 1000,
    merge_gap: int = 1000,
    name_prefix: str = "novel",
) -> tuple[list[Region], np.ndarray]:
    """Call regions on one record's windowed track (windows [starts, ends) in order).

    Returns the regions and the per-window robust z-score of the smoothed track (for plots).
    Runs of windows with z >= threshold are joined when the gap between them is <= merge_gap
    bases, then runs shorter than min_length bases are dropped."""
    starts = np.asarray(starts, dtype=np.int64)
    ends = np.asarray(ends, dtype=np.int64)
    if starts.size == 0:
        return [], np.zeros(0)
    window = max(1, int(np.median(ends - starts)))
    smoothed = smooth(values, max(1, int(round(smooth_bases / window))))
    z = robust_z(smoothed)
    above = np.nan_to_num(z, nan=-np.inf) >= threshold
    runs = _runs(above)
    merged: list[list[int]] = []  # [first window, last window] inclusive
    for first, last in runs:
        if merged and starts[first] - ends[merged[-1][1]] <= merge_gap:
            merged[-1][1] = last
        else:
            merged.append([first, last])
    regions = []
    for first, last in merged:
        start, end = int(starts[first]), int(ends[last])
        if end - start < min_length:
            continue
        segment = z[first : last + 1]
        segment = segment[np.isfinite(segment)]
        mean_z = float(segment.mean()) if segment.size else float("nan")
        max_z = float(segment.max()) if segment.size else float("nan")
        score = int(np.clip(round(100 * mean_z), 0, 1000)) if np.isfinite(mean_z) else 0
        regions.append(Region(chrom, start, end, f"{name_prefix}_{len(regions) + 1}", score, mean_z, max_z))
    return regions, z


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) index pairs of the True runs of a boolean array."""
    if mask.size == 0:
        return []
    padded = np.concatenate([[False], mask, [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return [(int(a), int(b) - 1) for a, b in zip(edges[::2], edges[1::2])]
