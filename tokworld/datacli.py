"""`tokworld import`, `tokworld data info` and `tokworld data push`: bring datasets in, look at
them, share them on the Hub with a dataset card."""

from __future__ import annotations

import argparse
import json

import datasets
import numpy as np

from tokworld.data import (
    TrajectoryMeta,
    episode_bounds,
    load_trajectories,
    validate_trajectories,
)
from tokworld.errors import TokWorldError

COLUMN_DOCS = {
    "episode_index": "episode number; the rows of an episode are contiguous",
    "frame_index": "step number inside the episode, from 0",
    "observation": "the frame seen at this step, uint8 RGB",
    "action": "the action taken at this step",
    "reward": "the reward that action produced",
    "terminated": "the episode ended here (terminal state)",
    "truncated": "the episode was cut here (time limit or end of recording)",
}


def register(sub: argparse._SubParsersAction) -> None:
    """Add `import` and `data {info,push}`."""
    p = sub.add_parser("import", help="convert a Minari or Hub/parquet dataset to tokworld's")
    p.add_argument("spec", help="minari:DATASET_ID_OR_PATH or hf:REPO_OR_PATH")
    p.add_argument("--out", required=True, help="output dataset directory")
    p.add_argument("--frame-size", type=int, default=64)
    p.add_argument(
        "--map",
        dest="mapping",
        help="hf: source columns, observation=COL,action=COL,reward=COL"
        "[,terminated=COL,truncated=COL,episode=COL]",
    )
    p.add_argument("--config", help="hf: dataset configuration name")
    p.add_argument("--split", default="train", help="hf: split to import")
    p.add_argument("--revision", help="hf: Hub branch, tag or commit")
    p.add_argument(
        "--streaming",
        action="store_true",
        help="hf: stream a Hub dataset instead of downloading it first (local parquet always is)",
    )
    p.add_argument("--action-space", help='hf: JSON, e.g. {"type": "Discrete", "n": 18}')
    p.add_argument("--env-id", help="hf: gymnasium env id the data comes from")
    p.set_defaults(func=_import)

    data = sub.add_parser("data", help="inspect and share trajectory datasets")
    actions = data.add_subparsers(dest="action", required=True, metavar="ACTION")
    info = actions.add_parser("info", help="print episodes, steps, frames, returns, source")
    info.add_argument("dataset", help="dataset directory or Hub id")
    info.set_defaults(func=lambda args: dataset_info(args.dataset))
    push = actions.add_parser("push", help="push a dataset to the Hub with a dataset card")
    push.add_argument("dataset", help="dataset directory")
    push.add_argument("--repo", required=True, help="Hub dataset repo id, e.g. me/pong-random")
    push.add_argument("--private", action="store_true")
    push.set_defaults(func=lambda args: push_dataset(args.dataset, args.repo, args.private))


def _import(args: argparse.Namespace) -> dict:
    from tokworld.imports import import_dataset

    options = {
        "config": args.config,
        "split": args.split,
        "revision": args.revision,
        "streaming": args.streaming,
        "action_space": args.action_space,
        "env_id": args.env_id,
    }
    defaults = {"split": "train", "streaming": False}
    given = {k: v for k, v in options.items() if v != defaults.get(k)}
    ds = import_dataset(args.spec, args.out, args.frame_size, args.mapping, **given)
    return {"out": args.out, **describe(ds)}


def describe(ds: datasets.Dataset) -> dict:
    """Episodes, steps, frame shape, action space, return statistics and source of a dataset."""
    meta = TrajectoryMeta.from_dataset(ds)
    starts, lengths = episode_bounds(ds)
    rewards = ds.select_columns(["reward"]).with_format("numpy")[:]["reward"]
    returns = np.add.reduceat(rewards.astype(np.float64), starts)
    return {
        "env_id": meta.env_id,
        "episodes": len(starts),
        "steps": len(ds),
        "frame_shape": list(ds.features["observation"].shape),
        "action_space": meta.action_space,
        "returns": {
            "mean": float(returns.mean()),
            "std": float(returns.std()),
            "min": float(returns.min()),
            "max": float(returns.max()),
        },
        "episode_length": {"mean": float(lengths.mean()), "max": int(lengths.max())},
        "source": meta.source,
    }


def dataset_info(path_or_id: str, split: str = "train") -> dict:
    """`describe` a valid trajectory dataset given by a directory or Hub id."""
    ds = load_trajectories(path_or_id, split=split)
    validate_trajectories(ds)
    return {"dataset": path_or_id, **describe(ds)}


def dataset_card(ds: datasets.Dataset, repo_id: str, card=None):
    """The Hub dataset card of a trajectory dataset: schema, source, env id, collection policy.

    `card` is the card `push_to_hub` left in the repo (its YAML is kept); tags and a `tokworld`
    YAML entry holding the dataset's `TrajectoryMeta` are added, and the text is replaced.
    """
    from huggingface_hub import DatasetCard, DatasetCardData

    info = describe(ds)
    source = info["source"]
    card = card or DatasetCard(f"---\n{DatasetCardData(tags=['tokworld']).to_yaml()}\n---\n")
    card.data["tags"] = sorted(
        {*(card.data.get("tags") or []), "tokworld", "reinforcement-learning"}
    )
    card.data["tokworld"] = json.loads(TrajectoryMeta.from_dataset(ds).to_json())
    schema = "\n".join(
        f"| `{name}` | `{_feature_text(ds.features[name])}` | {COLUMN_DOCS.get(name, '')} |"
        for name in ds.column_names
    )
    returns = info["returns"]
    card.text = f"""
# {repo_id}

Trajectories in the tokworld format: one row per
environment step.

- **Environment**: `{info["env_id"]}`
- **Action space**: `{json.dumps(info["action_space"])}`
- **Frames**: {"x".join(map(str, info["frame_shape"]))} uint8 RGB
- **Episodes**: {info["episodes"]}, **steps**: {info["steps"]}
- **Episode return**: mean {returns["mean"]:.3f}, std {returns["std"]:.3f}, \
min {returns["min"]:.3f}, max {returns["max"]:.3f}

## Collection policy

{_policy_text(source)}

## Source

```json
{json.dumps(source, indent=2)}
```

## Schema

| column | type | meaning |
|---|---|---|
{schema}

Row t holds the frame seen at step t, the action taken there, and the reward and end flags
that action produced.

## Usage

```python
from tokworld import load_trajectories

ds = load_trajectories("{repo_id}")
```
"""
    return card


def _feature_text(feature) -> str:
    if isinstance(feature, datasets.Array3D):
        return f"Array3D{tuple(feature.shape)} {feature.dtype}"
    if isinstance(feature, datasets.Value):
        return feature.dtype
    return type(feature).__name__


def _policy_text(source: dict) -> str:
    kind = source.get("kind")
    if kind == "collect":
        sticky = ", sticky actions" if source.get("sticky_actions") else ""
        return (
            f"`tokworld collect`, policy `{source.get('policy', 'random')}`, "
            f"seed {source.get('seed')}{sticky}."
        )
    if kind in ("minari", "hf"):
        policy = source.get("policy") or "not stated by the source"
        return f"Imported from `{source['spec']}`; the recording policy: {policy}."
    return "Not recorded."


def push_dataset(path: str, repo_id: str, private: bool = False) -> dict:
    """Push the dataset at `path` to the Hub repo `repo_id` and write its dataset card."""
    from huggingface_hub import DatasetCard

    ds = load_trajectories(path)
    validate_trajectories(ds)
    try:
        ds.push_to_hub(repo_id, private=private)
        card = dataset_card(ds, repo_id, DatasetCard.load(repo_id))
        card.push_to_hub(repo_id)
    except Exception as e:  # the Hub client raises many types (auth, HTTP, network)
        raise TokWorldError(f"cannot push to {repo_id}: {e}") from None
    return {"repo": repo_id, "url": f"https://huggingface.co/datasets/{repo_id}"}
