"""WindowDataset: fixed-length windows inside episodes, padding, DataLoader and sharding."""

from __future__ import annotations

import datasets
import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from tokworld.data.format import TrajectoryMeta, write_trajectories
from tokworld.data.windows import WindowDataset
from tokworld.errors import TokWorldError

LENGTHS = (3, 7, 5)  # episode lengths of the synthetic dataset
T = 5


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> datasets.Dataset:
    """Episodes of LENGTHS steps whose frames, actions and rewards all hold the row number."""

    def rows():
        row = 0
        for episode, length in enumerate(LENGTHS):
            for t in range(length):
                yield {
                    "episode_index": episode,
                    "frame_index": t,
                    "observation": np.full((2, 2, 3), row + 1, np.uint8),
                    "action": row % 4,
                    "reward": float(row + 1),
                    "terminated": t == length - 1,
                    "truncated": False,
                }
                row += 1

    meta = TrajectoryMeta("synthetic", {"type": "Discrete", "n": 4, "start": 0}, 2)
    out = tmp_path_factory.mktemp("synthetic") / "ds"
    return write_trajectories(rows, out, meta, (2, 2, 3))


def test_windows_tile_each_episode_and_pad_the_short_one(synthetic):
    windows = WindowDataset(synthetic, T, columns=("observation", "reward", "episode_index"))
    # An episode of L >= T steps gives L - T + 1 windows, a shorter one gives one padded window.
    assert len(windows) == 1 + (7 - T + 1) + (5 - T + 1)
    first = windows[0]
    assert first["mask"].tolist() == [True] * 3 + [False] * 2
    assert first["observation"].shape == (T, 2, 2, 3)
    assert first["observation"].dtype == torch.uint8
    assert first["observation"][:, 0, 0, 0].tolist() == [1, 2, 3, 3, 3]  # the last step again
    assert first["reward"].tolist() == [1.0, 2.0, 3.0, 3.0, 3.0]
    # The windows of episode 1 start at each of its rows 3, 4, 5 and stay inside it.
    for i, start in zip((1, 2, 3), (3, 4, 5), strict=True):
        item = windows[i]
        assert bool(item["mask"].all())
        assert item["reward"].tolist() == [float(start + k + 1) for k in range(T)]
        assert set(item["episode_index"].tolist()) == {1}
    assert windows[4]["reward"].tolist() == [11.0, 12.0, 13.0, 14.0, 15.0]


def test_a_window_longer_than_every_episode_pads_each_once(synthetic):
    windows = WindowDataset(synthetic, 10, columns=("reward",))
    assert len(windows) == len(LENGTHS)
    assert [int(windows[i]["mask"].sum()) for i in range(len(windows))] == list(LENGTHS)


@pytest.mark.parametrize("fixture", ["pong_dataset", "minigrid_dataset"])
def test_windows_never_cross_episode_boundaries(request, fixture):
    ds = datasets.load_from_disk(request.getfixturevalue(fixture))
    columns = ("observation", "action", "episode_index", "frame_index", "terminated", "truncated")
    windows = WindowDataset(ds, 16, columns=columns)
    episode_lengths = np.bincount(np.asarray(ds["episode_index"]))
    assert len(windows) == int(np.maximum(episode_lengths - 16 + 1, 1).sum())
    for i in range(len(windows)):
        item = windows[i]
        mask = item["mask"]
        valid = int(mask.sum())
        assert bool(mask[:valid].all()) and not bool(mask[valid:].any())  # padding at the end
        episodes = item["episode_index"][mask]
        assert bool((episodes == episodes[0]).all())
        frames = item["frame_index"][mask]
        assert torch.equal(frames, frames[0] + torch.arange(valid))
        ends = (item["terminated"] | item["truncated"])[mask]
        assert not bool(ends[:-1].any())  # only the last valid step may end the episode
        assert item["observation"].dtype == torch.uint8


def test_dataloader_batches_windows(minigrid_dataset):
    windows = WindowDataset(datasets.load_from_disk(minigrid_dataset), 8)
    loader = DataLoader(windows, batch_size=4, shuffle=True, num_workers=2)
    batches = list(loader)
    assert len(batches) == -(-len(windows) // 4)
    batch = batches[0]
    assert set(batch) == {"observation", "action", "reward", "terminated", "mask"}
    assert batch["observation"].shape == (4, 8, 64, 64, 3)
    assert batch["observation"].dtype == torch.uint8
    assert batch["mask"].shape == (4, 8) and batch["mask"].dtype == torch.bool
    assert sum(len(b["mask"]) for b in batches) == len(windows)


@pytest.mark.parametrize("shuffle", [False, True])
def test_distributed_sampler_gives_disjoint_shards(minigrid_dataset, shuffle):
    windows = WindowDataset(datasets.load_from_disk(minigrid_dataset), 8, columns=("reward",))
    shards = [
        list(DistributedSampler(windows, num_replicas=2, rank=r, shuffle=shuffle, drop_last=True))
        for r in range(2)
    ]
    assert len(shards[0]) == len(shards[1]) == len(windows) // 2
    assert not set(shards[0]) & set(shards[1])
    assert len(set(shards[0]) | set(shards[1])) == 2 * (len(windows) // 2)
    for rank, shard in enumerate(shards):
        sampler = DistributedSampler(windows, num_replicas=2, rank=rank, shuffle=shuffle)
        sampler.set_epoch(0)
        loader = DataLoader(windows, batch_size=len(shard), sampler=sampler)
        assert next(iter(loader))["reward"].shape == (len(sampler), 8)


def test_bad_windows_are_errors(synthetic):
    with pytest.raises(TokWorldError, match="window length"):
        WindowDataset(synthetic, 0)
    with pytest.raises(TokWorldError, match="missing column 'value'"):
        WindowDataset(synthetic, 2, columns=("observation", "value"))


def test_box_actions_come_out_per_dimension(tmp_path):
    space = gym.spaces.Box(-1, 1, (2,), dtype=np.float32)

    def rows():
        for t in range(4):
            yield {
                "episode_index": 0,
                "frame_index": t,
                "observation": np.zeros((2, 2, 3), np.uint8),
                "action": [t / 4, -t / 4],
                "reward": 0.0,
                "terminated": t == 3,
                "truncated": False,
            }

    meta = TrajectoryMeta("box", {"type": "Box", "low": [-1, -1], "high": [1, 1]}, 2)
    ds = write_trajectories(rows, tmp_path / "box", meta, (2, 2, 3))
    assert meta.space == space
    item = WindowDataset(ds, 3, columns=("action",))[1]
    assert item["action"].dtype == torch.float32
    assert torch.equal(item["action"], torch.tensor([[0.25, -0.25], [0.5, -0.5], [0.75, -0.75]]))
