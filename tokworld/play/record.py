"""A play session's episodes: kept step by step, saved as a trajectory dataset and a GIF, and
replayed through the engine to the same frames.

Every episode of a session (a dream from a real start, or a branch restored from a fork) is one
episode of the dataset; a branch holds the steps before its fork too, so each episode replays on
its own: start from its context window, seed the engine's generator with its seed, and take its
actions under its sampling settings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch

from tokworld.data.format import TrajectoryMeta, trajectory_row, write_trajectories
from tokworld.folders import atomic_dir
from tokworld.imagine import ImaginationEngine, ImaginedStep
from tokworld.sampling import SamplingConfig
from tokworld.tokenizer.frame import to_uint8

GIF_SCALE = 4
GIF_FPS = 8


@dataclass
class Episode:
    """One imagined episode: frames[t] is seen before actions[t], which gave rewards[t] and
    terminated[t]; sampling[t] drew step t. `inherited` steps came from the fork it was
    restored from (`forked_from`)."""

    window: int
    seed: int
    forked_from: str | None = None
    inherited: int = 0
    frames: list[np.ndarray] = field(default_factory=list)
    actions: list[int] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    terminated: list[bool] = field(default_factory=list)
    sampling: list[SamplingConfig] = field(default_factory=list)

    @property
    def steps(self) -> int:
        return len(self.actions)

    @property
    def ended(self) -> bool:
        return bool(self.terminated) and self.terminated[-1]

    def add(self, action: int, out: ImaginedStep, sampling: SamplingConfig) -> None:
        """Record one step: the action taken and what the engine imagined."""
        self.actions.append(action)
        self.rewards.append(float(out.reward[0]))
        self.terminated.append(bool(out.terminated[0]))
        self.sampling.append(sampling)
        self.frames.append(frame_of(out))

    def branch(self, fork: str) -> Episode:
        """A new episode continuing this one's steps, restored from the fork named `fork`."""
        lists = {k: list(getattr(self, k)) for k in ("frames", "actions", "rewards", "terminated")}
        return replace(
            self, forked_from=fork, inherited=self.steps, sampling=list(self.sampling), **lists
        )

    def describe(self) -> dict:
        """JSON for the dataset's metadata: where the episode starts and how it was drawn."""
        runs = []
        for t, s in enumerate(self.sampling):
            if not runs or runs[-1][1] != asdict(s):
                runs.append([t, asdict(s)])
        return {
            "window": self.window,
            "seed": self.seed,
            "forked_from": self.forked_from,
            "inherited_steps": self.inherited,
            "sampling": runs,
        }


def frame_of(out: ImaginedStep) -> np.ndarray:
    """The first row's decoded frame as uint8 (H, W, 3)."""
    return to_uint8(out.frames)[0].cpu().numpy()


def recordable(episodes: list[Episode]) -> list[Episode]:
    """The episodes worth saving: those with steps of their own (a branch: beyond its fork)."""
    return [e for e in episodes if e.steps > e.inherited]


def save_episodes(episodes: list[Episode], out: Path, meta: TrajectoryMeta, source: dict) -> dict:
    """Write `out/dataset` (trajectory schema; `source` plus each episode's `describe()` in its
    metadata) and `out/session.gif`, replacing an earlier save at `out`."""
    kept = recordable(episodes)
    played = TrajectoryMeta(
        meta.env_id,
        meta.action_space,
        meta.frame_size,
        {**source, "episodes": [e.describe() for e in kept]},
    )

    def rows():
        for i, e in enumerate(kept):
            for t in range(e.steps):
                yield trajectory_row(
                    i,
                    t,
                    e.frames[t],
                    e.actions[t],
                    e.rewards[t],
                    e.terminated[t],
                    False,
                    t == e.steps - 1,
                )

    out = Path(out)
    with atomic_dir(out, replace=True) as tmp:
        write_trajectories(rows, tmp / "dataset", played, kept[0].frames[0].shape)
        frames = np.stack([f for e in kept for f in e.frames])
        big = frames.repeat(GIF_SCALE, axis=1).repeat(GIF_SCALE, axis=2)
        iio.imwrite(tmp / "session.gif", big, duration=1000 / GIF_FPS, loop=0)
    return {
        "path": str(out),
        "dataset": str(out / "dataset"),
        "gif": str(out / "session.gif"),
        "episodes": len(kept),
        "steps": sum(e.steps for e in kept),
    }


def replay(
    engine: ImaginationEngine, context: dict[str, torch.Tensor], description: dict, actions
) -> np.ndarray:
    """The frames (T + 1, H, W, 3) uint8 of a recorded episode, imagined again: from `context`
    (its window), with the seed and sampling of `description` (its `describe()`), taking
    `actions` (T,)."""
    runs = description["sampling"]
    engine.generator.manual_seed(description["seed"])
    frames = [frame_of(engine.start(context))]
    for t, action in enumerate(actions):
        engine.sampling = SamplingConfig(**next(s for start, s in reversed(runs) if start <= t))
        frames.append(frame_of(engine.step(torch.tensor([int(action)]))))
    return np.stack(frames)
