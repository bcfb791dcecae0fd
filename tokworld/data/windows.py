"""Windows over episodes: fixed-length windows that never cross an episode boundary, their
tiling (each step once), real context to imagine from, and held-out episode splits."""

from __future__ import annotations

from collections.abc import Sequence

import datasets
import numpy as np
import torch
from torch.utils.data import Dataset

from tokworld.data.format import episode_bounds
from tokworld.errors import TokWorldError


class WindowDataset(Dataset):
    """Map-style torch dataset of windows of `length` steps from a trajectory dataset.

    Every window lies inside one episode: an episode of L >= T steps gives L - T + 1 windows, a
    shorter one gives one window padded at the end with copies of its last step (so padding
    holds only values every codec accepts; the mask hides it from the losses). Item: a dict of
    (T, ...) tensors for each requested column plus `mask` (T,) bool, False on padding. Use it
    with a `DataLoader` and any sampler (`DistributedSampler`, or `ResumableSampler` in
    training) to shard across processes.
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
        self.ends = np.repeat(starts + lengths, per_episode)  # one past its episode's last row

    def has_event(self, events: np.ndarray, offset: int = 0, span: int | None = None) -> np.ndarray:
        """Per window: whether `events` (one bool per dataset row, see `event_steps`) holds on a
        row of `[start + offset, start + offset + span)` inside its episode. The defaults cover
        the window's own steps."""
        counts = np.concatenate([[0], np.cumsum(events)])
        lo = np.minimum(self.starts + offset, self.ends)
        hi = np.minimum(lo + (self.length if span is None else span), self.ends)
        return counts[hi] > counts[lo]

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        start, valid = int(self.starts[i]), int(self.valid[i])
        rows = self.ds[start : start + valid]
        item = {}
        for name in self.columns:
            x = np.asarray(rows[name])
            pad = np.repeat(x[-1:], self.length - valid, axis=0)
            item[name] = torch.from_numpy(np.concatenate([x, pad]))
        item["mask"] = torch.arange(self.length) < valid
        return item


class Tiling(Dataset):
    """The windows of `windows` that hold each real step of its episodes once: every episode
    tiled backwards from its last step (which holds its end) and, where its length is not a
    multiple of the window's, its first window too, whose `mask` then keeps only the steps
    before the first tile. What held-out evaluation and the event calibration read: a window at
    every start holds a middle step in `length` windows and an episode's last step in one.
    """

    def __init__(self, windows: WindowDataset):
        self.windows = windows
        length = windows.length
        back = windows.ends - length - windows.starts  # steps from the episode's last window
        tile = (back <= 0) | (back % length == 0)  # (< 0: an episode shorter than a window)
        first = np.r_[True, windows.ends[1:] != windows.ends[:-1]]  # an episode's first window
        self.rows = np.flatnonzero(tile | first)
        self.keep = np.where(tile, length, back % length)[self.rows]  # steps it counts

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = self.windows[int(self.rows[i])]
        item["mask"][int(self.keep[i]) :] = False
        return item


class RealContext:
    """Samples windows of `steps` real consecutive steps (never padded) to imagine from.

    Frames come from the dataset's `codes` column when it has one, else they are encoded with
    `tokenizer` (only the sampled frames are). With `event_starts` > 0 that share of every
    sample (rounded) is drawn from the windows whose last step lies at most `horizon` steps
    before a real event (`event_steps`), so that imagination from them reaches the rare rewards
    and ends of a sparse task; the rest are drawn uniformly.
    """

    def __init__(
        self,
        ds: datasets.Dataset,
        steps: int,
        tokenizer=None,
        seed: int = 0,
        event_starts: float = 0.0,
        horizon: int = 1,
    ):
        self.frame_column = "codes" if "codes" in ds.column_names else "observation"
        if self.frame_column == "observation" and tokenizer is None:
            raise TokWorldError("dataset has no 'codes' column: a tokenizer is needed to encode it")
        columns = (self.frame_column, "action", "reward", "terminated")
        columns += ("task",) if "task" in ds.column_names else ()
        self.windows = WindowDataset(ds, steps, columns=columns)
        self.full = np.flatnonzero(self.windows.valid == steps)
        if not self.full.size:
            raise TokWorldError(
                f"no episode of the dataset has {steps} steps: use a shorter context"
            )
        self.tokenizer = tokenizer
        self.rng = np.random.default_rng(seed)
        self.event_starts = event_starts
        self.near_events = self.full[:0]
        if event_starts:
            near = self.windows.has_event(event_steps(ds), steps - 1, horizon)
            self.near_events = self.full[near[self.full]]

    def sample(self, n: int) -> dict[str, torch.Tensor]:
        """n windows: codes (n, C, K), action, reward, terminated (n, C)."""
        near = round(n * self.event_starts) if len(self.near_events) else 0
        picked = self.rng.choice(self.full, n - near)
        if near:
            picked = np.concatenate([picked, self.rng.choice(self.near_events, near)])
        return self.get(picked)

    def get(self, indices) -> dict[str, torch.Tensor]:
        """The windows at `indices` of the full-length windows' dataset."""
        items = [self.windows[int(i)] for i in indices]
        batch = {k: torch.stack([it[k] for it in items]) for k in items[0] if k != "mask"}
        frames = batch.pop(self.frame_column)
        if self.frame_column == "codes":
            batch["codes"] = frames.long()
        else:
            n, c = frames.shape[:2]
            codes = self.tokenizer.encode(frames.flatten(0, 1).to(self.tokenizer.device))
            batch["codes"] = codes.view(n, c, -1).cpu()
            batch["observation"] = frames
        return batch


def event_steps(ds: datasets.Dataset) -> np.ndarray:
    """One bool per row of `ds`: True where the step is a rare event, a terminal end or a
    reward other than the usual one (the value at least half the steps get: 0 in a sparse
    task, 1 in CartPole). Where no value is that common (dense, varied rewards), only ends."""
    table = ds.select_columns(["reward", "terminated"]).with_format("numpy")[:]
    reward, ended = np.asarray(table["reward"]), np.asarray(table["terminated"], dtype=bool)
    values, counts = np.unique(reward, return_counts=True)
    if not len(reward) or 2 * counts.max() < len(reward):
        return ended
    return ended | (reward != values[counts.argmax()])


def oversample(flags: np.ndarray, share: float, seed: int = 0) -> np.ndarray:
    """Indices into `flags` (one bool per item) that take every item once and repeat flagged
    ones, drawn deterministically from `seed`, until they make up `share` (in [0, 1)) of the
    result. Unchanged when there is no flagged item or they already make up that share."""
    rows = np.arange(len(flags))
    hit = rows[np.asarray(flags, dtype=bool)]
    wanted = int(np.ceil(share * (len(rows) - len(hit)) / (1 - share)))
    if not len(hit) or wanted <= len(hit):
        return rows
    extra = np.random.default_rng(seed).choice(hit, wanted - len(hit))
    return np.sort(np.concatenate([rows, extra]))


def split_episodes(
    ds: datasets.Dataset, holdout: float = 0.05, seed: int = 0
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """(train, held-out): a random `holdout` fraction of whole episodes is held out.

    At least one episode is held out and at least one kept; row order is preserved in both.
    """
    starts, lengths = episode_bounds(ds)
    if len(starts) < 2:
        raise TokWorldError("holding out episodes needs a dataset with at least 2 episodes")
    n_held = min(len(starts) - 1, max(1, round(holdout * len(starts))))
    held = np.zeros(len(starts), dtype=bool)
    held[np.random.default_rng(seed).choice(len(starts), n_held, replace=False)] = True
    rows = [np.arange(s, s + n) for s, n in zip(starts, lengths, strict=True)]
    pick = lambda mask: np.concatenate([r for r, m in zip(rows, mask, strict=True) if m])  # noqa: E731
    return ds.select(pick(~held)), ds.select(pick(held))


def _ranges(counts: np.ndarray) -> np.ndarray:
    """[0..c0-1, 0..c1-1, ...] for counts [c0, c1, ...]."""
    total = int(counts.sum())
    offsets = np.repeat(np.cumsum(counts) - counts, counts)
    return np.arange(total) - offsets
