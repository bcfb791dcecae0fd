"""Checks of a trajectory dataset: columns, observations, episodes, end flags, actions, rewards.

`validate_trajectories` names the first problem of a dataset in one line; `check_steps` and
`end_flags` check whole action / reward / end columns, for the importers too.
"""

from __future__ import annotations

from collections.abc import Callable

import datasets
import gymnasium as gym
import numpy as np

from tokworld.data.format import COLUMNS, TrajectoryMeta
from tokworld.errors import TokWorldError
from tokworld.tokenizer.codecs import action_violations


def validate_trajectories(ds: datasets.Dataset) -> None:
    """Raise TokWorldError naming the first problem of a trajectory dataset.

    Checks the columns, uint8 HxWx3 frames (or finite float vectors of one length, as the
    metadata says), contiguous episodes with one end each, boolean end flags, finite rewards,
    and actions the dataset's action space holds (see `check_steps`).
    """
    missing = [c for c in COLUMNS if c not in ds.column_names]
    if missing:
        raise TokWorldError(f"dataset is missing column {missing[0]!r}")
    obs = ds.features["observation"]
    if TrajectoryMeta.from_dataset(ds).observation == "vector":
        _check_vectors(ds, obs)
    else:
        _check_frames(ds, obs)
    if len(ds) == 0:
        raise TokWorldError("dataset has no rows")
    cols = ds.select_columns(["episode_index", "frame_index", "terminated", "truncated"])
    table = cols.with_format("numpy")[:]
    ep, idx = table["episode_index"], table["frame_index"]
    ends = end_flags(table["terminated"], "terminated") | end_flags(table["truncated"], "truncated")
    new_episode = np.r_[True, ep[1:] != ep[:-1]]
    if np.any(np.diff(ep) < 0) or len(np.unique(ep)) != int(new_episode.sum()):
        raise TokWorldError("episode_index is not grouped: rows of an episode must be contiguous")
    starts = np.flatnonzero(new_episode)
    expected = np.arange(len(ep)) - np.repeat(starts, np.diff(np.r_[starts, len(ep)]))
    bad = np.flatnonzero(idx != expected)
    if bad.size:
        raise TokWorldError(
            f"frame_index of episode {ep[bad[0]]} is not 0, 1, 2, ... (row {bad[0]})"
        )
    last = np.r_[starts[1:] - 1, len(ep) - 1]
    open_eps = ep[last[~ends[last]]]
    if open_eps.size:
        raise TokWorldError(f"episode {open_eps[0]} has no end (neither terminated nor truncated)")
    inner = ends[np.setdiff1d(np.arange(len(ep)), last)]
    if inner.any():
        raise TokWorldError("a step inside an episode is marked terminated or truncated")
    steps = ds.select_columns(["action", "reward"]).with_format("numpy")[:]
    space = TrajectoryMeta.from_dataset(ds).space
    check_steps(
        steps["action"], steps["reward"], space, lambda i: f"episode {ep[i]}, frame {idx[i]}"
    )


def _check_frames(ds: datasets.Dataset, obs) -> None:
    """Frames: uint8, HxWx3, one shape."""
    dtype = getattr(obs, "dtype", None)
    if dtype != "uint8":
        inner = obs
        while hasattr(inner, "feature"):
            inner = inner.feature
        dtype = getattr(inner, "dtype", dtype)
    if dtype != "uint8":
        raise TokWorldError(f"column 'observation' has dtype {dtype}, expected uint8 frames")
    _check_frame_shapes(ds, obs)


def _check_vectors(ds: datasets.Dataset, obs) -> None:
    """Vector observations: one float per dimension the metadata names, all finite."""
    want = TrajectoryMeta.from_dataset(ds).observation_shape
    inner = getattr(obs, "feature", None)
    if getattr(inner, "dtype", None) not in ("float32", "float64", "float16"):
        raise TokWorldError(
            f"column 'observation' holds {obs}, expected float vectors of length {want[0]}"
        )
    column = ds.select_columns(["observation"]).with_format("numpy")
    for start in range(0, len(ds), 4096):
        values = np.asarray(column[start : start + 4096]["observation"])
        if values.ndim != 2 or values.shape[1] != want[0]:
            raise TokWorldError(
                f"vector observations have shape {values.shape[1:]}, the metadata says {want}"
            )
        bad = np.argwhere(~np.isfinite(values))
        if bad.size:
            raise TokWorldError(
                f"column 'observation' at row {start + bad[0][0]}, dimension {bad[0][1]} is "
                f"{values[tuple(bad[0])]}: observations must be finite"
            )


def end_flags(values, column: str, where: Callable[[int], str] = "row {}".format) -> np.ndarray:
    """End flags as bool; anything but booleans or 0/1 (text such as "False" included, which
    `bool` would read as true) is an error naming `column` and `where(i)` the first bad one."""
    flags = np.asarray(values)
    if flags.dtype != bool:
        numbers = flags.dtype.kind in "iuf"
        bad = np.flatnonzero((flags != 0) & (flags != 1)) if numbers else [0]
        if len(bad):
            value = flags.reshape(-1)[bad[0] : bad[0] + 1].tolist()[0]
            raise TokWorldError(
                f"column {column!r} holds {value!r} ({where(bad[0])}): expected true/false"
            )
    return flags.astype(bool)


def check_steps(
    actions,
    rewards,
    space: gym.Space,
    where: Callable[[int], str],
    columns: tuple[str, str] = ("action", "reward"),
) -> None:
    """Raise TokWorldError unless every step's action is one `space` holds (right shape, finite,
    whole numbers for discrete spaces, in range) and every reward is a finite number.

    `actions` (N,) or (N, D) and `rewards` (N,) are whole columns, checked at once; the message
    names the column (`columns`: action's, reward's), the first bad step (`where(i)`) and its
    value.
    """
    action_col, reward_col = columns
    rewards, actions = np.asarray(rewards), np.asarray(actions)
    if rewards.ndim != 1 or rewards.dtype.kind not in "biuf":
        raise TokWorldError(
            f"column {reward_col!r} holds {rewards.dtype} values of shape {rewards.shape[1:]}: "
            "expected one number per step"
        )
    bad = np.flatnonzero(~np.isfinite(rewards))
    if bad.size:
        raise TokWorldError(
            f"column {reward_col!r} at {where(bad[0])} is {rewards[bad[0]]}: rewards must be finite"
        )
    width = None if isinstance(space, gym.spaces.Discrete) else int(np.prod(space.shape))
    shape = () if width is None else (width,)
    if actions.dtype.kind not in "biuf" or actions.shape[1:] != shape:
        raise TokWorldError(
            f"column {action_col!r} holds {actions.dtype} values of shape {actions.shape[1:]}: "
            f"{space} needs numbers of shape {shape}"
        )
    invalid, domain = action_violations(space, actions)
    bad = np.flatnonzero(invalid.numpy())
    if bad.size:
        value = actions[bad[0]].tolist()
        raise TokWorldError(f"column {action_col!r} at {where(bad[0])} is {value}: {domain}")


def _check_frame_shapes(ds: datasets.Dataset, obs) -> None:
    shape = getattr(obs, "shape", None)
    if shape is not None and None not in shape:
        if len(shape) != 3 or shape[-1] != 3:
            raise TokWorldError(f"frames have shape {tuple(shape)}, expected HxWx3")
        return
    first = None
    frames = ds.select_columns(["observation"]).with_format("numpy")
    for start in range(0, len(ds), 256):
        for i, frame in enumerate(frames[start : start + 256]["observation"]):
            shape = np.asarray(frame).shape
            first = first or shape
            if shape != first:
                raise TokWorldError(
                    f"frame shapes differ: row {start + i} is {shape}, row 0 is {first}"
                )
    if first is not None and (len(first) != 3 or first[-1] != 3):
        raise TokWorldError(f"frames have shape {first}, expected HxWx3")
