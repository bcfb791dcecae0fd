"""Real-environment returns: a policy plays whole episodes; returns, best and worst frames.

Episodes run in a batch of envs at once (one policy forward per step for the whole batch);
episode i always starts from `env.reset(seed=seed + i)`, so with a policy a result does not
depend on how many envs ran side by side (a planner's candidate draws do: they are made for the
rows it plans together). ALE games also get a human-normalised score,
(return - random) / (human - random), from the random and human scores of the DQN papers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from tokworld.envs import make_env
from tokworld.errors import TokWorldError

# Game -> (random, human) episode returns, as tabulated for Atari 100k (IRIS, DreamerV3, ...).
ATARI_SCORES: dict[str, tuple[float, float]] = {
    "Alien": (227.8, 7127.7), "Amidar": (5.8, 1719.5), "Assault": (222.4, 742.0),
    "Asterix": (210.0, 8503.3), "BankHeist": (14.2, 753.1), "BattleZone": (2360.0, 37187.5),
    "Boxing": (0.1, 12.1), "Breakout": (1.7, 30.5), "ChopperCommand": (811.0, 7387.8),
    "CrazyClimber": (10780.5, 35829.4), "DemonAttack": (152.1, 1971.0), "Freeway": (0.0, 29.6),
    "Frostbite": (65.2, 4334.7), "Gopher": (257.6, 2412.5), "Hero": (1027.0, 30826.4),
    "Jamesbond": (29.0, 302.8), "Kangaroo": (52.0, 3035.0), "Krull": (1598.0, 2665.5),
    "KungFuMaster": (258.5, 22736.3), "MsPacman": (307.3, 6951.6), "Pong": (-20.7, 14.6),
    "PrivateEye": (24.9, 69571.3), "Qbert": (163.9, 13455.0), "RoadRunner": (11.5, 7845.0),
    "Seaquest": (68.4, 42054.7), "UpNDown": (533.4, 11693.2),
}  # fmt: skip

BatchAgent = Callable[[np.ndarray], object]  # uint8 frames (B, H, W, 3) -> actions (B, ...)


def human_normalized(env_id: str, score: float) -> float | None:
    """(score - random) / (human - random) for a known ALE game, else None."""
    game = env_id.removeprefix("ALE/").split("-")[0]
    if not env_id.startswith("ALE/") or game not in ATARI_SCORES:
        return None
    random, human = ATARI_SCORES[game]
    return (score - random) / (human - random)


@dataclass
class EpisodeReturns:
    """Per-episode returns and lengths (episode order), and the frames of the best and worst."""

    env_id: str
    returns: np.ndarray
    lengths: np.ndarray
    best_frames: np.ndarray
    worst_frames: np.ndarray

    def summary(self) -> dict:
        mean = float(self.returns.mean())
        return {
            "env_id": self.env_id,
            "episodes": len(self.returns),
            "mean": mean,
            "std": float(self.returns.std()),
            "min": float(self.returns.min()),
            "max": float(self.returns.max()),
            "mean_length": float(self.lengths.mean()),
            "env_steps": int(self.lengths.sum()),
            "human_normalized": human_normalized(self.env_id, mean),
        }


def play_episodes(
    env_id: str,
    agent: BatchAgent,
    episodes: int,
    *,
    seed: int = 0,
    num_envs: int = 16,
    frame_size: int = 64,
    observation: str = "frames",
    max_episode_steps: int | None = None,
    max_gif_frames: int = 500,
    progress: bool = True,
) -> EpisodeReturns:
    """Run `episodes` real episodes with `agent` and collect their returns.

    `agent(frames)` maps a batch of observations (uint8 frames, or float vectors with
    `observation="vector"`) to a batch of actions; if it has `reset(rows)`, that is called with
    the rows whose episode just started, and `retire(rows)` with those left idle, with no
    episode to play (a planner stops planning for them). Frames of at most `max_gif_frames` steps
    per episode are kept for the best and worst episode.
    """
    if episodes < 1:
        raise TokWorldError(f"--episodes must be >= 1, got {episodes}")
    n = min(num_envs, episodes)
    envs = [make_env(env_id, frame_size, max_episode_steps=max_episode_steps,
                     observation=observation) for _ in range(n)]  # fmt: skip
    returns, lengths = np.zeros(episodes), np.zeros(episodes, dtype=np.int64)
    kept: dict[str, tuple[float, int, list]] = {}
    slot_episode, frames, obs = [-1] * n, [[] for _ in range(n)], [None] * n
    next_episode, done = 0, 0
    reset = getattr(agent, "reset", None)
    retire = getattr(agent, "retire", None)
    bar = tqdm(total=episodes, desc="eval", unit="episode", disable=not progress)

    def start(slot: int) -> None:
        nonlocal next_episode
        slot_episode[slot] = next_episode
        obs[slot], _ = envs[slot].reset(seed=seed + next_episode)
        frames[slot] = [obs[slot]]
        next_episode += 1

    for slot in range(n):
        start(slot)
    if reset is not None:
        reset(None)
    try:
        while done < episodes:
            # Every slot is in the batch (finished ones idle), so agent state rows stay put.
            actions = agent(np.stack(obs))
            actions = actions.numpy() if torch.is_tensor(actions) else np.asarray(actions)
            restarted, finished = [], []
            for s in range(n):
                e = slot_episode[s]
                if e < 0:
                    continue
                obs[s], reward, terminated, truncated, _ = envs[s].step(actions[s])
                returns[e] += reward
                lengths[e] += 1
                if len(frames[s]) < max_gif_frames:
                    frames[s].append(obs[s])
                if terminated or truncated:
                    _keep(kept, returns[e], e, frames[s])
                    done += 1
                    bar.update()
                    if next_episode < episodes:
                        start(s)
                        restarted.append(s)
                    else:
                        slot_episode[s] = -1
                        finished.append(s)
            if restarted and reset is not None:
                reset(restarted)
            if finished and retire is not None:
                retire(finished)
    finally:
        bar.close()
        for env in envs:
            env.close()
    return EpisodeReturns(
        env_id, returns, lengths, np.stack(kept["best"][2]), np.stack(kept["worst"][2])
    )


def _keep(kept: dict, ret: float, episode: int, frames: list) -> None:
    """Remember the frames of the best and worst episode so far (ties: the earliest)."""
    if "best" not in kept or ret > kept["best"][0]:
        kept["best"] = (ret, episode, list(frames))
    if "worst" not in kept or ret < kept["worst"][0]:
        kept["worst"] = (ret, episode, list(frames))
