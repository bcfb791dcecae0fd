"""Real starts to dream from: the run's data (or a given dataset), its context windows, and how
to put the real env where a window ends.

Where the data comes from, first found: `--dataset`; the dataset `RUN/pretrain.json` records
(a pretrained run); the chunks of `RUN/data/chunk_*` concatenated (an online run).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch

from tokworld.data.format import TrajectoryMeta, episode_bounds, load_trajectories
from tokworld.data.windows import RealContext
from tokworld.errors import TokWorldError


@dataclass(frozen=True)
class RealOrigin:
    """How to reach the last frame of a context window in the real env: reset with `seed`, reset
    `resets` more times (the episodes collected before this one), then take `actions`. `frame`
    is the dataset's copy of the frame reached, when the dataset has frames."""

    seed: int | None
    resets: int
    actions: tuple
    frame: np.ndarray | None


@dataclass
class RunData:
    """A trajectory dataset, where it came from, and the collection seed and position of each of
    its episodes (None where it records none)."""

    dataset: datasets.Dataset
    description: str
    episode_seeds: list[int | None]
    episode_ordinals: list[int]

    @property
    def meta(self) -> TrajectoryMeta:
        return TrajectoryMeta.from_dataset(self.dataset)


def find_run_data(run: str | Path, dataset: str | None = None) -> RunData:
    """The data to take real starts from (see the module docstring)."""
    run = Path(run)
    if dataset is not None:
        return _single(load_trajectories(dataset), dataset)
    settings = run / "pretrain.json"
    if settings.exists():
        specs = json.loads(settings.read_text())["dataset"]
        specs = [specs] if isinstance(specs, str) else specs
        if len(specs) != 1:
            raise TokWorldError(
                f"run {run} was pretrained on {len(specs)} datasets: pass --dataset to choose one"
            )
        spec = specs[0]
        ref = spec if Path(spec).exists() else spec.removeprefix("hf:")
        if ref.startswith("minari:"):  # converted into a cache only `pretrain` knows
            raise TokWorldError(f"run {run} was pretrained on {spec}: pass --dataset DIR")
        try:
            return _single(load_trajectories(ref), spec)
        except TokWorldError as e:
            raise TokWorldError(
                f"run {run} was pretrained on {spec}, which cannot be loaded here ({e}): "
                "pass --dataset"
            ) from None
    chunks = sorted((run / "data").glob("chunk_*"))
    if chunks:
        return _chunks(chunks, str(run / "data"))
    raise TokWorldError(
        f"run {run} records no dataset (no pretrain.json, no data/): pass --dataset"
    )


def _single(ds: datasets.Dataset, description: str) -> RunData:
    n = len(episode_bounds(ds)[0])
    seed = TrajectoryMeta.from_dataset(ds).source.get("seed")
    return RunData(ds, description, [seed] * n, list(range(n)))


def _chunks(paths: list[Path], description: str) -> RunData:
    """The chunks in order as one dataset, episode indices renumbered to stay unique."""
    parts = [_single(load_trajectories(str(p)), str(p)) for p in paths]
    episodes, offset = [], 0
    for part in parts:
        ep = part.dataset.select_columns(["episode_index"]).with_format("numpy")[:]
        ep = ep["episode_index"]
        episodes.append(ep - ep.min() + offset)
        offset = int(episodes[-1].max()) + 1
    ds = datasets.concatenate_datasets([p.dataset for p in parts])
    ds = ds.remove_columns("episode_index")
    ds = ds.add_column("episode_index", np.concatenate(episodes).astype(np.int64))
    ds.info.description = parts[0].dataset.info.description
    seeds = [s for p in parts for s in p.episode_seeds]
    ordinals = [o for p in parts for o in p.episode_ordinals]
    return RunData(ds, description, seeds, ordinals)


class Starts:
    """Context windows of `steps` real steps to start dreams from, numbered 0..len-1."""

    def __init__(self, data: RunData, steps: int, tokenizer, seed: int = 0):
        self.data = data
        self.context = RealContext(data.dataset, steps, tokenizer, seed)
        self.steps = steps
        self.episode_starts = episode_bounds(data.dataset)[0]
        self.has_frames = "observation" in data.dataset.column_names

    def __len__(self) -> int:
        return len(self.context.full)

    def sample(self) -> int:
        """A random window."""
        return int(self.context.rng.integers(len(self)))

    def window(self, index: int) -> dict[str, torch.Tensor]:
        """Window `index` as a batch of one: codes (1, C, K), action, reward, terminated (1, C)."""
        batch = self.context.get([self.context.full[index]])
        return {k: batch[k] for k in ("codes", "action", "reward", "terminated")}

    def origin(self, index: int) -> RealOrigin:
        """How the real env reaches the last frame of window `index`."""
        first = int(self.context.windows.starts[self.context.full[index]])
        last = first + self.steps - 1  # row of the frame the dream starts from
        episode = int(np.searchsorted(self.episode_starts, last, side="right")) - 1
        begin = int(self.episode_starts[episode])
        ds = self.data.dataset
        actions = ds.select_columns(["action"]).with_format("numpy")[begin:last]["action"]
        frame = None
        if self.has_frames:
            frame = ds.select_columns(["observation"]).with_format("numpy", dtype=None)[last]
            frame = np.asarray(frame["observation"])
        return RealOrigin(
            seed=self.data.episode_seeds[episode],
            resets=self.data.episode_ordinals[episode],
            actions=tuple(np.asarray(actions).tolist()),
            frame=frame,
        )
