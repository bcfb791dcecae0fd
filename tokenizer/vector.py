"""The vector-observation codec: a flat Box observation (D,) <-> D tokens, one per dimension.

As the Trajectory Transformer does, each dimension is cut into `bins` intervals fitted on a
dataset and a value becomes the index of its interval; dimension d's token is
`d * bins + bin`, so the D positions of a step own disjoint code ranges (the vocabulary's
`per_position_codes`) and the world model never confuses one dimension with another. A token
decodes to the middle of its interval, so a value inside the fitted range round-trips within
half a bin; values beyond it land in the outer bins.

Binnings (`VectorCodecConfig.binning`):

- `"quantile"` (default, the Trajectory Transformer's choice): edges at the dataset's quantiles,
  so every bin holds about as many observations: dense regions get fine bins.
- `"uniform"`: equal-width bins over the observation space's bounds where they are finite, the
  dataset's range where they are not.

Like the frame tokenizer, the codec is saved as `config.json` + `model.safetensors` (its edges);
`fit` replaces training.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
from torch import nn

from tokworld.errors import TokWorldError
from tokworld.tokenizer.pretrained import SafetensorsPretrained

BINNINGS = ("quantile", "uniform")


@dataclass(frozen=True)
class VectorCodecConfig:
    """`dims` values per observation, each cut into `bins` intervals fitted by `binning`."""

    dims: int
    bins: int = 64
    binning: str = "quantile"

    def __post_init__(self):
        if self.dims < 1:
            raise TokWorldError(f"a vector observation needs >= 1 dimension, got {self.dims}")
        if self.bins < 2:
            raise TokWorldError(f"the vector codec needs >= 2 bins per dimension, got {self.bins}")
        if self.binning not in BINNINGS:
            raise TokWorldError(f"binning must be one of {BINNINGS}, got {self.binning!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> VectorCodecConfig:
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise TokWorldError(f"unknown vector codec config field {sorted(unknown)[0]!r}")
        return cls(**data)


class VectorCodec(SafetensorsPretrained, nn.Module):
    """float observations (B, D) <-> codes (B, D); code of dimension d in [d*bins, (d+1)*bins).

    Has the frame tokenizer's interface (`encode`, `decode`, `codebook_size`,
    `tokens_per_frame`), so the vocabulary, world model and imagination take either.
    """

    config_class, model_type, name = VectorCodecConfig, "vector_codec", "vector codec"
    observation = "vector"
    per_position_codes = True

    def __init__(self, config: VectorCodecConfig):
        super().__init__()
        self.config = config
        self.register_buffer("edges", torch.zeros(config.dims, config.bins + 1))  # (D, bins + 1)

    @classmethod
    def fit(
        cls,
        observations,
        config: VectorCodecConfig | None = None,
        low=None,
        high=None,
    ) -> VectorCodec:
        """A codec whose bins are fitted on `observations` (N, D); `low`/`high` (D,) are the
        observation space's bounds, used by uniform binning where they are finite."""
        x = np.asarray(observations, dtype=np.float64)
        if x.ndim != 2 or len(x) == 0:
            raise TokWorldError(f"fit the vector codec on (N, D) observations, got {x.shape}")
        _check_finite(torch.from_numpy(x))
        config = config or VectorCodecConfig(dims=x.shape[1])
        if x.shape[1] != config.dims:
            raise TokWorldError(f"observations have {x.shape[1]} dims, the codec {config.dims}")
        if config.binning == "quantile":
            edges = np.quantile(x, np.linspace(0, 1, config.bins + 1), axis=0).T
        else:
            lo, hi = x.min(0), x.max(0)
            if low is not None:
                bound_lo, bound_hi = np.asarray(low, float), np.asarray(high, float)
                finite = np.isfinite(bound_lo) & np.isfinite(bound_hi)
                lo, hi = np.where(finite, bound_lo, lo), np.where(finite, bound_hi, hi)
            edges = np.linspace(lo, hi, config.bins + 1).T
        codec = cls(config)
        codec.edges.copy_(torch.from_numpy(edges))
        return codec.eval()

    @property
    def codebook_size(self) -> int:
        return self.config.dims * self.config.bins

    @property
    def tokens_per_frame(self) -> int:
        return self.config.dims

    @property
    def device(self) -> torch.device:
        return self.edges.device

    @property
    def centres(self) -> torch.Tensor:
        """(D, bins) the value each bin decodes to: the middle of its interval."""
        return (self.edges[:, 1:] + self.edges[:, :-1]) / 2

    def _values(self, observations) -> torch.Tensor:
        """Check float (B, D) observations; return them as float32 on our device."""
        x = torch.as_tensor(np.asarray(observations) if not torch.is_tensor(observations)
                            else observations)  # fmt: skip
        d = self.config.dims
        if x.ndim != 2 or x.shape[1] != d or not (x.is_floating_point() or x.dtype.is_signed):
            raise TokWorldError(
                f"vector observations must be numbers of shape (B, {d}), got "
                f"{str(x.dtype).removeprefix('torch.')} of shape {tuple(x.shape)}"
            )
        x = x.to(self.device, torch.float32)
        _check_finite(x)
        return x

    @torch.no_grad()
    def encode(self, observations) -> torch.Tensor:
        """float observations (B, D), tensor or array -> codes (B, D) in [0, codebook_size)."""
        x = self._values(observations)
        inner = self.edges[:, 1:-1].contiguous()  # (D, bins - 1)
        bins = torch.searchsorted(inner, x.T.contiguous(), right=True).T  # (B, D)
        return bins + self._offsets()

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, D) -> float32 observations (B, D), each value its bin's centre."""
        return self._centres_of(self._bins(codes))

    @torch.no_grad()
    def decode_unchecked(self, codes: torch.Tensor) -> torch.Tensor:
        """`decode` without the range check, which waits for the device (a host sync that a
        CUDA graph cannot hold): for (B, D) integer codes on the tokenizer's device known to
        lie in their dimensions' ranges, e.g. those a world model samples."""
        return self._centres_of(codes.long() - self._offsets())

    def _centres_of(self, bins: torch.Tensor) -> torch.Tensor:
        """Bins (B, D) -> (B, D) their centres."""
        return torch.gather(self.centres.T.expand(len(bins), -1, -1), 1, bins[:, None])[:, 0]

    def bin_width(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, D) -> (B, D) the width of each code's bin."""
        bins = self._bins(codes)
        widths = (self.edges[:, 1:] - self.edges[:, :-1]).T  # (bins, D)
        return torch.gather(widths.expand(len(bins), -1, -1), 1, bins[:, None])[:, 0]

    def _offsets(self) -> torch.Tensor:
        return torch.arange(self.config.dims, device=self.device) * self.config.bins

    def _bins(self, codes) -> torch.Tensor:
        """Check codes (B, D) of our dimensions; return their bins (B, D)."""
        codes = torch.as_tensor(codes, device=self.device)
        d, n = self.config.dims, self.config.bins
        if codes.ndim != 2 or codes.shape[1] != d or codes.dtype.is_floating_point:
            raise TokWorldError(f"codes must be integers of shape (B, {d}), got {codes.shape}")
        bins = codes.long() - self._offsets()
        if bins.numel() and (bins.min() < 0 or bins.max() >= n):
            raise TokWorldError(
                f"code of dimension d must lie in [d*{n}, (d+1)*{n}): got codes "
                f"{codes[(bins < 0) | (bins >= n)][:3].tolist()} out of their dimension's range"
            )
        return bins


def _check_finite(x: torch.Tensor) -> None:
    """Raise TokWorldError naming the first non-finite value of observations (B, D)."""
    bad = (~torch.isfinite(x)).nonzero()
    if len(bad):
        row, dim = bad[0].tolist()
        raise TokWorldError(f"vector observation at row {row}, dimension {dim} is not finite")
