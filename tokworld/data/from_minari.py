"""Import a Minari dataset (Farama's offline-RL format) with image observations.

Minari stores N+1 observations for the N steps of an episode; row t of the tokworld dataset is
(observation t, action t, reward t, terminated t, truncated t), so each episode's final
observation is dropped. Episodes are read and written one at a time: memory stays flat.
"""

from __future__ import annotations

import re
from pathlib import Path

import datasets
import gymnasium as gym
import numpy as np
from tqdm.auto import tqdm

from tokworld.data.convert import FrameConverter, episode_rows
from tokworld.data.format import TrajectoryMeta, write_trajectories
from tokworld.errors import TokWorldError
from tokworld.folders import check_output_dir
from tokworld.tokenizer.codecs import space_to_dict


def open_minari(ref: str):
    """A `minari.MinariDataset` from a local dataset directory or a dataset id.

    A path may be the dataset's directory or its `data/` folder. An id not found locally is
    downloaded (`minari.load_dataset(id, download=True)`).
    """
    try:
        import minari
    except ImportError:
        raise TokWorldError("minari is not installed: pip install 'minari[hdf5]'") from None
    path = Path(ref)
    try:
        if path.exists():
            data = path / "data" if (path / "data" / "metadata.json").exists() else path
            return minari.MinariDataset(data)
        return minari.load_dataset(ref, download=True)
    except Exception as e:  # minari raises ValueError, FileNotFoundError, HTTP errors, ...
        raise TokWorldError(f"cannot open minari dataset {ref!r}: {e}") from None


def frame_converter(space: gym.Space, dataset_id: str, frame_size: int) -> FrameConverter:
    """The converter for a Minari observation space; vector observations are an error."""
    frames = isinstance(space, gym.spaces.Box) and space.dtype == np.uint8
    try:
        if frames:
            return FrameConverter(tuple(space.shape), frame_size)
    except TokWorldError:
        pass
    shown = f"Box{space.shape} {space.dtype}" if isinstance(space, gym.spaces.Box) else space
    raise TokWorldError(
        f"minari dataset {dataset_id!r} has observations {shown}: not a frame dataset "
        "(tokworld imports image observations, HxWx3 or HxW uint8)"
    )


def import_minari(
    ref: str, out: str | Path, frame_size: int = 64, progress: bool = True
) -> datasets.Dataset:
    """Convert the Minari dataset `ref` (id or path) into a tokworld dataset at `out`.

    Frames are resized to `frame_size`; actions, rewards, terminations and truncations are kept
    as they are. The source (spec, dataset id, Minari version, conversion) is recorded in the
    dataset's `TrajectoryMeta.source`.
    """
    check_output_dir(out)
    src = open_minari(ref)
    convert = frame_converter(src.observation_space, src.id, frame_size)
    action_space = space_to_dict(src.action_space)
    metadata = src.storage.metadata
    version = re.search(r"-v\d+$", src.id)
    env_id = src.env_spec.id if src.env_spec is not None else src.id
    meta = TrajectoryMeta(
        env_id=env_id,
        action_space=action_space,
        frame_size=frame_size,
        source={
            "spec": f"minari:{ref}",
            "kind": "minari",
            "dataset_id": src.id,
            "revision": version.group(0)[1:] if version else None,
            "minari_version": src.minari_version,
            "policy": metadata.get("algorithm_name"),
            "episodes": src.total_episodes,
            "source_frame_shape": list(convert.source_shape),
            "conversion": convert.description,
        },
    )
    if src.total_episodes == 0:
        raise TokWorldError(f"minari dataset {src.id!r} has no episodes")

    def rows():
        episodes = tqdm(
            src.iterate_episodes(),
            desc="import",
            unit="episode",
            total=src.total_episodes,
            disable=None if progress else True,  # None: no bar when stderr is not a terminal
        )
        for i, ep in enumerate(episodes):
            yield from episode_rows(
                i,
                ep.observations,
                ep.actions,
                ep.rewards,
                ep.terminations,
                ep.truncations,
                convert,
                action_space,
                where=f"minari dataset {src.id!r}, episode {ep.id}",
                columns=("actions", "rewards"),
            )

    return write_trajectories(rows, out, meta, (frame_size, frame_size, 3))
