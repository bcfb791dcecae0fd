"""Several trajectory datasets as one: a task identity per dataset, held-out episodes from each.

`load_mixture(specs)` loads (and, for `minari:` specs, converts once) every dataset, checks
that their frames agree and that their action spaces can share one action slice, and
concatenates them with unique episode indices and a `task` column (the dataset's index). The
split and the recorded `Mixture` (what each dataset was, with a fingerprint of its content) let
`eval-model` and `report` find exactly the episodes a run held out, and refuse a dataset that
changed since.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import datasets
import gymnasium as gym
import numpy as np

from tokworld.data.format import TrajectoryMeta, episode_bounds, load_trajectories
from tokworld.data.importers import resolve_dataset_spec
from tokworld.data.validate import validate_trajectories
from tokworld.data.windows import split_episodes
from tokworld.errors import TokWorldError
from tokworld.tokenizer.codecs import space_to_dict


@dataclass(frozen=True)
class Part:
    """One dataset of a mixture: its spec, env, size and a fingerprint of its content."""

    spec: str
    env_id: str
    steps: int
    episodes: int
    fingerprint: str


def cache_dir() -> Path:
    """Where converted `minari:` datasets are kept between runs: `$TOKWORLD_CACHE/imports`."""
    root = os.environ.get("TOKWORLD_CACHE", Path.home() / ".cache" / "tokworld")
    return Path(root) / "imports"


def fingerprint(ds: datasets.Dataset) -> str:
    """A hash of what training depends on besides the frames: episode layout, actions, rewards
    and ends (frames are hashed through their count and shape)."""
    cols = ["episode_index", "frame_index", "action", "reward", "terminated", "truncated"]
    table = ds.select_columns(cols).with_format("numpy")[:]
    digest = hashlib.sha1(str(ds.features["observation"]).encode())
    for name in cols:
        digest.update(np.ascontiguousarray(np.asarray(table[name])).tobytes())
    return digest.hexdigest()[:16]


def shared_action_space(spaces: list[gym.Space], names: list[str]) -> gym.Space:
    """One action space for every dataset: their own when they agree; Discrete(max n) when all
    are Discrete (a task's ids mean what its env says: the task identity tells them apart)."""
    first = spaces[0]
    if all(s == first for s in spaces):
        return first
    if all(isinstance(s, gym.spaces.Discrete) and int(s.start) == 0 for s in spaces):
        return gym.spaces.Discrete(max(int(s.n) for s in spaces))
    other = next(i for i, s in enumerate(spaces) if s != first)
    raise TokWorldError(
        f"datasets {names[0]} and {names[other]} act in {first} and {spaces[other]}: a mixture "
        "needs one action space or Discrete ones"
    )


def load_mixture(
    specs: list[str] | tuple[str, ...], frame_size: int = 64
) -> tuple[datasets.Dataset, TrajectoryMeta, list[Part]]:
    """(the datasets concatenated with a `task` column, their shared metadata, their parts)."""
    parts, metas, loaded = [], [], []
    for spec in specs:
        spec = str(Path(spec).resolve()) if Path(spec).exists() else spec  # valid from anywhere
        ds = load_trajectories(resolve_dataset_spec(spec, cache_dir(), frame_size))
        validate_trajectories(ds)
        meta = TrajectoryMeta.from_dataset(ds)
        episodes = len(episode_bounds(ds)[0])
        parts.append(Part(spec, meta.env_id, len(ds), episodes, fingerprint(ds)))
        metas.append(meta)
        loaded.append(ds)
    kinds = {m.observation for m in metas}
    if len(kinds) > 1:
        raise TokWorldError(
            "the datasets mix frame and vector observations: one tokenizer reads one kind"
        )
    shapes = {m.observation_shape for m in metas}
    if len(shapes) > 1:
        raise TokWorldError(f"the datasets' observations differ in shape: {sorted(shapes)}")
    space = shared_action_space([m.space for m in metas], list(specs))
    if len(loaded) == 1:
        return with_task(loaded[0], 0), metas[0], parts
    meta = TrajectoryMeta(
        env_id="+".join(m.env_id for m in metas),
        action_space=space_to_dict(space),
        frame_size=metas[0].frame_size,
        source={"kind": "mixture", "datasets": [asdict(p) for p in parts]},
        observation_space=metas[0].observation_space,
    )
    return concatenate(loaded, meta), meta, parts


def with_task(ds: datasets.Dataset, task: int) -> datasets.Dataset:
    """`ds` with a `task` column holding `task` (replacing one it had)."""
    if "task" in ds.column_names:
        ds = ds.remove_columns("task")
    return ds.add_column("task", np.full(len(ds), task, dtype=np.int64))


def concatenate(parts: list[datasets.Dataset], meta: TrajectoryMeta) -> datasets.Dataset:
    """Trajectory datasets one after another, episode indices renumbered to stay unique, each
    tagged with its index as `task`; `meta` becomes the result's metadata."""
    tagged, offset = [], 0
    for task, part in enumerate(parts):
        ep = part.select_columns(["episode_index"]).with_format("numpy")[:]["episode_index"]
        first = np.r_[True, ep[1:] != ep[:-1]]
        renumbered = np.cumsum(first) - 1 + offset
        offset = int(renumbered[-1]) + 1 if len(renumbered) else offset
        part = part.remove_columns("episode_index").add_column("episode_index", renumbered)
        tagged.append(with_task(part, task))
    ds = datasets.concatenate_datasets(tagged)
    ds.info.description = meta.to_json()
    return ds


def split_by_task(ds: datasets.Dataset, fraction: float, seed: int = 0):
    """(train, held-out or None): `split_episodes` within every task, so each dataset of a
    mixture gives held-out episodes. Row order is kept; the same rows for frames and codes."""
    if fraction <= 0:
        return ds, None
    tasks = ds.select_columns(["task"]).with_format("numpy")[:]["task"]
    rows = np.arange(len(ds))
    train, held = [], []
    for task in np.unique(tasks):
        mine = rows[tasks == task]
        part = ds.select(mine).select_columns(["episode_index"])
        if len(episode_bounds(part)[0]) < 2:
            train.append(mine)
            continue
        a, b = split_episodes(part.add_column("row", mine), fraction, seed + int(task))
        train.append(np.asarray(a["row"]))
        held.append(np.asarray(b["row"]))
    if not held:
        return ds, None
    return ds.select(np.concatenate(train)), ds.select(np.concatenate(held))


def held_out_episodes(held: datasets.Dataset | None) -> list[int]:
    """The (renumbered) episode indices of a held-out split, as recorded in a run."""
    if held is None:
        return []
    ep = held.select_columns(["episode_index"]).with_format("numpy")[:]["episode_index"]
    return sorted(int(e) for e in np.unique(ep))


def mixed_rows(tasks: np.ndarray, weights: list[float] | None, seed: int = 0) -> np.ndarray:
    """Row indices (of items whose task is `tasks`) in which task t makes up the share
    `weights[t] / sum(weights)`: rarer tasks' items are repeated, commoner ones subsampled,
    deterministically from `seed`. Without weights, every item once."""
    rows = np.arange(len(tasks))
    if weights is None:
        return rows
    present = np.unique(tasks)
    if len(weights) <= int(present.max()):
        raise TokWorldError(
            f"--mix gives {len(weights)} weights for {int(present.max()) + 1} datasets"
        )
    share = np.asarray(weights, dtype=np.float64)[present]
    share = share / share.sum()
    rng = np.random.default_rng(seed)
    picked = [
        rng.choice(rows[tasks == t], max(1, round(s * len(rows))), replace=True)
        for t, s in zip(present, share, strict=True)
    ]
    return np.sort(np.concatenate(picked))


def recorded_held_out(run: str | Path) -> tuple[datasets.Dataset, str]:
    """(the episodes `tokworld pretrain` held out of `run`, a description), from the datasets
    and episodes recorded in `RUN/held_out.json`. A dataset whose content changed since is
    refused: its "held-out" episodes might be ones the model trained on."""
    record = Path(run) / "held_out.json"
    if not record.exists():
        raise TokWorldError(
            f"run {run} records no held-out episodes (no held_out.json): pass --dataset"
        )
    try:
        held = json.loads(record.read_text())
        parts = [Part(**p) for p in held["datasets"]]
        episodes = [int(e) for e in held["episodes"]]
        frame_size = int(held.get("frame_size", 64))
    except (ValueError, TypeError, KeyError) as e:
        raise TokWorldError(f"cannot read {record}: {e}") from None
    if not episodes:
        raise TokWorldError(f"run {run} held out no episodes: pass --dataset")
    ds, _, now = load_mixture([p.spec for p in parts], frame_size)
    for before, after in zip(parts, now, strict=True):
        if before.fingerprint != after.fingerprint:
            raise TokWorldError(
                f"dataset {before.spec} changed since {run} was trained on it (fingerprint "
                f"{before.fingerprint} -> {after.fingerprint}): pass --dataset to evaluate on it"
            )
    ep = np.asarray(ds.select_columns(["episode_index"]).with_format("numpy")[:]["episode_index"])
    rows = np.flatnonzero(np.isin(ep, episodes))
    names = ", ".join(p.spec for p in parts)
    return ds.select(rows), f"{names} ({len(episodes)} episodes held out of training)"
