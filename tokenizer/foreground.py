"""What a frame's foreground is, and how the tokenizer's reconstruction loss weighs it.

The background at a pixel is what most frames of a batch show there; the foreground is what
differs from it (the ball, the paddle, the agent). Three ways to weigh it, the values of
`FrameTokenizerConfig.foreground_loss`:

- "weighted": a foreground pixel counts 1 + weight times in the mean over all pixels;
- "balanced": mean over background pixels + weight x mean over foreground pixels, so a frame's
  few foreground pixels weigh as much as its background however few they are;
- "symmetric": "balanced", where the foreground also holds every pixel the reconstruction draws
  off the background, so a false ball costs what a missed one does (no hedging).

Frames are float (B, 3, H, W) in [0, 1].
"""

from __future__ import annotations

import torch

FOREGROUND_LOSSES = ("weighted", "balanced", "symmetric")


def foreground_mask(
    frames: torch.Tensor, background: torch.Tensor, threshold: float
) -> torch.Tensor:
    """(B, 3, H, W), (1, 3, H, W) -> bool (B, 1, H, W): any channel off the background by more
    than `threshold`."""
    return (frames - background).abs().amax(dim=1, keepdim=True) > threshold


def batch_foreground(
    target: torch.Tensor, threshold: float, reconstruction: torch.Tensor | None = None
) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> bool (B, 1, H, W): where a pixel is not background.

    The background at a pixel is what most frames of the batch show there (the per-pixel median
    over the batch): walls, bricks, the playfield. Foreground is what differs from it: the ball,
    the paddle, the agent, changed bricks; with `reconstruction`, also wherever it does.
    """
    background = target.median(dim=0, keepdim=True).values
    mask = foreground_mask(target, background, threshold)
    if reconstruction is not None:
        mask |= foreground_mask(reconstruction.detach(), background, threshold)
    return mask


def foreground_weights(target: torch.Tensor, weight: float, threshold: float) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, 1, H, W): `1 + weight` on `batch_foreground`, else 1."""
    return 1 + weight * batch_foreground(target, threshold).to(target.dtype)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` where `mask` holds (0 where it never does)."""
    return (values * mask).sum() / mask.sum().clamp_min(1)


def foreground_loss(
    pixel: torch.Tensor,
    target: torch.Tensor,
    reconstruction: torch.Tensor,
    mode: str,
    weight: float,
    threshold: float,
) -> torch.Tensor:
    """Scalar loss from per-pixel losses `pixel` (B, 1, H, W), weighing the foreground by `mode`
    (one of `FOREGROUND_LOSSES`)."""
    if mode == "weighted":
        return (foreground_weights(target, weight, threshold) * pixel).mean()
    drawn = reconstruction if mode == "symmetric" else None
    fg = batch_foreground(target, threshold, drawn)
    return masked_mean(pixel, ~fg) + weight * masked_mean(pixel, fg)
