"""Trajectory datasets: one row per step, as a Hugging Face `datasets.Dataset`.

Columns: `episode_index`, `frame_index`, `observation` (uint8 HxWx3 frames, or float32 (D,)
vectors for a flat Box observation), `action`, `reward`, `terminated`, `truncated`. Row t
holds the observation seen at step t, the action taken there, and the reward and end flags that
action produced. The dataset's `info.description` holds a JSON `TrajectoryMeta` (env id, action
space, observations, provenance).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import datasets
import gymnasium as gym
import numpy as np
from datasets.arrow_writer import ArrowWriter
from datasets.fingerprint import Hasher
from huggingface_hub import DatasetCard

from tokworld.errors import TokWorldError
from tokworld.folders import atomic_dir, check_output_dir
from tokworld.tokenizer.codecs import space_from_dict, space_to_dict

COLUMNS = (
    "episode_index",
    "frame_index",
    "observation",
    "action",
    "reward",
    "terminated",
    "truncated",
)


@dataclass(frozen=True)
class TrajectoryMeta:
    """What a dataset is: env, action space, observations and where it came from.

    `observation_space` is the Box of vector observations (`space_to_dict`), None for frames;
    `frame_size` is the frames' side (0 for vectors).
    """

    env_id: str
    action_space: dict
    frame_size: int
    source: dict = field(default_factory=dict)
    observation_space: dict | None = None

    @property
    def space(self) -> gym.Space:
        return space_from_dict(self.action_space)

    @property
    def observation(self) -> str:
        """What the observations are: "frames" or "vector"."""
        return "frames" if self.observation_space is None else "vector"

    @property
    def observation_shape(self) -> tuple[int, ...]:
        """The shape of one observation: (H, W, 3) or (D,)."""
        if self.observation_space is None:
            return (self.frame_size, self.frame_size, 3)
        return tuple(space_from_dict(self.observation_space).shape)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_dataset(cls, ds: datasets.Dataset) -> TrajectoryMeta:
        """Read the metadata a tokworld dataset carries; infer what it can otherwise."""
        try:
            return cls(**json.loads(ds.info.description or ""))
        except (ValueError, TypeError):
            pass
        feature = ds.features.get("action")
        if isinstance(feature, datasets.ClassLabel):
            space = {"type": "Discrete", "n": feature.num_classes, "start": 0}
        elif isinstance(feature, datasets.Value) and "int" in feature.dtype:
            n = int(np.max(ds.with_format("numpy")["action"])) + 1
            space = {"type": "Discrete", "n": n, "start": 0}
        else:
            raise TokWorldError("dataset has no tokworld metadata and a non-discrete action column")
        obs = ds.features["observation"]
        inner = getattr(obs, "feature", None)
        if isinstance(inner, datasets.Value) and "float" in inner.dtype and (obs.length or 0) > 0:
            box = gym.spaces.Box(-np.inf, np.inf, (obs.length,), np.float32)
            return cls("unknown", space, 0, observation_space=space_to_dict(box))
        shape = getattr(obs, "shape", None) or (0,)
        return cls(env_id="unknown", action_space=space, frame_size=int(shape[0] or 0))


def features_for(action_space: gym.Space, observation_shape: tuple[int, ...]) -> datasets.Features:
    """The Arrow schema of a trajectory dataset for this action space and observation shape:
    (H, W, 3) uint8 frames or (D,) float32 vectors."""
    if isinstance(action_space, gym.spaces.Discrete):
        action = datasets.Value("int64")
    elif isinstance(action_space, gym.spaces.MultiDiscrete):
        action = datasets.List(datasets.Value("int64"), length=int(action_space.nvec.size))
    elif isinstance(action_space, gym.spaces.Box):
        action = datasets.List(datasets.Value("float32"), length=int(np.prod(action_space.shape)))
    else:
        raise TokWorldError(f"unsupported action space {action_space}")
    return datasets.Features(
        {
            "episode_index": datasets.Value("int64"),
            "frame_index": datasets.Value("int64"),
            "observation": _observation_feature(tuple(observation_shape)),
            "action": action,
            "reward": datasets.Value("float32"),
            "terminated": datasets.Value("bool"),
            "truncated": datasets.Value("bool"),
        }
    )


def _observation_feature(shape: tuple[int, ...]):
    if len(shape) == 1:
        return datasets.List(datasets.Value("float32"), length=shape[0])
    if len(shape) == 3 and shape[-1] == 3:
        return datasets.Array3D(shape=shape, dtype="uint8")
    raise TokWorldError(f"observations must be HxWx3 frames or flat vectors, got shape {shape}")


def trajectory_row(
    episode: int, t: int, observation, action, reward, terminated, truncated, last: bool
) -> dict:
    """One row of the schema: step `t` of `episode`. A recording's `last` step that did not
    terminate is marked truncated (the recording stopped there)."""
    return {
        "episode_index": int(episode),
        "frame_index": int(t),
        "observation": observation,
        "action": np.asarray(action).tolist(),
        "reward": float(reward),
        "terminated": bool(terminated),
        "truncated": bool(truncated) or (last and not bool(terminated)),
    }


# Raw frame bytes per Arrow file; Array3D's list offsets make the file about 2.3x larger.
SHARD_FRAME_BYTES = 256 * 2**20


def write_trajectories(
    rows: Callable[[], Iterable[dict]], out: str | Path, meta: TrajectoryMeta, observation_shape
) -> datasets.Dataset:
    """Stream rows (from a generator function) into a dataset saved at `out`.

    Rows go straight into the Arrow files of a `save_to_disk` directory, a batch at a time and
    never copied afterwards, so memory does not grow with the dataset. The directory is built
    beside `out` and moved into place only when complete: an interrupted write never leaves a
    dataset that looks finished.
    """
    out = check_output_dir(out)
    with atomic_dir(out) as target:
        features = features_for(meta.space, observation_shape)
        rows_per_shard = max(1, SHARD_FRAME_BYTES // int(np.prod(observation_shape)))
        num_rows, files = _write_shards(rows(), target, features, rows_per_shard)
        info = datasets.DatasetInfo(description=meta.to_json(), features=features)
        info.write_to_directory(str(target))
        state = {
            "_data_files": [{"filename": name} for name in files],
            "_fingerprint": Hasher.hash([meta.to_json(), num_rows]),
            "_format_columns": None,
            "_format_kwargs": {},
            "_format_type": None,
            "_output_all_columns": False,
            "_split": "train",
        }
        (target / "state.json").write_text(json.dumps(state, indent=2))
    return datasets.load_from_disk(str(out))


def _write_shards(
    rows: Iterable[dict], folder: Path, features: datasets.Features, rows_per_shard: int
) -> tuple[int, list[str]]:
    """Write rows into `data-XXXXX-of-YYYYY.arrow` files in `folder`: (number of rows, names)."""
    rows = iter(rows)
    paths: list[Path] = []
    num_rows = 0
    head = next(rows, None)
    while head is not None or not paths:
        paths.append(folder / f"shard-{len(paths)}.arrow")
        with ArrowWriter(features=features, path=str(paths[-1])) as writer:
            chunk = [] if head is None else itertools.chain([head], rows)
            for row in itertools.islice(chunk, rows_per_shard):
                writer.write(features.encode_example(row))
            num_rows += writer.finalize()[0]
        head = next(rows, None)
    names = [f"data-{i:05d}-of-{len(paths):05d}.arrow" for i in range(len(paths))]
    for path, name in zip(paths, names, strict=True):
        path.rename(folder / name)
    return num_rows, names


def load_trajectories(
    path_or_id: str, split: str = "train", revision: str | None = None
) -> datasets.Dataset:
    """Load a trajectory dataset from a local directory (saved or parquet) or a Hub id.

    Parquet data (a Hub repo, or a local copy of one) carries no `info.description`; the
    `TrajectoryMeta` that `tokworld data push` wrote into the dataset card is read back instead.
    """
    path = Path(path_or_id)
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "state.json").exists():
            try:
                return datasets.load_from_disk(str(path))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:  # damaged
                raise TokWorldError(f"cannot load dataset {path}: {_first_line(e)}") from None
        files = sorted(str(p) for p in path.rglob("*.parquet"))
        if not files:
            raise TokWorldError(f"{path} holds neither a saved dataset nor parquet files")
        try:
            ds = datasets.load_dataset("parquet", data_files=files, split=split)
        except (OSError, ValueError, datasets.exceptions.DatasetGenerationError) as e:
            raise TokWorldError(f"cannot load parquet files in {path}: {_first_line(e)}") from None
        card = path / "README.md"
        return _with_card_meta(ds, str(card)) if card.exists() else ds
    if path.exists() or path_or_id.startswith((".", "/")):
        raise TokWorldError(f"dataset {path_or_id} is not a directory")
    try:
        ds = datasets.load_dataset(path_or_id, split=split, revision=revision)
    except Exception as e:  # the Hub raises many types; a script-based repo has a parquet export
        if revision is None and "script" in str(e).lower():
            return datasets.load_dataset(path_or_id, split=split, revision="refs/convert/parquet")
        raise TokWorldError(f"cannot load dataset {path_or_id!r}: {e}") from None
    return _with_card_meta(ds, path_or_id)


def _first_line(error: BaseException) -> str:
    """`error` as one line: its type and the first line of its message."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def _with_card_meta(ds: datasets.Dataset, card: str) -> datasets.Dataset:
    """`ds` with the `tokworld` entry of dataset card `card` (a Hub id or a README.md path) as
    its description, when the card has one and the dataset has none."""
    if ds.info.description:
        return ds
    try:
        entry = DatasetCard.load(card).data.get("tokworld")
    except Exception:  # no card, no network: the metadata is inferred from the columns instead
        return ds
    if entry:
        ds.info.description = json.dumps(entry)
    return ds


def episode_bounds(ds: datasets.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """(starts, lengths) of the episodes of a dataset whose episodes are contiguous rows."""
    ep = ds.select_columns(["episode_index"]).with_format("numpy")[:]["episode_index"]
    if len(ep) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, ep[1:] != ep[:-1]])
    return starts, np.diff(np.r_[starts, len(ep)])
