"""Fixed-length windows of consecutive steps that never cross an episode boundary."""

from __future__ import annotations

from collections.abc import Sequence

import datasets
import numpy as np
import torch
from torch.utils.data import Dataset

from tokworld.data import episode_bounds
from tokworld.errors import TokWorldError


class WindowDataset(Dataset):
    """Map-style torch dataset of windows of `length` steps from a trajectory dataset.

    Every window lies inside one episode: an episode of L >= T steps gives L - T + 1 windows, a
    shorter one gives one window padded at the end. Item: a dict of (T, ...) tensors for each
    requested column plus `mask` (T,) bool, False on padding. Use it with a `DataLoader` and any
    sampler (`DistributedSampler`, or `ResumableSampler` in training) to shard across processes.
    """

    def __init__(
        self,
        ds: datasets.Dataset,
        length: int,
        columns: Sequence[str] = ("observation", "action", "reward", "terminated"),
    ):
        if length < 1:
            raise TokWorldError(f"window length must be >= 1, got {length}")
        missing = [c for c in columns if c not in ds.column_names]
        if missing:
            raise TokWorldError(f"dataset is missing column {missing[0]!r}")
        self.length = length
        self.columns = tuple(columns)
        # dtype=None keeps the stored dtypes: without it `datasets` widens uint8 frames to int64.
        self.ds = ds.select_columns(list(self.columns)).with_format("numpy", dtype=None)
        starts, lengths = episode_bounds(ds)
        per_episode = np.maximum(lengths - length + 1, 1)
        self.starts = np.repeat(starts, per_episode) + _ranges(per_episode)
        self.valid = np.minimum(np.repeat(lengths, per_episode) - _ranges(per_episode), length)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        start, valid = int(self.starts[i]), int(self.valid[i])
        rows = self.ds[start : start + valid]
        item = {}
        for name in self.columns:
            x = np.asarray(rows[name])
            pad = np.zeros((self.length - valid, *x.shape[1:]), dtype=x.dtype)
            item[name] = torch.from_numpy(np.concatenate([x, pad]))
        item["mask"] = torch.arange(self.length) < valid
        return item


def _ranges(counts: np.ndarray) -> np.ndarray:
    """[0..c0-1, 0..c1-1, ...] for counts [c0, c1, ...]."""
    total = int(counts.sum())
    offsets = np.repeat(np.cumsum(counts) - counts, counts)
    return np.arange(total) - offsets
