"""The shared vocabulary: every token kind in one id space, and the layout of one time step.

Id space, each kind a contiguous slice, actions last so that a new action space only resizes
the tail::

    [specials | frame codes | rewards | ends | actions]

One time step is one block of tokens::

    [o^1 ... o^K] [a^1 ... a^A] [r] [d]

This module is the only code that knows offsets and the block layout.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import NamedTuple

import gymnasium as gym
import torch

from tokworld.errors import TokWorldError
from tokworld.tokenizer.codecs import ActionCodec, RewardCodec

SPECIALS = ("pad", "bos")
NUM_ENDS = 2  # 0: continue, 1: terminal


class Kind(IntEnum):
    """The kind of a token; `SPECIAL` never appears inside a block."""

    FRAME = 0
    ACTION = 1
    REWARD = 2
    END = 3
    SPECIAL = 4


class Step(NamedTuple):
    """One decoded block (or a batch of them)."""

    codes: torch.Tensor  # (..., K) frame codes in [0, codebook_size)
    action: torch.Tensor  # (...,) Discrete, (..., D) MultiDiscrete / Box
    reward: torch.Tensor  # (...,) float
    terminated: torch.Tensor  # (...,) bool


@dataclass(frozen=True)
class Vocabulary:
    """One id space for frame codes, actions, rewards and ends."""

    codebook_size: int
    tokens_per_frame: int
    action: ActionCodec
    reward: RewardCodec

    @classmethod
    def from_spaces(
        cls,
        action_space: gym.Space,
        codebook_size: int,
        tokens_per_frame: int = 16,
        observation_space: gym.Space | None = None,
        reward_codec: str = "symlog",
        reward_bins: int = 33,
        reward_bound: float = 10.0,
        action_bins: int = 32,
        action_bounds: tuple[float, float] | None = None,
    ) -> Vocabulary:
        """Build the vocabulary of an environment and a frame tokenizer."""
        if observation_space is not None:
            shape = getattr(observation_space, "shape", None)
            if shape is None or len(shape) != 3 or shape[-1] != 3:
                raise TokWorldError(f"observations must be HxWx3 frames, got {observation_space}")
        if codebook_size < 1 or tokens_per_frame < 1:
            raise TokWorldError("codebook_size and tokens_per_frame must be positive")
        return cls(
            codebook_size,
            tokens_per_frame,
            ActionCodec.from_space(action_space, bins=action_bins, bounds=action_bounds),
            RewardCodec(reward_codec, reward_bins, reward_bound),
        )

    def with_action_space(
        self, action_space: gym.Space, bins: int = 32, bounds: tuple[float, float] | None = None
    ) -> Vocabulary:
        """The same vocabulary with another action slice (only the tail of the id space moves)."""
        action = ActionCodec.from_space(action_space, bins=bins, bounds=bounds)
        return Vocabulary(self.codebook_size, self.tokens_per_frame, action, self.reward)

    def check_action_space(self, action_space: gym.Space, what: str = "the dataset") -> None:
        """Raise TokWorldError unless `action_space` is the one this vocabulary encodes."""
        try:
            same = self.action.matches(action_space)
        except TokWorldError as e:
            raise TokWorldError(f"action space of {what} is unusable: {e}") from None
        if not same:
            raise TokWorldError(
                f"action space of {what} ({action_space}) does not match the model's "
                f"vocabulary ({self.action.kind} {list(self.action.sizes)})"
            )

    # ---- id space -------------------------------------------------------------------------
    @property
    def frame_slice(self) -> slice:
        return slice(len(SPECIALS), len(SPECIALS) + self.codebook_size)

    @property
    def reward_slice(self) -> slice:
        start = self.frame_slice.stop
        return slice(start, start + self.reward.num_tokens)

    @property
    def end_slice(self) -> slice:
        start = self.reward_slice.stop
        return slice(start, start + NUM_ENDS)

    @property
    def action_slice(self) -> slice:
        start = self.end_slice.stop
        return slice(start, start + self.action.num_tokens)

    @property
    def size(self) -> int:
        return self.action_slice.stop

    def special_id(self, name: str) -> int:
        return SPECIALS.index(name)

    # ---- block layout ---------------------------------------------------------------------
    @property
    def block_size(self) -> int:
        return self.tokens_per_frame + self.action.tokens_per_step + 2

    @property
    def block_kinds(self) -> tuple[Kind, ...]:
        a = self.action.tokens_per_step
        return (Kind.FRAME,) * self.tokens_per_frame + (Kind.ACTION,) * a + (Kind.REWARD, Kind.END)

    @property
    def block_ranges(self) -> tuple[tuple[int, int], ...]:
        """For each position of a block, the [lo, hi) range of global ids allowed there."""
        frame = ((self.frame_slice.start, self.frame_slice.stop),) * self.tokens_per_frame
        base = self.action_slice.start
        action = tuple(
            (base + off, base + off + size)
            for off, size in zip(self.action.offsets, self.action.sizes, strict=True)
        )
        reward = ((self.reward_slice.start, self.reward_slice.stop),)
        end = ((self.end_slice.start, self.end_slice.stop),)
        return frame + action + reward + end

    def kinds(self, length: int, start: int = 0) -> torch.Tensor:
        """(length,) kind of the token at stream positions start .. start+length-1."""
        kinds = torch.tensor([int(k) for k in self.block_kinds])
        return kinds[(torch.arange(length) + start) % self.block_size]

    def allowed_mask(self, length: int, start: int = 0) -> torch.Tensor:
        """(length, size) bool: True where a token id may stand at stream position start + i.

        The model's logits at position p predict position p + 1, so it uses `start=1`.
        """
        ranges = torch.tensor(self.block_ranges)  # (block, 2)
        pos = (torch.arange(length) + start) % self.block_size
        ids = torch.arange(self.size)
        lo, hi = ranges[pos, 0:1], ranges[pos, 1:2]
        return (ids >= lo) & (ids < hi)

    # ---- encode / decode ------------------------------------------------------------------
    def encode(self, codes, action, reward, terminated) -> torch.Tensor:
        """Steps -> token blocks. codes (..., K), action (...,) or (..., D) -> (..., block)."""
        codes = torch.as_tensor(codes).long()
        if codes.shape[-1] != self.tokens_per_frame:
            raise TokWorldError(
                f"expected {self.tokens_per_frame} frame codes per step, got {codes.shape[-1]}"
            )
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise TokWorldError(f"frame codes must lie in [0, {self.codebook_size})")
        action_ids = self.action.encode(action) + self.action_slice.start
        if action_ids.shape[:-1] != codes.shape[:-1]:
            raise TokWorldError(
                f"action shape {tuple(torch.as_tensor(action).shape)} does not match "
                f"{self.action.kind} actions of {self.action.tokens_per_step} component(s)"
            )
        reward_ids = self.reward.encode(reward).unsqueeze(-1) + self.reward_slice.start
        end_ids = torch.as_tensor(terminated).long().unsqueeze(-1) + self.end_slice.start
        parts = (codes + self.frame_slice.start, action_ids, reward_ids, end_ids)
        return torch.cat(parts, dim=-1)

    def decode(self, tokens: torch.Tensor) -> Step:
        """(..., block) token blocks -> Step."""
        tokens = torch.as_tensor(tokens).long()
        k, a = self.tokens_per_frame, self.action.tokens_per_step
        return Step(
            codes=tokens[..., :k] - self.frame_slice.start,
            action=self.action.decode(tokens[..., k : k + a] - self.action_slice.start),
            reward=self.reward.decode(tokens[..., k + a] - self.reward_slice.start),
            terminated=(tokens[..., k + a + 1] - self.end_slice.start) == 1,
        )

    # ---- serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "codebook_size": self.codebook_size,
            "tokens_per_frame": self.tokens_per_frame,
            "action": self.action.to_dict(),
            "reward": self.reward.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Vocabulary:
        return cls(
            d["codebook_size"],
            d["tokens_per_frame"],
            ActionCodec.from_dict(d["action"]),
            RewardCodec.from_dict(d["reward"]),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> Vocabulary:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        try:
            return cls.from_json(Path(path).read_text())
        except (OSError, ValueError, KeyError) as e:
            raise TokWorldError(f"cannot read vocabulary {path}: {e}") from None
