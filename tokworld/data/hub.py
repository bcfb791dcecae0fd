"""A trajectory dataset described, and shared on the Hub with a dataset card that carries its
`TrajectoryMeta` (read back by `load_trajectories`)."""

from __future__ import annotations

import json

import datasets
import numpy as np
from huggingface_hub import DatasetCard, DatasetCardData

from tokworld.data.format import TrajectoryMeta, episode_bounds, load_trajectories
from tokworld.data.validate import validate_trajectories
from tokworld.errors import TokWorldError

COLUMN_DOCS = {
    "episode_index": "episode number; the rows of an episode are contiguous",
    "frame_index": "step number inside the episode, from 0",
    "action": "the action taken at this step",
    "reward": "the reward that action produced",
    "terminated": "the episode ended here (terminal state)",
    "truncated": "the episode was cut here (time limit or end of recording)",
}
OBSERVATION_DOCS = {
    "frames": "the frame seen at this step, uint8 RGB",
    "vector": "the observation vector seen at this step, float32",
}


def describe(ds: datasets.Dataset) -> dict:
    """Episodes, steps, observations (kind and shape; `frame_shape` too for frames), action
    space, return statistics and source of a dataset."""
    meta = TrajectoryMeta.from_dataset(ds)
    if meta.observation == "vector":
        observation = {"observation": "vector", "observation_shape": list(meta.observation_shape)}
    else:
        shape = list(ds.features["observation"].shape)
        observation = {"observation": "frames", "observation_shape": shape, "frame_shape": shape}
    starts, lengths = episode_bounds(ds)
    rewards = ds.select_columns(["reward"]).with_format("numpy")[:]["reward"]
    returns = np.add.reduceat(rewards.astype(np.float64), starts)
    return {
        "env_id": meta.env_id,
        "episodes": len(starts),
        "steps": len(ds),
        **observation,
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
    info = describe(ds)
    source = info["source"]
    meta = TrajectoryMeta.from_dataset(ds)
    docs = {**COLUMN_DOCS, "observation": OBSERVATION_DOCS[info["observation"]]}
    card = card or DatasetCard(f"---\n{DatasetCardData(tags=['tokworld']).to_yaml()}\n---\n")
    card.data["tags"] = sorted(
        {*(card.data.get("tags") or []), "tokworld", "reinforcement-learning"}
    )
    card.data["tokworld"] = json.loads(meta.to_json())
    schema = "\n".join(
        f"| `{name}` | `{_feature_text(ds.features[name])}` | {docs.get(name, '')} |"
        for name in ds.column_names
    )
    returns = info["returns"]
    card.text = f"""
# {repo_id}

Trajectories in the tokworld format: one row per
environment step.

- **Environment**: `{info["env_id"]}`
- **Action space**: `{json.dumps(info["action_space"])}`
- {_observation_text(info, meta)}
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

Row t holds the {"frame" if info["observation"] == "frames" else "observation vector"} seen \
at step t, the action taken there, and the reward and end flags that action produced.

## Usage

```python
from tokworld import load_trajectories

ds = load_trajectories("{repo_id}")
```
"""
    return card


def _observation_text(info: dict, meta: TrajectoryMeta) -> str:
    shape = info["observation_shape"]
    if info["observation"] == "frames":
        return f"**Frames**: {'x'.join(map(str, shape))} uint8 RGB"
    space = json.dumps(meta.observation_space)
    return f"**Observations**: float32 vectors of {shape[0]} dimensions, space `{space}`"


def _feature_text(feature) -> str:
    if isinstance(feature, datasets.Array3D):
        return f"Array3D{tuple(feature.shape)} {feature.dtype}"
    if isinstance(feature, datasets.List) and isinstance(feature.feature, datasets.Value):
        return f"List({feature.feature.dtype}, length={feature.length})"
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
    ds = load_trajectories(path)
    validate_trajectories(ds)
    try:
        ds.push_to_hub(repo_id, private=private)
        card = dataset_card(ds, repo_id, DatasetCard.load(repo_id))
        card.push_to_hub(repo_id)
    except Exception as e:  # the Hub client raises many types (auth, HTTP, network)
        raise TokWorldError(f"cannot push to {repo_id}: {e}") from None
    return {"repo": repo_id, "url": f"https://huggingface.co/datasets/{repo_id}"}
