"""Source steps -> rows of tokworld's schema: what every importer shares (frame and vector
conversion, the rows of one episode, action values and their checks)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from tokworld.data.format import trajectory_row
from tokworld.data.validate import check_steps
from tokworld.errors import TokWorldError
from tokworld.tokenizer.codecs import space_from_dict


@dataclass(frozen=True)
class FrameConverter:
    """Turns source frames of one shape into `frame_size x frame_size x 3` uint8 RGB frames.

    Source layouts: `HxWx3` RGB, `HxW` or `HxWx1` grayscale (replicated to RGB), and `SxHxW`
    channel-stacked grayscale with S smaller than H and W (the last frame of the stack is kept).
    Frames are resized with `cv2.INTER_AREA` when their size differs. Pixels stored in a wider
    integer type (as plain parquet lists often are) are accepted when they lie in 0..255.
    """

    source_shape: tuple[int, ...]
    frame_size: int

    def __post_init__(self):
        if self.layout is None:
            raise TokWorldError(
                f"observations of shape {tuple(self.source_shape)} are not frames "
                "(expected HxWx3, HxW, HxWx1 or SxHxW stacks of uint8 pixels)"
            )

    @property
    def layout(self) -> str | None:
        """'rgb', 'gray', 'stack', or None when the shape is not a frame."""
        shape = tuple(self.source_shape)
        if len(shape) == 2 and min(shape) > 1:
            return "gray"
        if len(shape) != 3 or min(shape[:2]) <= 1:
            return None
        if shape[-1] == 3:
            return "rgb"
        if shape[-1] == 1:
            return "gray"
        if shape[0] < min(shape[1:]):
            return "stack"
        return None

    @property
    def description(self) -> str:
        """The conversion in words, as recorded in the dataset's metadata."""
        shape = tuple(self.source_shape)
        steps = []
        if self.layout == "stack":
            steps.append(f"last frame of each {shape[0]}-frame stack")
        if self.layout in ("gray", "stack"):
            steps.append("grayscale replicated to RGB")
        height, width = shape[1:] if self.layout == "stack" else shape[:2]
        if (height, width) != (self.frame_size, self.frame_size):
            size = self.frame_size
            steps.append(f"resized {height}x{width} -> {size}x{size} (cv2.INTER_AREA)")
        return "; ".join(steps) or "none"

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        """One source frame -> (frame_size, frame_size, 3) uint8."""
        frame = np.asarray(frame)
        if frame.shape != tuple(self.source_shape):
            raise TokWorldError(
                f"frame shapes differ: {frame.shape} after {tuple(self.source_shape)}"
            )
        if frame.dtype != np.uint8:
            integers = np.issubdtype(frame.dtype, np.integer)
            if not (integers and frame.min() >= 0 and frame.max() <= 255):
                raise TokWorldError(f"frames have dtype {frame.dtype}, expected uint8 pixels")
            frame = frame.astype(np.uint8)
        if self.layout == "stack":
            frame = frame[-1]
        elif self.layout == "gray" and frame.ndim == 3:
            frame = frame[..., 0]
        if frame.shape[:2] != (self.frame_size, self.frame_size):
            size = (self.frame_size, self.frame_size)
            frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
        if frame.ndim == 2:
            frame = np.repeat(frame[:, :, None], 3, axis=2)
        return np.ascontiguousarray(frame)


@dataclass(frozen=True)
class VectorConverter:
    """Turns flat source observations of one length into finite float32 vectors."""

    source_shape: tuple[int]
    source_dtype: str

    @property
    def description(self) -> str:
        """The conversion in words, as recorded in the dataset's metadata."""
        return "none" if self.source_dtype == "float32" else f"{self.source_dtype} -> float32"

    def __call__(self, observation: np.ndarray) -> np.ndarray:
        """One source observation -> (D,) float32; a non-finite value is an error."""
        with np.errstate(over="ignore"):  # values beyond float32 become inf, refused below
            vector = np.asarray(observation, dtype=np.float32)
        if vector.shape != tuple(self.source_shape):
            raise TokWorldError(
                f"observation shapes differ: {vector.shape} after {tuple(self.source_shape)}"
            )
        bad = np.flatnonzero(~np.isfinite(vector))
        if bad.size:
            raise TokWorldError(
                f"observation dimension {bad[0]} is {np.asarray(observation)[bad[0]]}: "
                "observations must be finite"
            )
        return vector


def episode_rows(
    episode: int,
    frames: np.ndarray,
    actions: np.ndarray,
    rewards: np.ndarray,
    terminated: np.ndarray,
    truncated: np.ndarray,
    convert: FrameConverter | VectorConverter,
    space: dict,
    where: str,
    columns: tuple[str, str] = ("action", "reward"),
) -> Iterator[dict]:
    """The rows of one episode in tokworld's schema, after checking it is consistent.

    `frames` holds N or N+1 observations (frames or vectors, as `convert` reads them) for N
    actions (a trailing final observation is dropped); rewards and end flags hold N values;
    every action must be one the action `space` holds and every reward finite. An episode whose
    last step carries no end flag is marked truncated: its recording stopped there. `where`
    names the episode and `columns` the source's action and reward columns in errors.
    """
    n = len(actions)
    if n == 0:
        raise TokWorldError(f"{where}: episode has no steps")
    for name, values in (
        ("rewards", rewards),
        ("terminated", terminated),
        ("truncated", truncated),
    ):
        if len(values) != n:
            raise TokWorldError(f"{where}: {n} actions but {len(values)} {name}")
    if len(frames) not in (n, n + 1):
        raise TokWorldError(f"{where}: {n} actions but {len(frames)} observations")
    ends = np.flatnonzero(np.asarray(terminated[:-1]) | np.asarray(truncated[:-1]))
    if ends.size:
        raise TokWorldError(f"{where}: step {ends[0]} ends the episode before its last step")
    check_source_steps(actions, rewards, space, lambda t: f"{where}, step {t}", columns)
    action_value = action_converter(space)
    for t in range(n):
        action = action_value(actions[t])
        try:
            frame, last = convert(frames[t]), t == n - 1
        except TokWorldError as e:
            raise TokWorldError(f"{where}, step {t}: {e}") from None
        yield trajectory_row(
            episode, t, frame, action, rewards[t], terminated[t], truncated[t], last
        )


def check_source_steps(
    actions, rewards, space: dict, where: Callable[[int], str], columns: tuple[str, str]
) -> None:
    """`check_steps` on source data, whose actions may come as (N, 1) for a Discrete space or
    (N, *shape) for a Box or MultiDiscrete one."""
    actions = np.asarray(actions)
    flat = actions.reshape(len(actions), -1) if actions.ndim > 1 else actions
    if space["type"] == "Discrete" and flat.ndim == 2 and flat.shape[1] == 1:
        flat = flat[:, 0]
    check_steps(flat, rewards, space_from_dict(space), where, columns)


def action_converter(space: dict) -> Callable[[np.ndarray], object]:
    """The function turning one source action into the value the dataset stores for `space`."""
    if space["type"] == "Discrete":
        return int
    if space["type"] == "MultiDiscrete":
        return lambda a: np.asarray(a, dtype=np.int64).reshape(-1).tolist()
    return lambda a: np.asarray(a, dtype=np.float32).reshape(-1).tolist()
