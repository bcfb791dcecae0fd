"""Things people look at: GIFs of episodes, contact sheets, real | imagined side by side.

Every image and figure is written atomically (`tokworld.folders.atomic_file`): an interrupted
write leaves the previous file, or none, never a truncated one.
"""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
from einops import rearrange

from tokworld.folders import atomic_file


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (chosen here, on first use, and not as a
    side effect of importing tokworld)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_image(image: np.ndarray, path: str | Path, **options) -> Path:
    """uint8 (H, W, 3) image, or (T, H, W, 3) frames for a GIF, -> `path` (format from its
    suffix; `options` go to `imageio.v3.imwrite`)."""
    with atomic_file(path) as tmp:
        iio.imwrite(tmp, image, **options)
    return Path(path)


def save_figure(fig, path: str | Path, **options) -> Path:
    """A matplotlib figure -> `path` (`options` go to `savefig`); the figure is closed."""
    with atomic_file(path) as tmp:
        fig.savefig(tmp, **options)
    pyplot().close(fig)
    return Path(path)


def upscale(frames: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling of (..., H, W, 3) frames, so 64x64 frames are visible."""
    return frames.repeat(factor, axis=-3).repeat(factor, axis=-2)


def write_gif(frames: np.ndarray, path: str | Path, fps: int = 8, scale: int = 2) -> Path:
    """(T, H, W, 3) uint8 frames -> looping GIF at `path`."""
    return write_image(upscale(frames, scale), path, duration=1000 / fps, loop=0)


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
    return write_image(image, path)
