"""Import a Minari dataset (Farama's offline-RL format) with image or flat vector observations.

Image observations (HxWx3 or HxW uint8) become `frame_size` RGB frames; a flat Box observation
(1-D, numeric: classic control, MuJoCo locomotion) is kept as a float32 vector and its Box is
recorded as `TrajectoryMeta.observation_space`. Dict observations (image and vector parts,
goal-conditioned dicts) and other spaces are refused.

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

from tokworld.data.convert import FrameConverter, VectorConverter, episode_rows
from tokworld.data.format import TrajectoryMeta, write_trajectories
from tokworld.envs import float32_box, is_vector_space
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


def observation_converter(
    space: gym.Space, dataset_id: str, frame_size: int
) -> FrameConverter | VectorConverter:
    """The converter for a Minari observation space: frames for uint8 images, float32 vectors
    for a flat Box; Dict and other observations are an error."""
    if is_vector_space(space):
        return VectorConverter(tuple(space.shape), np.dtype(space.dtype).name)
    if isinstance(space, gym.spaces.Dict):
        raise TokWorldError(
            f"minari dataset {dataset_id!r} has Dict observations {space}: Dict observations "
            "are not supported (tokworld imports images or one flat Box vector)"
        )
    try:
        if isinstance(space, gym.spaces.Box) and space.dtype == np.uint8:
            return FrameConverter(tuple(space.shape), frame_size)
    except TokWorldError:
        pass
    shown = f"Box{space.shape} {space.dtype}" if isinstance(space, gym.spaces.Box) else space
    raise TokWorldError(
        f"minari dataset {dataset_id!r} has observations {shown}: neither frames nor a flat "
        "vector (tokworld imports HxWx3 or HxW uint8 images, or a 1-D numeric Box)"
    )


def import_minari(
    ref: str, out: str | Path, frame_size: int = 64, progress: bool = True
) -> datasets.Dataset:
    """Convert the Minari dataset `ref` (id or path) into a tokworld dataset at `out`.

    Frames are resized to `frame_size`; flat vector observations are stored as float32 (and
    `frame_size` is unused); actions, rewards, terminations and truncations are kept as they
    are. The source (spec, dataset id, Minari version, conversion) is recorded in the
    dataset's `TrajectoryMeta.source`.
    """
    check_output_dir(out)
    src = open_minari(ref)
    convert = observation_converter(src.observation_space, src.id, frame_size)
    vector = isinstance(convert, VectorConverter)
    shape = convert.source_shape if vector else (frame_size, frame_size, 3)
    action_space = space_to_dict(src.action_space)
    metadata = src.storage.metadata
    version = re.search(r"-v\d+$", src.id)
    env_id = src.env_spec.id if src.env_spec is not None else src.id
    meta = TrajectoryMeta(
        env_id=env_id,
        action_space=action_space,
        frame_size=0 if vector else frame_size,
        source={
            "spec": f"minari:{ref}",
            "kind": "minari",
            "dataset_id": src.id,
            "revision": version.group(0)[1:] if version else None,
            "minari_version": src.minari_version,
            "policy": metadata.get("algorithm_name"),
            "episodes": src.total_episodes,
            f"source_{'observation' if vector else 'frame'}_shape": list(convert.source_shape),
            "conversion": convert.description,
        },
        observation_space=space_to_dict(float32_box(src.observation_space)) if vector else None,
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

    return write_trajectories(rows, out, meta, shape)
