"""IRIS's frame tokenizer re-implemented as a trainable baseline for `bench_tokenizer --iris`.

Written from the IRIS paper and its published tokenizer configuration (Micheli et al., 2023):
64x64 frames, a VQGAN encoder and decoder (64 channels at each of 5 resolutions, 2 residual
blocks per resolution in the encoder and 3 in the decoder, self-attention at 16x16 and 8x8, z
512), 1x1 convolutions before and after quantization, a codebook of 512 vectors of 512
initialised uniformly in +-1/512, nearest code by Euclidean distance, straight-through
gradients, and the loss

    |x - x_hat|_1 + |sg(z) - e|^2 + 0.25 |z - sg(e)|^2 (+ LPIPS, left out here)

on frames scaled to [-1, 1]. IRIS also adds a perceptual LPIPS term; its VGG weights are a
download, which this machine cannot make, so this baseline trains without it. The decoder is
`IrisDecoder`, the one imagination is timed against.
"""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from tokworld.errors import TokWorldError
from tokworld.eval.iris_reference import (
    CODEBOOK,
    TOKENS_PER_FRAME,
    IrisDecoder,
    iris_levels,
    iris_middle,
    iris_norm,
)
from tokworld.tokenizer.frame import FrameTokenizerOutput
from tokworld.training.accel import seed_everything
from tokworld.training.loop import TrainConfig, train
from tokworld.training.tokenizer import FrameDataset

COMMITMENT_BETA = 0.25


class IrisEncoder(nn.Module):
    """(B, 3, 64, 64) in [-1, 1] -> (B, z, 4, 4): IRIS's VQGAN encoder."""

    def __init__(self, ch: int = 64, z: int = 512, levels: int = 5, blocks: int = 2,
                 attention_at: tuple[int, ...] = (8, 16)):  # fmt: skip
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, ch, 3, padding=1)]
        layers += iris_levels(ch, levels, blocks, attention_at, down=True)
        layers += iris_middle(ch)
        layers += [iris_norm(ch), nn.SiLU(), nn.Conv2d(ch, z, 3, padding=1), nn.Conv2d(z, z, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class IrisTokenizer(nn.Module):
    """IRIS's tokenizer: uint8 frames (B, 64, 64, 3) <-> 16 codes of 512, trained by `train`.

    Offers what `evaluate_tokenizer` and the training loop use: `encode`, `decode`,
    `compute_loss`, `codebook_size`, `tokens_per_frame`.
    """

    codebook_size, tokens_per_frame = CODEBOOK, TOKENS_PER_FRAME

    def __init__(self, ch: int = 64, z: int = 512):
        super().__init__()
        self.encoder = IrisEncoder(ch=ch, z=z)
        self.decoder = IrisDecoder(ch=ch, z=z)
        nn.init.uniform_(self.decoder.embedding.weight, -1 / CODEBOOK, 1 / CODEBOOK)

    def _pixels(self, frames) -> torch.Tensor:
        frames = torch.from_numpy(frames) if isinstance(frames, np.ndarray) else frames
        if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[1:] != (64, 64, 3):
            raise TokWorldError(
                f"frames must be uint8 (B, 64, 64, 3), got {frames.dtype} {tuple(frames.shape)}"
            )
        device = self.decoder.embedding.weight.device
        return rearrange(frames.to(device), "b h w c -> b c h w").float() / 255 * 2 - 1

    def _quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, z, 4, 4) -> straight-through quantized latents, codes (B, 16), codebook loss."""
        seq = rearrange(z, "b e h w -> b (h w) e")
        codebook = self.decoder.embedding.weight
        codes = torch.cdist(seq, codebook.expand(len(seq), -1, -1)).argmin(-1)
        quantized = self.decoder.embedding(codes)
        loss = F.mse_loss(quantized, seq.detach()) + COMMITMENT_BETA * F.mse_loss(
            seq, quantized.detach()
        )
        straight = seq + (quantized - seq).detach()
        return rearrange(straight, "b (h w) e -> b e h w", h=4), codes, loss

    def forward(self, frames) -> FrameTokenizerOutput:
        """Encode, quantize, decode: the reconstruction is in [0, 1] scale, unclamped."""
        quantized, codes, loss = self._quantize(self.encoder(self._pixels(frames)))
        return FrameTokenizerOutput((self.decoder.net(quantized) + 1) / 2, codes, loss)

    @torch.no_grad()
    def encode(self, frames) -> torch.Tensor:
        """uint8 frames (B, 64, 64, 3) -> codes (B, 16)."""
        return self._quantize(self.encoder(self._pixels(frames)))[1]

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, 16) -> float frames (B, 3, 64, 64) in [0, 1]."""
        return self.decoder(codes)

    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        """IRIS's loss (without LPIPS) on `batch["observation"]` (uint8)."""
        out = self(batch["observation"])
        target = (self._pixels(batch["observation"]) + 1) / 2
        l1 = 2 * (out.reconstruction - target).abs().mean()  # IRIS measures it in [-1, 1]
        mse = (out.reconstruction.detach().clamp(0, 1) - target).square().mean()
        counts = torch.bincount(out.codes.flatten(), minlength=CODEBOOK)
        metrics = {
            "psnr": -10 * torch.log10(mse.clamp_min(1e-10)),
            "usage": (counts > 0).float().mean(),
            "commitment": out.commitment_loss.detach(),
        }
        return l1 + out.commitment_loss, metrics


def train_iris_tokenizer(
    ds: datasets.Dataset, out_dir: str | Path, *, progress: bool = True, **train_kwargs
) -> tuple[IrisTokenizer, dict]:
    """Train an `IrisTokenizer` on the frames of trajectory dataset `ds` with the shared loop.

    Keyword arguments are `TrainConfig` fields (steps, batch_size, lr, seed, ...), as for our
    tokenizer, so both see the same frames in the same order. Returns (model in eval mode,
    final metrics); the weights stay in `out_dir/train_state`.
    """
    cfg = TrainConfig(**train_kwargs)
    seed_everything(cfg.seed)
    model = IrisTokenizer()
    metrics = train(model, FrameDataset(ds), cfg, out_dir, name="iris", progress=progress)
    return model.eval(), metrics
