"""Things people look at: GIFs of episodes, contact sheets, real | imagined side by side."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
from einops import rearrange


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (chosen here, on first use, and not as a
    side effect of importing tokworld)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def upscale(frames: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling of (..., H, W, 3) frames, so 64x64 frames are visible."""
    return frames.repeat(factor, axis=-3).repeat(factor, axis=-2)


def write_gif(frames: np.ndarray, path: str | Path, fps: int = 8, scale: int = 2) -> Path:
    """(T, H, W, 3) uint8 frames -> looping GIF at `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, upscale(frames, scale), duration=1000 / fps, loop=0)
    return path


def side_by_side(*videos: np.ndarray, gap: int = 2) -> np.ndarray:
    """(T, H, W, 3) videos of equal shape -> one (T, H, n*W + gaps, 3) video, white gaps."""
    spacer = np.full((*videos[0].shape[:2], gap, 3), 255, np.uint8)
    parts = [p for v in videos for p in (v, spacer)][:-1]
    return np.concatenate(parts, axis=2)


def contact_sheet(
    frames: np.ndarray, path: str | Path, max_rows: int = 8, max_columns: int = 10
) -> Path:
    """(N, T, H, W, 3) episodes -> PNG: one row per episode, evenly spaced time steps."""
    n, t = frames.shape[:2]
    cols = np.linspace(0, t - 1, min(t, max_columns)).round().astype(int)
    grid = frames[: min(n, max_rows)][:, cols]
    grid = np.pad(grid, ((0, 0), (0, 0), (1, 1), (1, 1), (0, 0)), constant_values=255)
    image = rearrange(grid, "r c h w ch -> (r h) (c w) ch")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, image)
    return path
