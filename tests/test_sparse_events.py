"""Sparse rewards: event windows found exactly, repeated to a share in world-model training, and
imagination started just before real events."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_world_model import _model, codes_dataset

from tokworld.data.windows import RealContext, WindowDataset, event_steps, oversample
from tokworld.errors import TokWorldError
from tokworld.training import world_model as wm
from tokworld.training.imagination import ImaginationConfig
from tokworld.training.loop import TrainConfig
from tokworld.training.online_config import OnlineConfig
from tokworld.training.pretrain import PretrainConfig

EPISODES = (12, 7, 9, 15, 10)
EVENT_ROWS = (5, 27)  # a reward inside episode 0, and the end of episode 2 (rows 19-27)


def sparse_dataset():
    """`codes_dataset` whose only events are EVENT_ROWS, and whose first two codes spell the row
    number (so a sampled window tells which rows it holds)."""
    ds = codes_dataset(EPISODES)

    def mark(item, i):
        codes = [i % 32, i // 32, *item["codes"][2:]]
        return {"codes": codes, "reward": float(i == 5), "terminated": i == 27}

    ds = ds.map(mark, with_indices=True)
    assert np.array_equal(np.flatnonzero(event_steps(ds)), EVENT_ROWS)
    return ds


def brute_force(windows: WindowDataset, offset: int, span: int) -> np.ndarray:
    """Per window: an event row in [start + offset, start + offset + span) of its episode."""
    return np.array([
        any(start + offset <= e < min(start + offset + span, end) for e in EVENT_ROWS)
        for start, end in zip(windows.starts, windows.ends, strict=True)
    ])  # fmt: skip


@pytest.mark.parametrize(("length", "offset", "span"), [(4, 0, 4), (20, 0, 20), (3, 2, 5)])
def test_has_event_finds_exactly_the_windows_near_an_event_inside_its_episode(length, offset, span):
    ds = sparse_dataset()
    windows = WindowDataset(ds, length, columns=("reward",))
    got = windows.has_event(event_steps(ds), offset, span)
    assert np.array_equal(got, brute_force(windows, offset, span))
    assert got.any() and not got.all()
    if (offset, span) == (0, length):  # the defaults cover the window's own steps
        assert np.array_equal(windows.has_event(event_steps(ds)), got)


def test_events_are_ends_and_rewards_other_than_the_usual_one():
    ds = codes_dataset(EPISODES)  # rewards -1, 0, 1 in about equal shares: none is usual
    ended = np.asarray(ds["terminated"])
    assert np.array_equal(event_steps(ds), ended)
    # CartPole-like: 1 on every step but one; the usual 1 is no event, the one 0 is.
    dense = ds.map(lambda item, i: {"reward": 0.0 if i == 3 else 1.0}, with_indices=True)
    expected = ended.copy()
    expected[3] = True
    assert np.array_equal(event_steps(dense), expected)


@pytest.mark.parametrize("share", [0.25, 0.5, 0.9])
def test_oversample_repeats_flagged_items_up_to_the_share(share):
    flags = np.zeros(200, dtype=bool)
    flags[[3, 77]] = True
    rows = oversample(flags, share, seed=1)
    assert np.array_equal(np.unique(rows), np.arange(200))  # every item at least once
    assert share <= flags[rows].mean() < share + 1 / len(rows) + 1e-9
    assert set(rows[flags[rows]]) == {3, 77}
    assert np.array_equal(rows, oversample(flags, share, seed=1))


def test_oversample_leaves_data_without_events_or_with_enough_of_them_alone():
    assert np.array_equal(oversample(np.zeros(10, bool), 0.5), np.arange(10))
    assert np.array_equal(oversample(np.ones(10, bool), 0.5), np.arange(10))
    assert np.array_equal(oversample(np.arange(10) < 6, 0.5), np.arange(10))
    assert np.array_equal(oversample(np.arange(10) < 2, 0.0), np.arange(10))


def test_world_model_training_sees_event_windows_at_the_share(monkeypatch, tmp_path):
    seen = {}

    def fake_train(model, dataset, cfg, out_dir, **kwargs):
        seen["dataset"] = dataset
        return {}

    monkeypatch.setattr(wm, "train", fake_train)
    model, ds = _model(), sparse_dataset()
    cfg = TrainConfig(steps=1, batch_size=2)
    windows = wm.window_dataset(model, ds)
    has_event = windows.has_event(event_steps(ds))
    for share, expected in ((0.0, has_event.mean()), (0.6, 0.6)):
        wm.train_world_model(
            model, ds, cfg, tmp_path / str(share), progress=False, event_share=share
        )
        picked = np.asarray(seen["dataset"].indices)
        assert np.array_equal(np.unique(picked), np.arange(len(windows)))
        assert expected <= has_event[picked].mean() < expected + 0.05
    assert has_event.mean() < 0.5  # so 0.6 needed repeats


def test_event_starts_draw_their_share_just_before_real_events():
    ds, horizon, steps = sparse_dataset(), 3, 2
    context = RealContext(ds, steps, seed=0, event_starts=0.5, horizon=horizon)
    codes = context.sample(16)["codes"]  # (16, steps, K)
    last = (codes[:, -1, 0] + 32 * codes[:, -1, 1]).tolist()  # each window's last row
    near = {r for e in EVENT_ROWS for r in range(e - horizon + 1, e + 1)}
    assert all(r in near for r in last[8:])  # the event share comes last
    assert sum(r in near for r in last[:8]) < 8
    uniform = RealContext(ds, steps, seed=0).sample(16)["codes"]
    assert torch.equal(
        uniform, RealContext(ds, steps, seed=0, event_starts=0.0).sample(16)["codes"]
    )


def test_event_settings_out_of_range_are_errors():
    with pytest.raises(TokWorldError, match="event_starts must lie in"):
        ImaginationConfig(event_starts=1.5)
    with pytest.raises(TokWorldError, match="event_share must lie in"):
        OnlineConfig(env_id="CartPole-v1", event_share=1.0)
    with pytest.raises(TokWorldError, match="event_share must lie in"):
        PretrainConfig(dataset=("d",), event_share=-0.1)
