"""Collect trajectories from a real environment into a trajectory dataset."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
from tqdm.auto import tqdm

from tokworld.data.format import TrajectoryMeta, trajectory_row, write_trajectories
from tokworld.envs import make_env, native_observation
from tokworld.errors import TokWorldError
from tokworld.folders import check_output_dir
from tokworld.tokenizer.codecs import space_to_dict

Policy = Callable[[np.ndarray], object]  # observation (H, W, 3) uint8 or (D,) float -> action
OBSERVATION_CHOICES = ("auto", "frames", "vector")


@dataclass(frozen=True)
class CollectSummary:
    """What a collection produced."""

    out: str
    episodes: int
    steps: int
    mean_return: float
    completed_episodes: int

    def to_dict(self) -> dict:
        return self.__dict__.copy()


def random_policy(action_space: gym.Space, seed: int) -> Policy:
    """Uniform random actions, reproducible from `seed`."""
    action_space.seed(seed)
    return lambda _frame: action_space.sample()


def env_steps(
    env: gym.Env, policy: Policy, steps: int, seed: int, progress: bool = True
) -> Iterator[dict]:
    """Yield `steps` rows of the trajectory schema; the last episode is cut with `truncated`.

    A policy with a `reset()` method (a recurrent one) has it called at each episode start.
    """
    reset = getattr(policy, "reset", lambda: None)
    obs, _ = env.reset(seed=seed)
    reset()
    episode, t = 0, 0
    for i in tqdm(range(steps), desc="collect", unit="step", disable=not progress):
        action = policy(obs)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        row = trajectory_row(episode, t, obs, action, reward, terminated, truncated, i == steps - 1)
        yield row
        t += 1
        if row["terminated"] or row["truncated"]:
            obs, _ = env.reset()
            reset()
            episode, t = episode + 1, 0
        else:
            obs = next_obs


def collect(
    env_id: str,
    steps: int,
    out: str | Path,
    policy: str | Policy = "random",
    seed: int = 0,
    frame_size: int = 64,
    sticky_actions: bool = False,
    progress: bool = True,
    observation: str = "auto",
) -> CollectSummary:
    """Run `policy` in `env_id` for `steps` steps and write the dataset to `out`.

    `observation`: "frames" stores `frame_size` RGB frames (rendered for envs that observe
    something else), "vector" the env's own flat Box observation as float32, "auto" a vector
    where the env observes one, frames otherwise. The same arguments give the same dataset.
    Writing is streamed: memory stays flat.
    """
    if steps < 1:
        raise TokWorldError(f"--steps must be a positive number of steps, got {steps}")
    if observation not in OBSERVATION_CHOICES:
        raise TokWorldError(f"--obs must be one of {OBSERVATION_CHOICES}, got {observation!r}")
    check_output_dir(out)
    if observation == "auto":
        observation = native_observation(env_id)
    env = make_env(
        env_id, frame_size=frame_size, sticky_actions=sticky_actions, observation=observation
    )
    vector = observation == "vector"
    if policy == "random":
        policy = random_policy(env.action_space, seed)
    elif isinstance(policy, str):
        raise TokWorldError(f"unknown policy {policy!r}: use 'random' or a policy object")
    meta = TrajectoryMeta(
        env_id=env_id,
        action_space=space_to_dict(env.action_space),
        frame_size=0 if vector else frame_size,
        source={"kind": "collect", "seed": seed, "sticky_actions": sticky_actions},
        observation_space=space_to_dict(env.observation_space) if vector else None,
    )
    try:
        ds = write_trajectories(
            lambda: env_steps(env, policy, steps, seed, progress),
            out,
            meta,
            env.observation_space.shape,
        )
    finally:
        env.close()
    return summarize(ds, str(out))


def summarize(ds, out: str) -> CollectSummary:
    """Episodes, steps and mean return (over completed episodes, else over all) of a dataset."""
    cols = ds.select_columns(["episode_index", "reward", "terminated", "truncated"])
    table = cols.with_format("numpy")[:]
    ep = table["episode_index"]
    _, inverse = np.unique(ep, return_inverse=True)
    returns = np.bincount(inverse, weights=table["reward"])
    # The final episode is unfinished unless it terminated: collection cut it short.
    complete = np.ones(len(returns), dtype=bool)
    complete[-1] = bool(table["terminated"][-1])
    chosen = returns[complete] if complete.any() else returns
    return CollectSummary(
        out=out,
        episodes=len(returns),
        steps=len(ep),
        mean_return=float(chosen.mean()),
        completed_episodes=int(complete.sum()),
    )
