"""Codecs that turn actions and rewards into small integer codes, and back.

Each codec maps a value to `tokens_per_step` local codes; code `j` of position `i` lives in
`[offsets[i], offsets[i] + sizes[i])` of the codec's own local id space of `num_tokens` ids. The
vocabulary shifts these local ids into its global id space; nothing here knows global ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch

from tokworld.errors import TokWorldError


def space_to_dict(space: gym.Space) -> dict:
    """A JSON-able description of a Discrete, MultiDiscrete or Box space."""
    if isinstance(space, gym.spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, gym.spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": [int(n) for n in space.nvec.reshape(-1)]}
    if isinstance(space, gym.spaces.Box):
        return {
            "type": "Box",
            "low": [float(x) for x in space.low.reshape(-1)],
            "high": [float(x) for x in space.high.reshape(-1)],
        }
    raise TokWorldError(f"unsupported action space {space!r}: use Discrete, MultiDiscrete or Box")


def space_from_dict(spec: dict) -> gym.Space:
    """Inverse of `space_to_dict`."""
    kind = spec.get("type")
    if kind == "Discrete":
        return gym.spaces.Discrete(spec["n"], start=spec.get("start", 0))
    if kind == "MultiDiscrete":
        return gym.spaces.MultiDiscrete(spec["nvec"])
    if kind == "Box":
        low = np.asarray(spec["low"], dtype=np.float32)
        return gym.spaces.Box(low, np.asarray(spec["high"], dtype=np.float32), dtype=np.float32)
    raise TokWorldError(f"unknown action space type {kind!r} in {spec}")


@dataclass(frozen=True)
class ActionCodec:
    """Actions -> one local code per component.

    `kind` is "Discrete" (one token of n), "MultiDiscrete" (one token per component, each with its
    own sub-slice) or "Box" (one token per dimension: `bins` uniform bins over [low, high]).
    """

    kind: str
    sizes: tuple[int, ...]
    low: tuple[float, ...] = ()
    high: tuple[float, ...] = ()
    start: int = 0

    @classmethod
    def from_space(
        cls, space: gym.Space, bins: int = 32, bounds: tuple[float, float] | None = None
    ) -> ActionCodec:
        """Build the codec for a gymnasium action space.

        Unbounded Box dimensions are an error unless `bounds=(low, high)` is given.
        """
        if isinstance(space, gym.spaces.Discrete):
            return cls("Discrete", (int(space.n),), start=int(space.start))
        if isinstance(space, gym.spaces.MultiDiscrete):
            return cls("MultiDiscrete", tuple(int(n) for n in space.nvec.reshape(-1)))
        if isinstance(space, gym.spaces.Box):
            low, high = space.low.reshape(-1).astype(np.float64), space.high.reshape(-1)
            high = high.astype(np.float64)
            if bounds is not None:
                low = np.where(np.isfinite(low), low, bounds[0])
                high = np.where(np.isfinite(high), high, bounds[1])
            if not (np.isfinite(low).all() and np.isfinite(high).all()):
                raise TokWorldError(
                    f"Box action space {space} is unbounded: pass action bounds (low, high)"
                )
            if bins < 2:
                raise TokWorldError(f"Box actions need at least 2 bins, got {bins}")
            return cls("Box", (bins,) * low.size, tuple(low.tolist()), tuple(high.tolist()))
        raise TokWorldError(
            f"unsupported action space {space!r}: use Discrete, MultiDiscrete or Box"
        )

    @property
    def bins(self) -> int:
        """Bins per Box dimension; for discrete codecs, `from_space`'s default."""
        return self.sizes[0] if self.kind == "Box" else 32

    def matches(self, space: gym.Space) -> bool:
        """Whether `space` gives this very codec (Box spaces binned as this codec bins them)."""
        return ActionCodec.from_space(space, bins=self.bins) == self

    @property
    def tokens_per_step(self) -> int:
        return len(self.sizes)

    @property
    def num_tokens(self) -> int:
        return sum(self.sizes)

    @property
    def offsets(self) -> tuple[int, ...]:
        return tuple(int(x) for x in np.cumsum((0,) + self.sizes[:-1]))

    def _tensors(self, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(offsets, low, bin width) on `device`."""
        offsets = torch.tensor(self.offsets, device=device)
        if self.kind != "Box":
            return offsets, offsets, offsets
        low = torch.tensor(self.low, dtype=torch.float64, device=device)
        high = torch.tensor(self.high, dtype=torch.float64, device=device)
        sizes = torch.tensor(self.sizes, dtype=torch.float64, device=device)
        return offsets, low, (high - low) / sizes

    def encode(self, action) -> torch.Tensor:
        """(...,) or (..., D) actions -> (..., tokens_per_step) local codes."""
        action = action if torch.is_tensor(action) else torch.as_tensor(np.asarray(action))
        offsets, low, width = self._tensors(action.device)
        if self.kind == "Discrete":
            codes = (action.long() - self.start).unsqueeze(-1)
        elif self.kind == "MultiDiscrete":
            codes = action.long()
        else:
            codes = torch.floor((action.double() - low) / width).long()
            codes = codes.clamp(min=0).minimum(torch.tensor(self.sizes, device=action.device) - 1)
        return codes + offsets

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(..., tokens_per_step) local codes -> actions ((...,) long for Discrete)."""
        codes = torch.as_tensor(codes).long()
        offsets, low, width = self._tensors(codes.device)
        codes = codes - offsets
        if self.kind == "Discrete":
            return codes[..., 0] + self.start
        if self.kind == "MultiDiscrete":
            return codes
        return (low + (codes.double() + 0.5) * width).float()

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "sizes": list(self.sizes),
            "low": list(self.low),
            "high": list(self.high),
            "start": self.start,
        }

    @classmethod
    def from_dict(cls, d: dict) -> ActionCodec:
        return cls(d["kind"], tuple(d["sizes"]), tuple(d["low"]), tuple(d["high"]), d["start"])


def symlog(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.log1p(torch.abs(x))


def symexp(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.expm1(torch.abs(x))


@dataclass(frozen=True)
class RewardCodec:
    """Rewards -> one local code.

    `sign`: 3 codes for -1, 0, +1 (Atari-style clipping). `symlog`: `bins` uniform bins over
    [-symlog(bound), symlog(bound)] in symlog space, decoded to the bin centre; rewards beyond
    +-bound land in the edge bins. An odd bin count puts a bin centre on exactly 0.
    """

    kind: str = "symlog"
    bins: int = 33
    bound: float = 10.0

    def __post_init__(self):
        if self.kind not in ("sign", "symlog"):
            raise TokWorldError(f"unknown reward codec {self.kind!r}: use 'sign' or 'symlog'")
        if self.kind == "symlog" and self.bins < 2:
            raise TokWorldError(f"symlog rewards need at least 2 bins, got {self.bins}")

    @property
    def num_tokens(self) -> int:
        return 3 if self.kind == "sign" else self.bins

    @property
    def bin_width(self) -> float:
        """Width of one bin in symlog space."""
        return 2 * float(symlog(torch.tensor(self.bound))) / self.bins

    def encode(self, reward) -> torch.Tensor:
        """(...,) rewards -> (...,) local codes."""
        r = reward if torch.is_tensor(reward) else torch.as_tensor(np.asarray(reward))
        r = r.double()
        if self.kind == "sign":
            return torch.sign(r).long() + 1
        edge = float(symlog(torch.tensor(self.bound)))
        codes = torch.floor((symlog(r) + edge) / self.bin_width).long()
        return codes.clamp(0, self.bins - 1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(...,) local codes -> (...,) float rewards."""
        codes = torch.as_tensor(codes).long()
        if self.kind == "sign":
            return (codes - 1).float()
        centre = (codes.double() + 0.5 - self.bins / 2) * self.bin_width
        return symexp(centre).float()

    def to_dict(self) -> dict:
        return {"kind": self.kind, "bins": self.bins, "bound": self.bound}

    @classmethod
    def from_dict(cls, d: dict) -> RewardCodec:
        return cls(d["kind"], d["bins"], d["bound"])
