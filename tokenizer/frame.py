"""Frame tokenizer: a VQ-VAE that turns uint8 RGB frames into K discrete codes and back.

conv encoder -> quantizer (vector-quantize-pytorch) -> conv decoder. A 64x64 frame becomes a
4x4 grid of codes (16 tokens, like IRIS) or, with `tokens_per_frame=64`, an 8x8 grid.

What makes small objects (Atari's ball) survive 16 tokens:

- the decoder is stronger than the encoder (more channels and residual blocks per resolution):
  turning a code back into sharp pixels is the hard half;
- the quantizer: `VectorQuantize` (the default) looks codes up by cosine similarity in a small
  space (`codebook_dim` < `dim`, l2-normalised), with EMA updates, k-means init and dead-code
  replacement, so the codebook stays in use; `FSQ` (the `base` preset) rounds a few bounded
  latents to fixed levels, has no codebook to collapse, and learns Breakout's paddle sooner, but
  uses fewer of its codes;
- the reconstruction loss up-weights foreground pixels: a pixel that differs by more than
  `foreground_threshold` from the batch's per-pixel median frame (the static background) counts
  `1 + foreground_weight` times. A 2-pixel ball is ~0.05% of a frame; without the weight,
  blurring it away costs almost nothing. Even so the ball is rarely drawn at 16 tokens;
  `foreground_loss="balanced"` draws it most of the time, but only by hedging: where the code
  does not pin the ball down, the decoder paints copies along its likely path, since a missed
  ball costs more than a false one. `"symmetric"` charges both the same: it removes the ghosts
  and draws the ball only where the code knows it, but on MiniGrid it loses the agent, so no
  preset uses it (figures in the README).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
from einops import rearrange
from torch import nn
from vector_quantize_pytorch import FSQ, VectorQuantize

from tokworld.errors import TokWorldError
from tokworld.presets import preset_fields
from tokworld.tokenizer.foreground import FOREGROUND_LOSSES, foreground_loss
from tokworld.tokenizer.pretrained import SafetensorsPretrained

# FSQ levels whose product is the codebook size (the FSQ paper's choices where they are exact).
FSQ_LEVELS = {64: (4, 4, 4), 256: (8, 8, 4), 512: (8, 8, 8), 1024: (8, 8, 4, 4),
              4096: (8, 8, 8, 8)}  # fmt: skip


@dataclass(frozen=True)
class FrameTokenizerConfig:
    """Architecture and losses of a `FrameTokenizer`.

    The encoder first folds `patch_size` x `patch_size` pixels into channels (the decoder unfolds
    them at the end), then halves the resolution down to the token grid. Channel tuples list one
    width per resolution, from the patch grid down to the token grid (16, 8, 4 for 16 tokens of
    a 64x64 frame in patches of 4); a configuration with fewer downsamplings uses the leading
    entries.
    """

    frame_size: int = 64
    tokens_per_frame: int = 16
    codebook_size: int = 512
    quantizer: str = "vq"  # "vq" (VectorQuantize, EMA) or "fsq" (FSQ, levels from FSQ_LEVELS)
    patch_size: int = 4  # p x p pixels folded into channels at the input, unfolded at the output
    dim: int = 128  # channels of the latent grid the quantizer sees
    codebook_dim: int = 8  # vq: codes are l2-normalised vectors of this size
    enc_channels: tuple[int, ...] = (64, 96, 128, 128)
    dec_channels: tuple[int, ...] = (64, 128, 128, 128)
    enc_blocks: int = 1
    dec_blocks: int = 2
    ema_decay: float = 0.9
    kmeans_init: bool = True
    dead_code_threshold: float = 0.01  # vq: replace codes used < once per ~20 batches (EMA count)
    commitment_weight: float = 0.25
    l1_weight: float = 1.0
    l2_weight: float = 1.0
    foreground_weight: float = 4.0
    foreground_threshold: float = 0.05
    foreground_loss: str = "weighted"  # one of FOREGROUND_LOSSES: see tokenizer/foreground.py

    def __post_init__(self):
        side = math.isqrt(self.tokens_per_frame)
        if side * side != self.tokens_per_frame:
            raise TokWorldError(f"tokens_per_frame must be a square, got {self.tokens_per_frame}")
        factor = self.frame_size // (side * self.patch_size)
        if factor * side * self.patch_size != self.frame_size or factor & (factor - 1):
            raise TokWorldError(
                f"frame_size {self.frame_size} is not the {side}x{side} token grid times "
                f"patch_size {self.patch_size} times a power of two"
            )
        if min(len(self.enc_channels), len(self.dec_channels)) <= self.levels:
            raise TokWorldError(
                f"{self.levels} downsamplings need {self.levels + 1} channel widths"
            )
        if any(c < 8 or c % 8 for c in self.enc_channels + self.dec_channels):
            raise TokWorldError(
                "channel widths must be positive multiples of 8 (GroupNorm of 8 groups)"
            )
        if min(self.enc_blocks, self.dec_blocks) < 0:
            raise TokWorldError(
                f"enc_blocks and dec_blocks must be >= 0, got {self.enc_blocks}, {self.dec_blocks}"
            )
        if self.foreground_loss not in FOREGROUND_LOSSES:
            raise TokWorldError(
                f"foreground_loss must be one of {', '.join(FOREGROUND_LOSSES)}, "
                f"got {self.foreground_loss!r}"
            )
        if self.quantizer not in ("vq", "fsq"):
            raise TokWorldError(f"quantizer must be 'vq' or 'fsq', got {self.quantizer!r}")
        if self.quantizer == "fsq" and self.codebook_size not in FSQ_LEVELS:
            raise TokWorldError(f"fsq codebook_size must be one of {sorted(FSQ_LEVELS)}")

    @property
    def grid(self) -> int:
        """Side of the token grid."""
        return math.isqrt(self.tokens_per_frame)

    @property
    def levels(self) -> int:
        """Number of 2x downsamplings from the frame to the token grid."""
        return int(math.log2(self.frame_size // (self.grid * self.patch_size)))

    @classmethod
    def preset(cls, name: str, **overrides) -> FrameTokenizerConfig:
        """A preset plus `overrides`: `tiny` (tests), `small` (CPU, minutes), `base` (IRIS)."""
        return cls(**preset_fields(name, "tokenizer", {f.name for f in fields(cls)}, overrides))

    def to_dict(self) -> dict:
        """JSON-ready dict (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: dict) -> FrameTokenizerConfig:
        """Inverse of `to_dict`."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise TokWorldError(f"unknown tokenizer config field {sorted(unknown)[0]!r}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


@dataclass
class FrameTokenizerOutput:
    """What a forward pass of the tokenizer returns."""

    reconstruction: torch.Tensor  # (B, 3, H, W) float, unclamped, target range [0, 1]
    codes: torch.Tensor  # (B, K) long
    commitment_loss: torch.Tensor  # scalar (0 for fsq)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(8, channels)


class ResBlock(nn.Module):
    """GroupNorm (made by `norm`) -> SiLU -> conv3x3, twice, plus the input."""

    def __init__(self, channels: int, norm: Callable[[int], nn.Module] = _norm):
        super().__init__()
        self.body = nn.Sequential(
            norm(channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
            norm(channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _stage(cin: int, cout: int, blocks: int, resample: nn.Module | None) -> list[nn.Module]:
    layers = [ResBlock(cin) for _ in range(blocks)]
    if resample is not None:
        layers.append(resample)
    elif cin != cout:
        layers.append(nn.Conv2d(cin, cout, 1))
    return layers


class Encoder(nn.Module):
    """(B, 3, H, W) in [-1, 1] -> (B, dim, h, w)."""

    def __init__(self, cfg: FrameTokenizerConfig):
        super().__init__()
        ch = cfg.enc_channels[: cfg.levels + 1]
        p = cfg.patch_size
        layers: list[nn.Module] = [nn.PixelUnshuffle(p), nn.Conv2d(3 * p * p, ch[0], 3, padding=1)]
        for cin, cout in zip(ch[:-1], ch[1:], strict=True):
            down = nn.Conv2d(cin, cout, 3, stride=2, padding=1)
            layers += _stage(cin, cout, cfg.enc_blocks, down)
        layers += _stage(ch[-1], ch[-1], cfg.enc_blocks, None)
        layers += [_norm(ch[-1]), nn.SiLU(), nn.Conv2d(ch[-1], cfg.dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """(B, dim, h, w) -> (B, 3, H, W), more blocks and channels than the encoder."""

    def __init__(self, cfg: FrameTokenizerConfig):
        super().__init__()
        ch = cfg.dec_channels[: cfg.levels + 1][::-1]  # token grid -> full frame
        layers: list[nn.Module] = [nn.Conv2d(cfg.dim, ch[0], 3, padding=1)]
        for cin, cout in zip(ch[:-1], ch[1:], strict=True):
            up = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cout, 3, padding=1)
            )
            layers += _stage(cin, cout, cfg.dec_blocks, up)
        layers += _stage(ch[-1], ch[-1], cfg.dec_blocks, None)
        p = cfg.patch_size
        layers += [_norm(ch[-1]), nn.SiLU(), nn.Conv2d(ch[-1], 3 * p * p, 3, padding=1)]
        layers.append(nn.PixelShuffle(p))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def _make_quantizer(cfg: FrameTokenizerConfig) -> nn.Module:
    if cfg.quantizer == "fsq":
        return FSQ(levels=list(FSQ_LEVELS[cfg.codebook_size]), dim=cfg.dim)
    return VectorQuantize(
        dim=cfg.dim,
        codebook_size=cfg.codebook_size,
        codebook_dim=cfg.codebook_dim,
        use_cosine_sim=True,
        decay=cfg.ema_decay,
        kmeans_init=cfg.kmeans_init,
        threshold_ema_dead_code=cfg.dead_code_threshold,
        commitment_weight=cfg.commitment_weight,
    )


def to_uint8(frames: torch.Tensor) -> torch.Tensor:
    """Float frames (B, 3, H, W) in [0, 1] -> uint8 (B, H, W, 3), rounded and clamped."""
    scaled = (frames.detach().clamp(0, 1) * 255).round().to(torch.uint8)
    return rearrange(scaled, "b c h w -> b h w c")


class FrameTokenizer(SafetensorsPretrained, nn.Module):
    """uint8 frames (B, H, W, 3) <-> codes (B, K); see the module docstring for the design."""

    config_class, model_type, name = FrameTokenizerConfig, "frame_tokenizer", "tokenizer"
    observation = "frames"
    per_position_codes = False

    def __init__(self, config: FrameTokenizerConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.quantizer = _make_quantizer(config)
        self.decoder = Decoder(config)

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def tokens_per_frame(self) -> int:
        return self.config.tokens_per_frame

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def _pixels(self, frames) -> torch.Tensor:
        """Check uint8 (B, H, W, 3) frames; return float (B, 3, H, W) in [0, 1] on our device."""
        if isinstance(frames, np.ndarray):
            frames = torch.from_numpy(frames)
        if not isinstance(frames, torch.Tensor):
            raise TokWorldError(f"frames must be a uint8 tensor or array, got {type(frames)}")
        s = self.config.frame_size
        if frames.dtype != torch.uint8 or frames.ndim != 4 or tuple(frames.shape[1:]) != (s, s, 3):
            raise TokWorldError(
                f"frames must be uint8 of shape (B, {s}, {s}, 3), got "
                f"{str(frames.dtype).removeprefix('torch.')} of shape {tuple(frames.shape)}"
            )
        x = rearrange(frames.to(self.device), "b h w c -> b c h w")
        return x.float() / 255

    def _quantize(self, z: torch.Tensor, freeze: bool):
        """(B, dim, h, w) -> quantized (B, dim, h, w), codes (B, K), commitment loss."""
        seq = rearrange(z, "b c h w -> b (h w) c")  # channel-last: see get_output_from_indices
        if self.config.quantizer == "fsq":
            quantized, codes = self.quantizer(seq)
            commit = seq.new_zeros(())
        else:
            quantized, codes, commit = self.quantizer(seq, freeze_codebook=freeze)
        grid = rearrange(quantized, "b (h w) c -> b c h w", h=self.config.grid)
        return grid, codes.long(), commit

    def forward(self, frames) -> FrameTokenizerOutput:
        """Encode, quantize (updating the codebook in training mode) and decode."""
        x = self._pixels(frames)
        quantized, codes, commit = self._quantize(self.encoder(x * 2 - 1), freeze=False)
        return FrameTokenizerOutput(self.decoder(quantized), codes, commit)

    @torch.no_grad()
    def encode(self, frames) -> torch.Tensor:
        """uint8 frames (B, H, W, 3), tensor or array -> codes (B, K) in [0, codebook_size)."""
        x = self._pixels(frames)
        return self._quantize(self.encoder(x * 2 - 1), freeze=True)[1]

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, K) -> float32 frames (B, 3, H, W) in [0, 1]."""
        codes = torch.as_tensor(codes, device=self.device)
        k, n = self.tokens_per_frame, self.codebook_size
        if codes.ndim != 2 or codes.shape[1] != k or codes.dtype.is_floating_point:
            raise TokWorldError(f"codes must be integers of shape (B, {k}), got {codes.shape}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= n):
            raise TokWorldError(f"codes must lie in [0, {n}), got [{codes.min()}, {codes.max()}]")
        return self.decode_unchecked(codes)

    @torch.no_grad()
    def decode_unchecked(self, codes: torch.Tensor) -> torch.Tensor:
        """`decode` without the range check, which waits for the device (a host sync that a
        CUDA graph cannot hold): for (B, K) integer codes on the tokenizer's device known to
        lie in range, e.g. those a world model samples from its frame slice."""
        if self.config.quantizer == "fsq":
            seq = self.quantizer.indices_to_codes(codes.long())
        else:
            seq = self.quantizer.get_output_from_indices(codes.long())
        grid = rearrange(seq, "b (h w) c -> b c h w", h=self.config.grid)
        return self.decoder(grid).clamp(0, 1).float()

    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        """Weighted L1 + L2 reconstruction + commitment on `batch["observation"]` (uint8)."""
        cfg = self.config
        out = self(batch["observation"])
        target = self._pixels(batch["observation"])
        reconstruction = out.reconstruction.float()
        err = reconstruction - target
        pixel = (cfg.l1_weight * err.abs() + cfg.l2_weight * err.square()).mean(1, keepdim=True)
        recon = foreground_loss(
            pixel, target, reconstruction, cfg.foreground_loss,
            cfg.foreground_weight, cfg.foreground_threshold,
        )  # fmt: skip
        loss = recon + out.commitment_loss
        with torch.no_grad():
            mse = err.clamp(-1, 1).square().mean()
            counts = torch.bincount(out.codes.flatten(), minlength=self.codebook_size).float()
            p = counts / counts.sum()
            entropy = -(p * torch.log(p.clamp_min(1e-12))).sum()
        metrics = {
            "psnr": -10 * torch.log10(mse.clamp_min(1e-10)),
            "usage": (counts > 0).float().mean(),
            "recon_l1": err.abs().mean().detach(),
            "recon_l2": mse,
            "commitment": out.commitment_loss.detach(),
            "perplexity": entropy.exp(),
        }
        return loss, metrics
