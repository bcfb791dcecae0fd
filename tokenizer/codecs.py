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

# How far (relative to 1 + |bound|) a Box action may pass a bound and still count as on it: the
# rounding of an action stored as float32 next to a float64 bound.
BOX_SLACK = 1e-6


def space_to_dict(space: gym.Space) -> dict:
    """A JSON-able description of a Discrete, MultiDiscrete or Box space (an infinite Box bound
    is written as null, which strict JSON can hold)."""
    if isinstance(space, gym.spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, gym.spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": [int(n) for n in space.nvec.reshape(-1)]}
    if isinstance(space, gym.spaces.Box):
        return {
            "type": "Box",
            "low": [float(x) if np.isfinite(x) else None for x in space.low.reshape(-1)],
            "high": [float(x) if np.isfinite(x) else None for x in space.high.reshape(-1)],
        }
    raise TokWorldError(f"unsupported action space {space!r}: use Discrete, MultiDiscrete or Box")


def space_from_dict(spec: dict) -> gym.Space:
    """Inverse of `space_to_dict`; a malformed description is a TokWorldError."""
    kind = spec.get("type") if isinstance(spec, dict) else None
    try:
        if kind == "Discrete":
            n, start = spec["n"], spec.get("start", 0)
            if not (_is_int(n) and n >= 1 and _is_int(start)):
                raise ValueError("n must be a positive integer and start an integer")
            return gym.spaces.Discrete(n, start=start)
        if kind == "MultiDiscrete":
            nvec = spec["nvec"]
            if not (isinstance(nvec, list) and nvec and all(_is_int(n) and n >= 1 for n in nvec)):
                raise ValueError("nvec must be a non-empty list of positive integers")
            return gym.spaces.MultiDiscrete(nvec)
        if kind == "Box":
            low = np.asarray([-np.inf if x is None else x for x in spec["low"]], np.float32)
            high = np.asarray([np.inf if x is None else x for x in spec["high"]], np.float32)
            if low.ndim != 1 or low.size == 0 or low.shape != high.shape:
                raise ValueError("low and high must be non-empty lists of equal length")
            if np.isnan(low).any() or np.isnan(high).any() or (low > high).any():
                raise ValueError("low and high must be numbers with low <= high")
            return gym.spaces.Box(low, high, dtype=np.float32)
    except KeyError as e:
        raise TokWorldError(f"{kind} action space {spec} has no {e.args[0]!r}") from None
    except (TypeError, ValueError) as e:
        raise TokWorldError(f"bad {kind} action space {spec}: {e}") from None
    raise TokWorldError(
        f"unknown action space type {kind!r} in {spec}: use Discrete, MultiDiscrete or Box"
    )


def action_violations(space: gym.Space, actions) -> tuple[torch.Tensor, str]:
    """(bad, domain): `bad` (N,) marks the actions (N,) or (N, D) that `space` does not hold
    (not finite, not an integer for a discrete space, out of range); `domain` says in words
    what it holds. Unlike an `ActionCodec`, an unbounded Box is fine: only finiteness counts."""
    if isinstance(space, gym.spaces.Box):
        low = tuple(float(x) for x in space.low.reshape(-1))
        high = tuple(float(x) for x in space.high.reshape(-1))
        codec = ActionCodec("Box", (2,) * len(low), low, high)  # never encodes: bins unused
    else:
        codec = ActionCodec.from_space(space)
    return codec.invalid(actions), codec.domain


def _is_int(x) -> bool:
    return isinstance(x, int | np.integer) and not isinstance(x, bool)


def _as_tensor(values) -> torch.Tensor:
    """A tensor of numbers (bool, integer or float) from a tensor or array-like."""
    values = values if torch.is_tensor(values) else torch.tensor(np.asarray(values))  # a copy
    if values.is_complex():
        raise TokWorldError(f"expected real numbers, got {values.dtype}")
    return values


def _check_width(action: torch.Tensor, width: int, kind: str) -> None:
    if action.ndim == 0 or action.shape[-1] != width:
        raise TokWorldError(
            f"{kind} actions have {width} components, got shape {tuple(action.shape)}"
        )


def _outside(values: torch.Tensor, low, high, integers: bool) -> torch.Tensor:
    """True where a value is not finite, lies outside [low, high] or, with `integers`, is not a
    whole number."""
    if values.dtype == torch.bool or not torch.is_floating_point(values):
        values = values.long()
        return (values < low) | (values > high)
    values = values.double()
    bad = ~torch.isfinite(values) | (values < low) | (values > high)
    return bad | (values != values.floor()) if integers else bad


def _first(values: torch.Tensor, bad: torch.Tensor) -> str:
    """`value (at index i)` of the first True of `bad` (a mask over the leading dimensions)."""
    index = tuple(int(i) for i in bad.nonzero()[0])
    value = values[index].tolist()
    if not index:
        return f"{value}"
    return f"{value} (at index {index[0] if len(index) == 1 else index})"


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
            if (high <= low).any():
                raise TokWorldError(f"Box action space {space} has a dimension with low >= high")
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

    @property
    def domain(self) -> str:
        """The actions this codec encodes, in words (for error messages)."""
        if self.kind == "Discrete":
            n, last = self.sizes[0], self.start + self.sizes[0] - 1
            return f"Discrete({n}) takes integers {self.start}..{last}"
        if self.kind == "MultiDiscrete":
            return f"MultiDiscrete({list(self.sizes)}) takes integers 0..n-1 per component"
        return f"Box takes finite values in [{list(self.low)}, {list(self.high)}]"

    def invalid(self, action) -> torch.Tensor:
        """(...,) or (..., D) actions -> (...,) bool: True where this codec cannot encode the
        action (not finite, not an integer for a discrete kind, outside the space's range).

        A Box value past a bound by no more than float32 rounding (`BOX_SLACK` relative) counts
        as on it: it lands in the edge bin.
        """
        action = _as_tensor(action)
        if self.kind == "Discrete":
            low, high = self.start, self.start + self.sizes[0] - 1
            return _outside(action, low, high, integers=True)
        _check_width(action, self.tokens_per_step, self.kind)
        if self.kind == "MultiDiscrete":
            high = torch.tensor(self.sizes, device=action.device) - 1
            return _outside(action, 0, high, integers=True).any(-1)
        low = torch.tensor(self.low, dtype=torch.float64, device=action.device)
        high = torch.tensor(self.high, dtype=torch.float64, device=action.device)
        low, high = low - BOX_SLACK * (1 + low.abs()), high + BOX_SLACK * (1 + high.abs())
        return _outside(action, low, high, integers=False).any(-1)

    def encode(self, action) -> torch.Tensor:
        """(...,) or (..., D) actions -> (..., tokens_per_step) local codes.

        An action the codec cannot encode (see `invalid`) is a TokWorldError, never clamped.
        """
        action = _as_tensor(action)
        bad = self.invalid(action)
        if bad.any():
            raise TokWorldError(f"cannot encode action {_first(action, bad)}: {self.domain}")
        offsets, low, width = self._tensors(action.device)
        if self.kind == "Discrete":
            codes = (action.long() - self.start).unsqueeze(-1)
        elif self.kind == "MultiDiscrete":
            codes = action.long()
        else:  # an action on (or within `BOX_SLACK` of) a bound belongs to the edge bin
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

    def decode_components(self, codes: torch.Tensor) -> torch.Tensor:
        """(..., tokens_per_step) codes counted from 0 within each component -> actions, as
        `decode`."""
        codes = torch.as_tensor(codes).long()
        return self.decode(codes + torch.tensor(self.offsets, device=codes.device))

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
        """(...,) finite rewards -> (...,) local codes; a non-finite one is a TokWorldError."""
        r = _as_tensor(reward).double()
        bad = ~torch.isfinite(r)
        if bad.any():
            raise TokWorldError(f"cannot encode reward {_first(r, bad)}: rewards must be finite")
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
