"""Trajectory datasets: what collection writes, loading, and validation of bad datasets."""

from __future__ import annotations

import datasets
import gymnasium as gym
import numpy as np
import pytest

from tokworld.data import format as data_format
from tokworld.data.collect import collect
from tokworld.data.format import TrajectoryMeta, features_for, load_trajectories, write_trajectories
from tokworld.data.validate import validate_trajectories
from tokworld.envs import make_env
from tokworld.errors import TokWorldError

ENVS = {"pong_dataset": "ALE/Pong-v5", "minigrid_dataset": "MiniGrid-Empty-5x5-v0"}


@pytest.fixture(params=sorted(ENVS))
def collected(request) -> tuple[str, str]:
    """(env id, dataset path) for each collected session dataset."""
    return ENVS[request.param], request.getfixturevalue(request.param)


def columns(ds: datasets.Dataset) -> dict[str, np.ndarray]:
    """Every column as a numpy array of its stored dtype."""
    return ds.with_format("numpy", dtype=None)[:]


def test_collected_dataset_loads_and_validates(collected):
    env_id, path = collected
    ds = datasets.load_from_disk(path)
    validate_trajectories(ds)
    validate_trajectories(load_trajectories(path))
    assert len(ds) == 300
    meta = TrajectoryMeta.from_dataset(ds)
    assert meta.env_id == env_id
    assert meta.space == make_env(env_id).action_space
    assert meta.source["seed"] == 0


def test_frames_are_64x64x3_uint8_arrays(collected):
    _, path = collected
    ds = datasets.load_from_disk(path)
    feature = ds.features["observation"]
    assert isinstance(feature, datasets.Array3D)
    assert feature.shape == (64, 64, 3) and feature.dtype == "uint8"
    frames = columns(ds)["observation"]
    assert frames.dtype == np.uint8 and frames.shape == (300, 64, 64, 3)
    assert len(np.unique(frames.reshape(300, -1), axis=0)) > 1  # frames change over time


def test_episode_and_frame_indices_are_consistent(collected):
    _, path = collected
    c = columns(datasets.load_from_disk(path))
    ep, idx = c["episode_index"], c["frame_index"]
    ends = c["terminated"] | c["truncated"]
    assert ep[0] == 0 and idx[0] == 0
    # A new episode starts exactly after a step that ended one, and counts frames from 0.
    assert np.array_equal(np.diff(ep), ends[:-1].astype(np.int64))
    assert np.array_equal(idx[1:], np.where(ends[:-1], 0, idx[:-1] + 1))
    assert ends[-1]
    assert not (c["terminated"] & c["truncated"]).any()


def test_minigrid_episodes_end_and_rows_replay_in_the_env(minigrid_dataset):
    """Row t holds the frame seen at t, the action taken there, and what that action produced."""
    c = columns(datasets.load_from_disk(minigrid_dataset))
    assert c["terminated"].sum() >= 1  # 300 random steps in a 5x5 room reach the goal
    env = make_env("MiniGrid-Empty-5x5-v0")
    obs, _ = env.reset(seed=0)
    for t in range(len(c["action"])):
        assert np.array_equal(obs, c["observation"][t])
        obs, reward, terminated, truncated, _ = env.step(int(c["action"][t]))
        assert np.float32(reward) == c["reward"][t]
        assert terminated == c["terminated"][t]
        if terminated or truncated:
            obs, _ = env.reset()


@pytest.mark.parametrize("fixture", sorted(ENVS))
def test_same_seed_same_dataset_other_seed_other_dataset(request, fixture, tmp_path):
    env_id, first = ENVS[fixture], request.getfixturevalue(fixture)
    again = collect(env_id, 300, tmp_path / "again", seed=0, progress=False)
    other = collect(env_id, 300, tmp_path / "other", seed=1, progress=False)
    a, b = columns(datasets.load_from_disk(first)), columns(datasets.load_from_disk(again.out))
    assert a.keys() == b.keys()
    for name in a:
        assert np.array_equal(a[name], b[name]), name
    o = columns(datasets.load_from_disk(other.out))
    assert not np.array_equal(a["action"], o["action"])
    assert not np.array_equal(a["observation"], o["observation"])


def test_parquet_export_loads_and_validates(minigrid_dataset, tmp_path):
    ds = datasets.load_from_disk(minigrid_dataset)
    (tmp_path / "pq").mkdir()
    ds.to_parquet(str(tmp_path / "pq" / "train.parquet"))
    loaded = load_trajectories(str(tmp_path / "pq"))
    validate_trajectories(loaded)
    assert np.array_equal(columns(loaded)["observation"], columns(ds)["observation"])


# ---- bad datasets: each names its first problem in one line -------------------------------


def assert_one_line_error(ds: datasets.Dataset, match: str) -> None:
    with pytest.raises(TokWorldError, match=match) as info:
        validate_trajectories(ds)
    assert "\n" not in str(info.value)


def tiny_rows(frames: list, ends=None) -> dict:
    n = len(frames)
    ends = ends if ends is not None else [False] * (n - 1) + [True]
    return {
        "episode_index": [0] * n,
        "frame_index": list(range(n)),
        "observation": frames,
        "action": [0] * n,
        "reward": [0.0] * n,
        "terminated": ends,
        "truncated": [False] * n,
    }


def test_dataset_dir_missing_reward_is_named(minigrid_dataset, tmp_path):
    broken = tmp_path / "no-reward"
    datasets.load_from_disk(minigrid_dataset).remove_columns("reward").save_to_disk(str(broken))
    assert_one_line_error(load_trajectories(str(broken)), "missing column 'reward'")


def test_frames_of_mixed_shapes_are_named(tmp_path):
    frames = [np.zeros((4, 4, 3), np.uint8).tolist(), np.zeros((5, 4, 3), np.uint8).tolist()]
    ds = datasets.Dataset.from_dict(tiny_rows(frames))
    uint8_frames = datasets.List(datasets.List(datasets.List(datasets.Value("uint8"))))
    ds = ds.cast_column("observation", uint8_frames)
    assert_one_line_error(ds, r"frame shapes differ: row 1 is \(5, 4, 3\), row 0 is \(4, 4, 3\)")
    ds.save_to_disk(str(tmp_path / "mixed"))
    assert_one_line_error(load_trajectories(str(tmp_path / "mixed")), "frame shapes differ")


def test_frames_of_the_wrong_dtype_are_named():
    ds = datasets.Dataset.from_dict(tiny_rows([np.zeros((4, 4, 3), np.float32).tolist()] * 2))
    assert_one_line_error(ds, "dtype float")


def test_frames_that_are_not_rgb_are_named():
    gray = datasets.Features({**FEATURES, "observation": datasets.Array2D((4, 4), "uint8")})
    rows = tiny_rows([np.zeros((4, 4), np.uint8)] * 2)
    assert_one_line_error(datasets.Dataset.from_dict(rows, gray), "expected HxWx3")


FRAME = np.zeros((2, 2, 3), np.uint8)
FEATURES = features_for(gym.spaces.Discrete(2), FRAME.shape)


def test_episode_with_no_end_is_named():
    rows = tiny_rows([FRAME] * 3, ends=[False] * 3)
    assert_one_line_error(datasets.Dataset.from_dict(rows, FEATURES), "episode 0 has no end")


def test_scattered_episodes_and_bad_frame_indices_are_named():
    rows = tiny_rows([FRAME] * 3, ends=[True, True, True])
    rows["episode_index"] = [0, 1, 0]
    rows["frame_index"] = [0, 0, 0]
    assert_one_line_error(datasets.Dataset.from_dict(rows, FEATURES), "not grouped")
    rows = tiny_rows([FRAME] * 3)
    rows["frame_index"] = [0, 2, 3]
    assert_one_line_error(datasets.Dataset.from_dict(rows, FEATURES), "frame_index of episode 0")
    rows = tiny_rows([FRAME] * 3, ends=[True, False, True])
    assert_one_line_error(datasets.Dataset.from_dict(rows, FEATURES), "inside an episode")


def test_well_formed_tiny_dataset_validates():
    """Two episodes, one terminated and one truncated, are accepted; without its last end the
    same dataset is refused, so the acceptance was a check of every row."""
    rows = tiny_rows([FRAME] * 5, ends=[False, True, False, False, False])
    rows.update(episode_index=[0, 0, 1, 1, 1], frame_index=[0, 1, 0, 1, 2])
    rows["truncated"] = [False, False, False, False, True]
    assert validate_trajectories(datasets.Dataset.from_dict(rows, FEATURES)) is None  # no error
    rows["truncated"][-1] = False
    assert_one_line_error(datasets.Dataset.from_dict(rows, FEATURES), "episode 1 has no end")


def test_loading_what_is_not_a_dataset_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(TokWorldError, match="neither a saved dataset nor parquet"):
        load_trajectories(str(tmp_path / "empty"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(TokWorldError, match="not a directory"):
        load_trajectories(str(tmp_path / "file"))


def test_metadata_survives_in_the_dataset(minigrid_dataset):
    meta = TrajectoryMeta.from_dataset(datasets.load_from_disk(minigrid_dataset))
    assert meta.space == gym.spaces.Discrete(7)
    assert meta.frame_size == 64
    assert meta.source == {"kind": "collect", "seed": 0, "sticky_actions": False}


def test_long_datasets_are_written_in_several_files_that_load_as_one(tmp_path, monkeypatch):
    monkeypatch.setattr(data_format, "SHARD_FRAME_BYTES", 2 * FRAME.nbytes)  # two rows per file
    frames = [np.full(FRAME.shape, i, np.uint8) for i in range(5)]
    meta = TrajectoryMeta("tiny", {"type": "Discrete", "n": 2, "start": 0}, 2)
    columns_ = tiny_rows(frames)
    rows = [{name: values[i] for name, values in columns_.items()} for i in range(len(frames))]
    ds = write_trajectories(lambda: iter(rows), tmp_path / "tiny", meta, FRAME.shape)
    assert sorted(p.name for p in (tmp_path / "tiny").glob("*.arrow")) == [
        f"data-0000{i}-of-00003.arrow" for i in range(3)
    ]
    validate_trajectories(ds)
    assert np.array_equal(columns(ds)["observation"], np.stack(frames))
    assert TrajectoryMeta.from_dataset(ds) == meta
    empty = write_trajectories(lambda: iter(()), tmp_path / "empty", meta, FRAME.shape)
    assert len(empty) == 0
    assert_one_line_error(empty, "no rows")
