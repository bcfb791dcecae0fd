"""Local Minari datasets for tests: written by Minari's own DataCollector, never downloaded."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest


def record_minari(
    env: gym.Env,
    root: Path,
    dataset_id: str,
    episodes: int = 3,
    act: Callable[[int, int], object] | None = None,
    algorithm: str = "random",
    **collector_options,
) -> list[dict]:
    """Write Minari dataset `dataset_id` of `episodes` episodes in `env` under `root`; return
    what the env gave, per episode: observations `obs` (N+1), `actions`, `rewards`, `term`,
    `trunc`. `act(episode, t)` chooses each action, None for a random one (seeded)."""
    import minari

    collector = minari.DataCollector(env, **collector_options)
    collector.action_space.seed(0)
    recorded = []
    for episode in range(episodes):
        obs, _ = collector.reset(seed=episode)
        steps = {"obs": [obs], "actions": [], "rewards": [], "term": [], "trunc": []}
        done = False
        while not done:
            action = act(episode, len(steps["actions"])) if act else None
            action = collector.action_space.sample() if action is None else action
            obs, reward, term, trunc, _ = collector.step(action)
            done = term or trunc
            for key, value in zip(steps, (obs, action, reward, term, trunc), strict=True):
                steps[key].append(value)
        recorded.append({k: np.asarray(v) for k, v in steps.items()})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(root))
        collector.create_dataset(dataset_id, algorithm_name=algorithm)
    collector.close()
    return recorded
