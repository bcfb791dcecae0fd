"""Any gymnasium env id -> an env whose observations are square uint8 RGB frames, or, for an
env whose own observation is a flat Box, that vector."""

from __future__ import annotations

import ale_py
import gymnasium as gym
import minigrid  # noqa: F401  (registers the MiniGrid ids)
import numpy as np
from gymnasium.wrappers import (
    AddRenderObservation,
    AtariPreprocessing,
    ResizeObservation,
    TransformObservation,
)
from minigrid.wrappers import ImgObsWrapper, RGBImgObsWrapper

from tokworld.errors import TokWorldError

OBSERVATIONS = ("frames", "vector")

gym.register_envs(ale_py)
ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)  # no banner on stderr


def make_env(
    env_id: str,
    frame_size: int = 64,
    frame_skip: int = 4,
    sticky_actions: bool = False,
    max_episode_steps: int | None = None,
    observation: str = "frames",
) -> gym.Env:
    """Make `env_id` with `frame_size x frame_size x 3` uint8 observations, or with
    `observation="vector"` its own flat Box observations (float32).

    - ALE ids (`ALE/Breakout-v5`): Atari conventions, `frame_skip` frames per step (max-pooled),
      sticky actions (p=0.25) only when asked, the episode ends on game over.
    - MiniGrid ids: the fully observed RGB grid.
    - Envs whose observations already are HxWx3 uint8 frames: resized.
    - Everything else (classic control, ...): the `rgb_array` render is the observation.
    """
    for name, value in (("frame size", frame_size), ("frame skip", frame_skip)):
        if value < 1:
            raise TokWorldError(f"{name} must be >= 1, got {value}")
    kwargs = {} if max_episode_steps is None else {"max_episode_steps": max_episode_steps}
    if observation not in OBSERVATIONS:
        raise TokWorldError(f"observation must be one of {OBSERVATIONS}, got {observation!r}")
    if observation == "vector":
        return _vector_env(env_id, kwargs)
    try:
        if env_id.startswith("ALE/"):
            env = gym.make(
                env_id,
                frameskip=1,
                repeat_action_probability=0.25 if sticky_actions else 0.0,
                full_action_space=False,
                **kwargs,
            )
            env = AtariPreprocessing(
                env, noop_max=0, frame_skip=frame_skip, screen_size=frame_size, grayscale_obs=False
            )
            return env
        if env_id.startswith("MiniGrid") or env_id.startswith("BabyAI"):
            env = ImgObsWrapper(RGBImgObsWrapper(gym.make(env_id, **kwargs), tile_size=8))
        else:
            env = gym.make(env_id, render_mode="rgb_array", **kwargs)
            if not _is_frame_space(env.observation_space):
                env = AddRenderObservation(env, render_only=True)
    except (gym.error.Error, ImportError) as e:  # `module:Env-v0` imports `module`
        raise TokWorldError(f"unknown or unusable env id {env_id!r}: {e}") from None
    if not _is_frame_space(env.observation_space):
        raise TokWorldError(f"env {env_id!r} does not give HxWx3 frames")
    if env.observation_space.shape[:2] != (frame_size, frame_size):
        env = ResizeObservation(env, (frame_size, frame_size))
    return env


def _vector_env(env_id: str, kwargs: dict) -> gym.Env:
    """`env_id` as it is, checked to observe one flat Box, its observations as float32."""
    try:
        env = gym.make(env_id, **kwargs)
    except (gym.error.Error, ImportError) as e:
        raise TokWorldError(f"unknown or unusable env id {env_id!r}: {e}") from None
    space = env.observation_space
    if not is_vector_space(space):
        env.close()
        raise TokWorldError(
            f"env {env_id!r} observes {space}: vector observations must be one flat Box "
            "(Dict observations with image and vector parts are not supported)"
        )
    if space.dtype != np.float32:
        env = TransformObservation(env, lambda x: np.asarray(x, np.float32), float32_box(space))
    return env


def float32_box(space: gym.spaces.Box) -> gym.spaces.Box:
    """`space` as a float32 Box (bounds beyond float32's range become infinite)."""
    with np.errstate(over="ignore"):
        low, high = space.low.astype(np.float32), space.high.astype(np.float32)
    return gym.spaces.Box(low, high, dtype=np.float32)


def native_observation(env_id: str) -> str:
    """ "vector" when `env_id`'s own observation is a flat Box, "frames" otherwise (images,
    MiniGrid's dicts: those are observed as RGB frames)."""
    if env_id.startswith(("ALE/", "MiniGrid", "BabyAI")):
        return "frames"
    try:
        env = gym.make(env_id)
    except (gym.error.Error, ImportError) as e:
        raise TokWorldError(f"unknown or unusable env id {env_id!r}: {e}") from None
    try:
        return "vector" if is_vector_space(env.observation_space) else "frames"
    finally:
        env.close()


def is_vector_space(space: gym.Space) -> bool:
    """A flat Box of numbers (not an image)."""
    return (
        isinstance(space, gym.spaces.Box)
        and len(space.shape) == 1
        and np.issubdtype(space.dtype, np.number)
    )


def action_space(env_id: str) -> gym.Space:
    """The action space of `env_id` (the env is made as tokworld observes it, without
    rendering a vector env, and closed again)."""
    env = make_env(env_id, observation=native_observation(env_id))
    try:
        return env.action_space
    finally:
        env.close()


def _is_frame_space(space: gym.Space) -> bool:
    return (
        isinstance(space, gym.spaces.Box)
        and space.dtype == np.uint8
        and len(space.shape) == 3
        and space.shape[-1] == 3
    )
