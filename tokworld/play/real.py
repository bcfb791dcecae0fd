"""The real env beside the dream: put where the dream's context ends, then given the same actions.

The env is reset with the seed its dataset was collected with, reset once more for each episode
collected before the context's, and the episode's recorded actions are replayed up to the
context's last frame (exact for envs that are deterministic given the seed, as ALE without
sticky actions and MiniGrid are). A fork is returned to by replaying again from there.
"""

from __future__ import annotations

import numpy as np

from tokworld.envs import make_env
from tokworld.errors import TokWorldError
from tokworld.play.starts import RealOrigin


def psnr(a: np.ndarray, b: np.ndarray) -> float | None:
    """PSNR in dB of two uint8 frames; None (infinite) where they are equal."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return None if mse == 0 else 10 * np.log10(255.0**2 / mse)


class RealEnv:
    """`env_id` at `frame_size`, stepped beside one dream."""

    def __init__(self, env_id: str, frame_size: int, sticky_actions: bool = False):
        self.env = make_env(env_id, frame_size=frame_size, sticky_actions=sticky_actions)
        self.frame: np.ndarray | None = None
        self.ended = False
        self.note = ""

    def start(self, origin: RealOrigin, actions=()) -> np.ndarray:
        """Reach `origin` (see the module docstring), then take `actions`; return the frame."""
        if origin.seed is None:
            raise TokWorldError(
                "the dataset records no collection seed: the real env cannot be put where the "
                "context ends"
            )
        self.frame, _ = self.env.reset(seed=origin.seed)
        for _ in range(origin.resets):
            self.frame, _ = self.env.reset()
        self.ended = False
        for action in origin.actions:
            self.step(action)
        if origin.frame is None or np.array_equal(origin.frame, self.frame):
            self.note = "real env at the context's last frame"
        else:
            self.note = (
                f"the real env differs from the dataset's context frame "
                f"(PSNR {psnr(origin.frame, self.frame):.1f} dB): it is not reproducible "
                "from its seed"
            )
        for action in actions:
            self.step(action)
        return self.frame

    def step(self, action: int) -> np.ndarray:
        """Take `action` unless the real episode has ended; return the frame now seen."""
        if not self.ended:
            self.frame, _, terminated, truncated, _ = self.env.step(action)
            self.ended = bool(terminated or truncated)
        return self.frame

    def close(self) -> None:
        self.env.close()
