"""The shared vocabulary: every token kind in one id space, and the layout of one time step.

Id space, each kind a contiguous slice, actions last so that a new action space only resizes
the tail::

    [frame codes | rewards | ends | actions]

One time step is one block of tokens, its segments in the vocabulary's `order` (default
`(FRAME, ACTION, REWARD, END)`)::

    [o^1 ... o^K] [a^1 ... a^A] [r] [d]

The frame comes first in every order: it is the observation the policy acts on, so a stream
that stops right after a block's frame segment is a step waiting for its action (imagination
cuts its context there). The action comes before the reward and the end it causes. The valid
orders are therefore `(FRAME, ACTION, REWARD, END)` and `(FRAME, ACTION, END, REWARD)`.

This module is the only code that knows offsets and the block layout: others ask it for ids
(`ids` / `values`), slices (`id_slice`), segments (`segment`, `step_segments`), masks and the
rows two vocabularies share (`shared_ids`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from enum import IntEnum
from pathlib import Path
from typing import NamedTuple

import gymnasium as gym
import torch

from tokworld.errors import TokWorldError
from tokworld.tokenizer.codecs import ActionCodec, RewardCodec

NUM_ENDS = 2
TERMINAL = 1  # the end token of a terminal step; 0 continues


class Kind(IntEnum):
    """The kind of a token."""

    FRAME = 0
    ACTION = 1
    REWARD = 2
    END = 3


ID_ORDER = (Kind.FRAME, Kind.REWARD, Kind.END, Kind.ACTION)  # slices of the id space
DEFAULT_ORDER = (Kind.FRAME, Kind.ACTION, Kind.REWARD, Kind.END)  # segments of a block


class Step(NamedTuple):
    """One decoded block (or a batch of them)."""

    codes: torch.Tensor  # (..., K) frame codes in [0, codebook_size)
    action: torch.Tensor  # (...,) Discrete, (..., D) MultiDiscrete / Box
    reward: torch.Tensor  # (...,) float
    terminated: torch.Tensor  # (...,) bool


def _check_order(order: tuple[Kind, ...]) -> None:
    """Raise TokWorldError unless `order` is a valid block order (see the module docstring)."""
    names = [k.name.lower() for k in order]
    if sorted(order) != sorted(Kind):
        raise TokWorldError(f"block order must name frame, action, reward and end once: {names}")
    if order[0] != Kind.FRAME:
        raise TokWorldError(f"block order must start with the frame the policy acts on: {names}")
    action = order.index(Kind.ACTION)
    if action > order.index(Kind.REWARD) or action > order.index(Kind.END):
        raise TokWorldError(f"block order must put the action before its reward and end: {names}")


def _parse_kind(name: Kind | str) -> Kind:
    """A Kind from itself or its name ("frame", as `to_dict` writes it)."""
    try:
        return Kind[name.upper()] if isinstance(name, str) else Kind(name)
    except (KeyError, ValueError):
        raise TokWorldError(
            f"unknown token kind {name!r}: use frame, action, reward or end"
        ) from None


@dataclass(frozen=True)
class Vocabulary:
    """One id space for frame codes, actions, rewards and ends, and the block of one step.

    `order` lists the kinds of a block's segments (see the module docstring for valid orders).
    With `per_position_codes` (the vector codec's layout) the K observation positions own
    disjoint, equal code ranges: position j only takes codes in [j*c, (j+1)*c), c =
    codebook_size / K, and the masks say so.
    """

    codebook_size: int
    tokens_per_frame: int
    action: ActionCodec
    reward: RewardCodec
    order: tuple[Kind, ...] = DEFAULT_ORDER
    per_position_codes: bool = False

    def __post_init__(self):
        order = tuple(_parse_kind(k) for k in self.order)
        _check_order(order)
        object.__setattr__(self, "order", order)
        if self.per_position_codes and self.codebook_size % self.tokens_per_frame:
            raise TokWorldError(
                f"per-position codes need a codebook ({self.codebook_size}) divisible by the "
                f"{self.tokens_per_frame} observation tokens"
            )

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
        order: tuple[Kind, ...] = DEFAULT_ORDER,
        per_position_codes: bool = False,
    ) -> Vocabulary:
        """Build the vocabulary of an environment and an observation tokenizer (frames, or
        with `per_position_codes` the vector codec)."""
        if observation_space is not None:
            shape = getattr(observation_space, "shape", None)
            frames = shape is not None and len(shape) == 3 and shape[-1] == 3
            vector = isinstance(observation_space, gym.spaces.Box) and len(shape) == 1
            if not (frames or vector):
                raise TokWorldError(
                    f"observations must be HxWx3 frames or a flat Box, got {observation_space}"
                )
        if codebook_size < 1 or tokens_per_frame < 1:
            raise TokWorldError("codebook_size and tokens_per_frame must be positive")
        return cls(
            codebook_size,
            tokens_per_frame,
            ActionCodec.from_space(action_space, bins=action_bins, bounds=action_bounds),
            RewardCodec(reward_codec, reward_bins, reward_bound),
            order,
            per_position_codes,
        )

    def with_action_space(
        self, action_space: gym.Space, bins: int = 32, bounds: tuple[float, float] | None = None
    ) -> Vocabulary:
        """The same vocabulary with another action slice (only the tail of the id space moves)."""
        action = ActionCodec.from_space(action_space, bins=bins, bounds=bounds)
        return replace(self, action=action)

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
    def num_ids(self, kind: Kind) -> int:
        """How many ids the slice of `kind` holds."""
        return {
            Kind.FRAME: self.codebook_size,
            Kind.REWARD: self.reward.num_tokens,
            Kind.END: NUM_ENDS,
            Kind.ACTION: self.action.num_tokens,
        }[kind]

    def id_slice(self, kind: Kind) -> slice:
        """The contiguous slice of global ids that tokens of `kind` use."""
        start = sum(self.num_ids(k) for k in ID_ORDER[: ID_ORDER.index(kind)])
        return slice(start, start + self.num_ids(kind))

    @property
    def size(self) -> int:
        return sum(self.num_ids(k) for k in ID_ORDER)

    def shared_ids(self, other: Vocabulary) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids here, ids in `other`) of the tokens both vocabularies mean alike.

        A kind is shared when its codec is the same in both (frames: the codebook size); its
        rows of an embedding or output head may be copied from one model to the other.
        """
        codec = {
            Kind.FRAME: lambda v: (v.codebook_size, v.per_position_codes),
            Kind.REWARD: lambda v: v.reward,
            Kind.END: lambda v: NUM_ENDS,
            Kind.ACTION: lambda v: v.action,
        }
        shared = [k for k in ID_ORDER if codec[k](self) == codec[k](other)]
        ours = [torch.arange(s.start, s.stop) for s in map(self.id_slice, shared)]
        theirs = [torch.arange(s.start, s.stop) for s in map(other.id_slice, shared)]
        empty = torch.zeros(0, dtype=torch.long)
        return torch.cat([empty, *ours]), torch.cat([empty, *theirs])

    # ---- block layout ---------------------------------------------------------------------
    def count(self, kind: Kind) -> int:
        """How many tokens of `kind` one block holds."""
        return {
            Kind.FRAME: self.tokens_per_frame,
            Kind.ACTION: self.action.tokens_per_step,
            Kind.REWARD: 1,
            Kind.END: 1,
        }[kind]

    def segment(self, kind: Kind) -> slice:
        """The positions of `kind`'s tokens inside a block."""
        start = sum(self.count(k) for k in self.order[: self.order.index(kind)])
        return slice(start, start + self.count(kind))

    @property
    def step_segments(self) -> tuple[Kind, ...]:
        """The segments one step adds after the current frame, in stream order: the rest of its
        block, then the next block's frame."""
        return self.order[1:] + self.order[:1]

    @property
    def block_size(self) -> int:
        return sum(self.count(k) for k in self.order)

    @property
    def block_kinds(self) -> tuple[Kind, ...]:
        return tuple(k for k in self.order for _ in range(self.count(k)))

    def _ranges(self, kind: Kind) -> tuple[tuple[int, int], ...]:
        """The [lo, hi) range of global ids allowed at each of `kind`'s positions."""
        ids = self.id_slice(kind)
        if kind == Kind.FRAME and self.per_position_codes:
            width = self.codebook_size // self.tokens_per_frame
            starts = range(ids.start, ids.stop, width)
            return tuple((start, start + width) for start in starts)
        if kind != Kind.ACTION:
            return ((ids.start, ids.stop),) * self.count(kind)
        sizes = zip(self.action.offsets, self.action.sizes, strict=True)
        return tuple((ids.start + off, ids.start + off + size) for off, size in sizes)

    @property
    def block_ranges(self) -> tuple[tuple[int, int], ...]:
        """For each position of a block, the [lo, hi) range of global ids allowed there."""
        return tuple(r for k in self.order for r in self._ranges(k))

    def kinds(self, length: int, start: int = 0) -> torch.Tensor:
        """(length,) kind of the token at stream positions start .. start+length-1."""
        kinds = torch.tensor([int(k) for k in self.block_kinds])
        return kinds[(torch.arange(length) + start) % self.block_size]

    def allowed_mask(self, length: int, start: int = 0) -> torch.Tensor:
        """(length, size) bool: True where a token id may stand at stream position start + i.

        The model's logits at position p predict position p + 1 (block decoding: p + block),
        so it reads row (p + 1) % block (or p % block) of `allowed_mask(block_size)`.
        """
        ranges = torch.tensor(self.block_ranges)  # (block, 2)
        pos = (torch.arange(length) + start) % self.block_size
        ids = torch.arange(self.size)
        lo, hi = ranges[pos, 0:1], ranges[pos, 1:2]
        return (ids >= lo) & (ids < hi)

    # ---- one forward per step: parallel and block frame decoding ----------------------------
    @property
    def predicted_kinds(self) -> tuple[Kind, ...]:
        """Kind of each token one step predicts after its action, in stream order: the rest of
        the action's block (reward and end), then the next block's frame."""
        kinds = [k for k in self.step_segments if k != Kind.ACTION]
        return tuple(k for k in kinds for _ in range(self.count(k)))

    # Parallel decoding: one query per predicted token, at that token's stream position.
    def query_index(self, positions: torch.Tensor) -> torch.Tensor:
        """Stream positions of predicted tokens -> their index in `predicted_kinds`."""
        return (positions - self.segment(Kind.ACTION).stop) % self.block_size

    def query_context(self, positions: torch.Tensor) -> torch.Tensor:
        """Stream positions of predicted tokens -> the last position they are predicted from:
        their step's last action token."""
        return positions - self.query_index(positions) - 1

    def predicted_positions(self, steps: int) -> torch.Tensor:
        """(n,) stream positions, in `steps` whole blocks from position 0, of every token that
        follows an action in the stream: each block's reward and end, each frame but the first."""
        positions = torch.arange(steps * self.block_size)
        kinds = self.kinds(len(positions))
        after = (kinds != Kind.ACTION) & (positions >= self.segment(Kind.ACTION).start)
        return positions[after]

    # Block decoding (block teacher forcing): a step's predicted tokens are read off the outputs
    # of the step before at the same block slots. Steps are grouped as
    #     [r_{t-1} d_{t-1}] [o_t^1 ... o_t^K] [a_t]
    # (a group ends at its step's action), tokens see their whole group and the groups before
    # it, and the output at each non-action slot predicts the token one block later. The first
    # step's group starts with `lead_ids` (the reward and end of a step before the stream), so
    # a block stream places step t in block t + 1 and starts at `block_origin`.
    @property
    def block_origin(self) -> int:
        """Stream position of a block stream's first token: its lead, in block 0's slots after
        the action (RoPE is relative, so this shift changes nothing else)."""
        return self.segment(Kind.ACTION).stop

    def lead_ids(self) -> torch.Tensor:
        """(block - origin,) ids of a block stream's lead: the segments after the action of a
        step before the stream, no reward and no end."""
        after = self.order[self.order.index(Kind.ACTION) + 1 :]
        value = {Kind.REWARD: 0.0, Kind.END: False}
        return torch.cat([self.ids(k, value[k]) for k in after])

    def group_last(self, positions: torch.Tensor) -> torch.Tensor:
        """Stream positions -> the last position of their group in block decoding (their step's
        last action token; for a reward or end, the next step's): what a token may see up to."""
        return positions + (self.block_origin - 1 - positions) % self.block_size

    # ---- encode / decode ------------------------------------------------------------------
    def ids(self, kind: Kind, values) -> torch.Tensor:
        """One kind's values -> its global ids (..., count(kind)).

        codes (..., K); actions (...,) or (..., D); rewards (...,); terminated (...,) bool.
        """
        start = self.id_slice(kind).start
        if kind == Kind.FRAME:
            codes = torch.as_tensor(values).long()
            if codes.shape[-1] != self.tokens_per_frame:
                raise TokWorldError(
                    f"expected {self.tokens_per_frame} frame codes per step, got {codes.shape[-1]}"
                )
            if codes.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size):
                raise TokWorldError(f"frame codes must lie in [0, {self.codebook_size})")
            if self.per_position_codes and codes.numel():
                ranges = torch.tensor(self._ranges(Kind.FRAME), device=codes.device)  # (K, 2)
                ranges = ranges - start
                if ((codes < ranges[:, 0]) | (codes >= ranges[:, 1])).any():
                    raise TokWorldError("observation code outside its position's code range")
            return codes + start
        if kind == Kind.ACTION:
            return self.action.encode(values) + start
        if kind == Kind.REWARD:
            return self.reward.encode(values).unsqueeze(-1) + start
        return torch.as_tensor(values).long().unsqueeze(-1) + start

    def values(self, kind: Kind, ids: torch.Tensor):
        """Inverse of `ids`: global ids (..., count(kind)) -> that kind's values."""
        local = torch.as_tensor(ids).long() - self.id_slice(kind).start
        if kind == Kind.FRAME:
            return local
        if kind == Kind.ACTION:
            return self.action.decode(local)
        if kind == Kind.REWARD:
            return self.reward.decode(local[..., 0])
        return local[..., 0] == TERMINAL

    def is_event(self, ids: torch.Tensor) -> torch.Tensor:
        """True where a global id is a rare event: a nonzero reward or a terminal end."""
        ids = torch.as_tensor(ids)
        zero = int(self.ids(Kind.REWARD, 0.0))
        reward = self.id_slice(Kind.REWARD)
        nonzero = (ids >= reward.start) & (ids < reward.stop) & (ids != zero)
        return nonzero | (ids == self.id_slice(Kind.END).start + TERMINAL)

    def encode(self, codes, action, reward, terminated) -> torch.Tensor:
        """Steps -> token blocks. codes (..., K), action (...,) or (..., D) -> (..., block)."""
        frame, action_ids = self.ids(Kind.FRAME, codes), self.ids(Kind.ACTION, action)
        if action_ids.shape[:-1] != frame.shape[:-1]:
            raise TokWorldError(
                f"action shape {tuple(torch.as_tensor(action).shape)} does not match "
                f"{self.action.kind} actions of {self.action.tokens_per_step} component(s)"
            )
        parts = {
            Kind.FRAME: frame,
            Kind.ACTION: action_ids,
            Kind.REWARD: self.ids(Kind.REWARD, reward),
            Kind.END: self.ids(Kind.END, terminated),
        }
        return torch.cat([parts[k] for k in self.order], dim=-1)

    def decode(self, tokens: torch.Tensor) -> Step:
        """(..., block) token blocks -> Step."""
        tokens = torch.as_tensor(tokens).long()
        value = {k: self.values(k, tokens[..., self.segment(k)]) for k in self.order}
        return Step(value[Kind.FRAME], value[Kind.ACTION], value[Kind.REWARD], value[Kind.END])

    # ---- serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "codebook_size": self.codebook_size,
            "tokens_per_frame": self.tokens_per_frame,
            "action": self.action.to_dict(),
            "reward": self.reward.to_dict(),
            "order": [k.name.lower() for k in self.order],
            "per_position_codes": self.per_position_codes,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Vocabulary:
        """Inverse of `to_dict`; a dict without `order` (saved before it existed) gets the
        default order."""
        return cls(
            d["codebook_size"],
            d["tokens_per_frame"],
            ActionCodec.from_dict(d["action"]),
            RewardCodec.from_dict(d["reward"]),
            tuple(d.get("order", DEFAULT_ORDER)),
            bool(d.get("per_position_codes", False)),
        )

    def save(self, path: str | Path) -> None:
        """`to_dict` as a JSON file."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        """Inverse of `save`; an unreadable file is one TokWorldError line."""
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, ValueError, KeyError) as e:
            raise TokWorldError(f"cannot read vocabulary {path}: {e}") from None
