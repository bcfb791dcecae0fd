"""Whole imagined episodes: closed-loop with a policy, or open-loop replaying real actions."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch

from tokworld.data.format import trajectory_row
from tokworld.imagine import ImaginationEngine
from tokworld.tokenizer.frame import to_uint8

# observations (uint8 frames (B, H, W, 3) or float vectors (B, D)) -> actions (B,) or (B, D)
BatchPolicy = Callable[[torch.Tensor], torch.Tensor]


def random_batch_policy(space: gym.Space, seed: int = 0) -> BatchPolicy:
    """Uniform random actions for a batch, reproducible from `seed`."""
    space.seed(seed)
    return lambda frames: torch.as_tensor(np.stack([space.sample() for _ in range(len(frames))]))


@dataclass
class Episodes:
    """A batch of imagined episodes, padded to `steps`.

    frames (N, steps + 1, H, W, 3) uint8, or (N, steps + 1, D) float32 for a vector codec:
    frames[:, t] is seen before action t; actions (N, steps, ...); rewards, terminated
    (N, steps); lengths (N,): steps up to and including a terminal one.
    """

    frames: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    lengths: np.ndarray

    @property
    def returns(self) -> np.ndarray:
        alive = np.arange(self.rewards.shape[1]) < self.lengths[:, None]
        return (self.rewards * alive).sum(1)

    def rows(self) -> Iterator[dict]:
        """Rows of the trajectory schema; an episode cut by `steps` ends `truncated`."""
        for e, length in enumerate(self.lengths):
            for t in range(int(length)):
                frame, action = self.frames[e, t], self.actions[e, t]
                reward, terminated = self.rewards[e, t], self.terminated[e, t]
                yield trajectory_row(
                    e, t, frame, action, reward, terminated, False, t == length - 1
                )


def observations(decoded: torch.Tensor) -> torch.Tensor:
    """A decoder's output as datasets store observations, on the CPU: float frames
    (B, 3, H, W) -> uint8 (B, H, W, 3); a vector codec's values (B, D) stay float32."""
    return decoded.float().cpu() if decoded.ndim == 2 else to_uint8(decoded).cpu()


@torch.no_grad()
def imagine_episodes(
    engine: ImaginationEngine,
    context: dict[str, torch.Tensor],
    steps: int,
    policy: BatchPolicy | None = None,
    actions: torch.Tensor | None = None,
) -> Episodes:
    """Imagine `steps` steps from each context row, acting with `policy` or replaying `actions`.

    An episode ends at the first step the model predicts terminal (the batch runs on; later
    steps of that row are ignored).
    """
    start = engine.start(context)
    frames = [observations(start.frames)]
    taken, rewards, ends = [], [], []
    for t in range(steps):
        action = policy(frames[-1]) if actions is None else actions[:, t]
        out = engine.step(action)
        taken.append(torch.as_tensor(action).cpu())
        rewards.append(out.reward.cpu())
        ends.append(out.terminated.cpu())
        frames.append(observations(out.frames))
    terminated = torch.stack(ends, 1).numpy()
    first_end = np.where(terminated.any(1), terminated.argmax(1) + 1, steps)
    return Episodes(
        frames=torch.stack(frames, 1).numpy(),
        actions=torch.stack(taken, 1).numpy(),
        rewards=torch.stack(rewards, 1).numpy(),
        terminated=terminated,
        lengths=first_end,
    )
