"""Import Hub or parquet trajectory data whose schema is not tokworld's.

`--map` names the source columns: `observation`, `action`, `reward` (required), `terminated`,
`truncated`, `episode` (optional). Two layouts are read, told apart by the reward column:

- one row per episode (reward is a sequence, e.g. `jat-project/jat-dataset`): every sequence
  column is flattened to steps; end flags may be sequences or one value for the episode;
- one row per step (reward is a number): episodes are delimited by the end flags and/or an
  `episode` column.

Frames go through one `FrameConverter` (grayscale and stacked frames to RGB, resize). Without a
`terminated` column nothing says an episode terminated, so its last step is marked truncated.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds
from tqdm.auto import tqdm

from tokworld.data.convert import (
    FrameConverter,
    action_converter,
    check_source_steps,
    episode_rows,
)
from tokworld.data.format import TrajectoryMeta, write_trajectories
from tokworld.data.validate import end_flags
from tokworld.errors import TokWorldError
from tokworld.folders import check_output_dir
from tokworld.tokenizer.codecs import space_from_dict, space_to_dict

MAP_KEYS = ("observation", "action", "reward", "terminated", "truncated", "episode")
REQUIRED_KEYS = ("observation", "action", "reward")
_IMAGE = datasets.Image()


def parse_map(text: str) -> dict[str, str]:
    """`observation=COL,action=COL,reward=COL[,terminated=COL,...]` -> {key: column}."""
    mapping = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, column = (s.strip() for s in item.partition("="))
        if not sep or not column:
            raise TokWorldError(f"--map item {item!r} is not KEY=COLUMN")
        if key not in MAP_KEYS:
            raise TokWorldError(f"--map key {key!r} is unknown: use {', '.join(MAP_KEYS)}")
        mapping[key] = column
    missing = [k for k in REQUIRED_KEYS if k not in mapping]
    if missing:
        raise TokWorldError(f"--map needs {missing[0]}=COLUMN")
    return mapping


def open_hf(
    ref: str,
    config: str | None = None,
    split: str = "train",
    revision: str | None = None,
    streaming: bool = False,
    columns: list[str] | None = None,
) -> datasets.Dataset | datasets.IterableDataset:
    """Load `ref`: a local parquet file or directory of them, or a Hub dataset id.

    Local parquet is always streamed (read in place, never copied into the `datasets` cache).
    Parquet is read without Arrow's pre-buffering, which keeps every row group of a file in
    memory until the file is done; a streamed source reads only `columns` when given.
    """
    parquet = {"fragment_scan_options": pds.ParquetFragmentScanOptions(pre_buffer=False)}
    path = Path(ref)
    if columns is not None and (streaming or path.exists()):
        parquet["columns"] = columns
    try:
        if path.exists():
            files = [path] if path.is_file() else sorted(path.rglob("*.parquet"))
            if not files:
                raise TokWorldError(f"{ref} holds no parquet files")
            data_files = {split: [str(f) for f in files]}
            return datasets.load_dataset(
                "parquet", data_files=data_files, split=split, streaming=True, **parquet
            )
        return _load_hub(ref, config, split, revision, streaming, parquet)
    except TokWorldError:
        raise
    except Exception as e:  # load_dataset raises many types (missing files, Hub errors, ...)
        raise TokWorldError(f"cannot load dataset {ref!r}: {e}") from None


def _load_hub(ref, config, split, revision, streaming, parquet: dict):
    """A Hub dataset, with the parquet options where the Hub serves parquet; a repo that still
    uses a loading script (refused by datasets 5) through its parquet export.

    No `trust_remote_code=False`: datasets >= 4 removed loading scripts, so no remote code runs
    and the argument is only swallowed (with an error log when True).
    """
    kwargs = {"split": split, "revision": revision, "streaming": streaming}
    try:
        return datasets.load_dataset(ref, config, **kwargs, **parquet)
    except TypeError as e:  # not parquet: its builder takes no parquet options
        if "unexpected keyword" not in str(e):
            raise
        return datasets.load_dataset(ref, config, **kwargs)
    except Exception as e:
        if revision is not None or "script" not in str(e).lower():
            raise
        kwargs["revision"] = "refs/convert/parquet"
        return datasets.load_dataset(ref, config, **kwargs, **parquet)


def hub_revision(ref: str, revision: str | None) -> str | None:
    """The commit a Hub dataset resolves to, when the Hub can be asked; else `revision`."""
    if Path(ref).exists():
        return revision
    from huggingface_hub import HfApi

    try:
        return HfApi().dataset_info(ref, revision=revision).sha or revision
    except Exception:  # offline or private: the revision stays what the user gave
        return revision


def infer_action_space(ds, column: str) -> dict:
    """Discrete(max action + 1), from one pass over the action column."""
    high = -1
    for table in ds.with_format("arrow").iter(batch_size=1024):
        flat = _leaves(table.column(column).combine_chunks()).to_numpy(zero_copy_only=False)
        if flat.size == 0:
            continue
        if not np.issubdtype(flat.dtype, np.integer):
            raise TokWorldError(
                f"actions in column {column!r} are {flat.dtype}, not integers: give "
                '--action-space, e.g. \'{"type": "Box", "low": [-1], "high": [1]}\''
            )
        if flat.min() < 0:
            raise TokWorldError(f"column {column!r} holds negative actions: give --action-space")
        high = max(high, int(flat.max()))
    if high < 0:
        raise TokWorldError(f"column {column!r} holds no actions")
    return {"type": "Discrete", "n": high + 1, "start": 0}


def column_array(array: pa.Array | pa.ChunkedArray, name: str) -> np.ndarray:
    """An Arrow column of (nested) lists, fixed-shape arrays or images as one numpy array.

    Numbers keep their Arrow type (uint8 frames stay uint8); encoded images (`datasets.Image`)
    are decoded. Lists inside one column must have equal lengths at each level.
    """
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    shape = [len(array)]
    while True:
        if isinstance(array.type, pa.ExtensionType):
            array = array.storage
        elif pa.types.is_fixed_size_list(array.type):
            shape.append(array.type.list_size)
            array = array.flatten()
        elif pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
            lengths = pc.unique(array.value_lengths()).to_pylist()
            if len(lengths) > 1:
                raise TokWorldError(f"column {name!r} mixes sequences of lengths {lengths}")
            shape.append(lengths[0] if lengths else 0)
            array = array.flatten()
        else:
            break
    if pa.types.is_struct(array.type) and array.type.get_field_index("bytes") >= 0:
        images = [np.asarray(_IMAGE.decode_example(v)) for v in array.to_pylist()]
        if not images:
            return np.zeros(shape, dtype=np.uint8)
        return np.stack(images).reshape(shape + list(images[0].shape))
    return array.to_numpy(zero_copy_only=False).reshape(shape)


def _leaves(array: pa.Array) -> pa.Array:
    """All values of a (nested) list array, flattened."""
    while True:
        if isinstance(array.type, pa.ExtensionType):
            array = array.storage
        elif _is_list(array.type):
            array = array.flatten()
        else:
            return array


def _is_list(kind: pa.DataType) -> bool:
    return (
        pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
    )


def records(
    ds, columns: list[str], batch_size: int, check: Callable[[dict, int], None] | None = None
) -> Iterator[dict[str, np.ndarray]]:
    """The rows of `ds` as {column: numpy value}, read `batch_size` rows at a time.

    `check(arrays, first)`, when given, sees each batch's columns (`first`: the index of its
    first row) before any of its rows is yielded.
    """
    first = 0
    for table in ds.with_format("arrow").iter(batch_size=batch_size):
        arrays = {c: column_array(table.column(c), c) for c in columns}
        if check is not None:
            check(arrays, first)
        for i in range(table.num_rows):
            yield {c: arrays[c][i] for c in columns}
        first += table.num_rows


def import_hf(
    ref: str,
    out: str | Path,
    mapping: str | dict[str, str],
    config: str | None = None,
    split: str = "train",
    revision: str | None = None,
    streaming: bool = False,
    frame_size: int = 64,
    action_space: str | dict | None = None,
    env_id: str | None = None,
    progress: bool = True,
) -> datasets.Dataset:
    """Convert Hub or parquet data at `ref` into a tokworld dataset at `out`.

    `mapping` ({key: column} or the `--map` text) names the source columns. `streaming` reads
    a Hub dataset as an `IterableDataset` (for data larger than memory or disk); local parquet
    is always streamed. `action_space` (a `space_to_dict` dict or its JSON) overrides the
    inferred Discrete(max action + 1) and saves the pass over the action column it needs.
    """
    m = parse_map(mapping) if isinstance(mapping, str) else dict(mapping)
    check_output_dir(out)
    source = (ref, config, split, revision, streaming)
    ds = open_hf(*source)
    columns = ds.column_names or list(next(iter(ds), {}))
    for key, column in m.items():
        if column not in columns:
            raise TokWorldError(
                f"--map {key}={column}: no column {column!r} in {ref} (columns: "
                + ", ".join(columns)
                + ")"
            )
    columns = list(dict.fromkeys(m.values()))
    ds = ds.select_columns(columns)
    first = next(records(ds, columns, batch_size=1), None)
    if first is None:
        raise TokWorldError(f"dataset {ref!r} has no rows")
    reward_ndim = np.ndim(first[m["reward"]])
    if reward_ndim > 1:
        raise TokWorldError(f"reward column {m['reward']!r} holds arrays, not numbers per step")
    per_episode = reward_ndim == 1
    if not per_episode and not {"episode", "terminated", "truncated"} & m.keys():
        raise TokWorldError(
            "one-row-per-step data needs terminated=COL, truncated=COL or episode=COL in --map "
            "to tell where episodes end"
        )
    frame = np.asarray(first[m["observation"]])
    convert = FrameConverter(frame.shape[1:] if per_episode else frame.shape, frame_size)
    action_ndim = np.ndim(first[m["action"]]) - (1 if per_episode else 0)
    if action_space is not None:
        space = parse_action_space(action_space)
    elif action_ndim != 0:
        raise TokWorldError(
            f"actions in column {m['action']!r} are vectors: give --action-space as JSON, e.g. "
            '\'{"type": "MultiDiscrete", "nvec": [3, 3]}\''
        )
    else:
        actions = open_hf(*source, columns=[m["action"]]).select_columns([m["action"]])
        space = infer_action_space(actions, m["action"])
    meta = TrajectoryMeta(
        env_id=env_id or "unknown",
        action_space=space,
        frame_size=frame_size,
        source={
            "spec": f"hf:{ref}",
            "kind": "hf",
            "config": config,
            "split": split,
            "revision": hub_revision(ref, revision),
            "layout": "one row per episode" if per_episode else "one row per step",
            "map": m,
            "source_frame_shape": list(convert.source_shape),
            "conversion": convert.description,
            "ends": _ends_description(m),
        },
    )
    total = len(ds) if isinstance(ds, datasets.Dataset) else None
    disable = None if progress else True  # None: a bar only when stderr is a terminal
    names = (m["action"], m["reward"])

    def check(arrays: dict, first: int) -> None:
        """A batch of one-row-per-step data (an episode row is checked by `episode_rows`)."""
        actions, rewards = arrays[m["action"]], arrays[m["reward"]]
        where = lambda i: f"{ref} row {first + i}"  # noqa: E731
        check_source_steps(actions, rewards, space, where, names)
        for key in ("terminated", "truncated"):
            if key in m:
                end_flags(arrays[m[key]], m[key], where)

    def rows() -> Iterator[dict]:
        batch_size, unit = (1, "episode") if per_episode else (256, "step")
        items = records(ds, columns, batch_size, check=None if per_episode else check)
        items = tqdm(items, desc="import", unit=unit, total=total, disable=disable)
        if per_episode:
            return _episode_layout(items, m, convert, space, ref)
        return _step_layout(items, m, convert, action_converter(space))

    return write_trajectories(rows, out, meta, (frame_size, frame_size, 3))


def parse_action_space(given: str | dict) -> dict:
    """A `space_to_dict` description from its JSON text or dict, checked."""
    if isinstance(given, str):
        try:
            given = json.loads(given)
        except ValueError as e:
            raise TokWorldError(f"--action-space is not JSON: {e}") from None
    if not isinstance(given, dict):
        raise TokWorldError("--action-space must be a JSON object")
    return space_to_dict(space_from_dict(given))


def _ends_description(m: dict[str, str]) -> str:
    parts = [f"{key} from column {m[key]!r}" for key in ("terminated", "truncated") if key in m]
    if "episode" in m:
        parts.append(f"episodes delimited by column {m['episode']!r}")
    if "terminated" not in m:
        parts.append("no terminated column: the last step of each episode is marked truncated")
    return "; ".join(parts)


def _flags(row: dict, m: dict[str, str], key: str, n: int, where: str) -> np.ndarray:
    """Per-step flags of an episode row: a sequence, one value for the episode, or none."""
    flags = np.zeros(n, dtype=bool)
    if key not in m:
        return flags
    values = end_flags(row[m[key]], m[key], lambda t: f"{where}, step {t}")
    if values.ndim == 0:
        flags[-1:] = values
        return flags
    return values


def _episode_layout(ds, m, convert, space: dict, ref: str) -> Iterator[dict]:
    for i, row in enumerate(ds):
        actions = np.asarray(row[m["action"]])
        yield from episode_rows(
            i,
            row[m["observation"]],
            actions,
            np.asarray(row[m["reward"]]),
            _flags(row, m, "terminated", len(actions), f"{ref} row {i}"),
            _flags(row, m, "truncated", len(actions), f"{ref} row {i}"),
            convert,
            space,
            where=f"{ref} row {i}",
            columns=(m["action"], m["reward"]),
        )


def _step_layout(ds, m, convert, action_value) -> Iterator[dict]:
    """Rows of a one-row-per-step source, looking one row ahead to find episode ends."""
    rows = iter(ds)
    row = next(rows, None)
    episode, t = 0, 0
    while row is not None:
        following = next(rows, None)
        terminated = "terminated" in m and bool(row[m["terminated"]])
        truncated = "truncated" in m and bool(row[m["truncated"]])
        new_episode = "episode" in m and (
            following is not None and following[m["episode"]] != row[m["episode"]]
        )
        last = terminated or truncated or following is None or new_episode
        yield {
            "episode_index": episode,
            "frame_index": t,
            "observation": convert(row[m["observation"]]),
            "action": action_value(row[m["action"]]),
            "reward": float(row[m["reward"]]),
            "terminated": terminated,
            "truncated": truncated or (last and not terminated),
        }
        episode, t = (episode + 1, 0) if last else (episode, t + 1)
        row = following
