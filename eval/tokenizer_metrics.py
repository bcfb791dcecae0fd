"""How well a frame tokenizer sees: PSNR, SSIM, codebook usage and perplexity, and a PNG grid.

PSNR over whole frames is dominated by the static background; `foreground_psnr` measures what
moves (ball, paddle, agent): the PSNR over pixels that differ from the evaluated frames'
per-pixel median (by more than the tokenizer's `foreground_threshold`). `small_object_recall`
asks whether small moving things survive (Breakout's ball): of the foreground's connected blobs
of at most `SMALL_OBJECT_PIXELS` pixels that moved (some pixel differs from the episode's
previous frame; score digits mostly do not), the fraction that the reconstruction draws, i.e.
where its error is under half the blob's contrast to the background. Its counterpart,
`ghost_pixels_per_frame`, counts pixels the reconstruction draws off the background where the
real frame shows background (a hedging decoder smears faint balls along likely paths).

Frames are float (B, 3, H, W) in [0, 1] unless said otherwise. `evaluate_tokenizer` runs a
tokenizer over held-out frames (encode -> decode, as the world model will use it).
"""

from __future__ import annotations

import math
from pathlib import Path

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from scipy import ndimage

from tokworld.errors import TokWorldError
from tokworld.eval.media import write_image
from tokworld.tokenizer.foreground import foreground_mask
from tokworld.tokenizer.frame import FrameTokenizer, to_uint8

SMALL_OBJECT_PIXELS = 4


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image PSNR in dB, (B,); `inf` where the images are identical."""
    mse = (x.double() - y.double()).square().flatten(1).mean(1)
    return (10 * torch.log10(data_range**2 / mse)).float()


def _gaussian_taps(size: int, sigma: float) -> torch.Tensor:
    r = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-r.square() / (2 * sigma**2))
    return g / g.sum()


def ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    data_range: float = 1.0,
    window: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004), (B,): gaussian window, per channel, valid region.

    Matches `skimage.metrics.structural_similarity(gaussian_weights=True,
    use_sample_covariance=False, channel_axis=...)`. The gaussian blur is separable: one
    grouped row pass and one column pass over all five moments at once, in float32 (25x
    faster on CPU than a 2-D float64 window, within 1e-6 of it).
    """
    x, y = x.float(), y.float()
    c = x.shape[1]
    moments = torch.cat([x, y, x * x, y * y, x * y], 1)  # (B, 5C, H, W)
    k, g = moments.shape[1], _gaussian_taps(window, sigma).to(x.device)
    blurred = F.conv2d(moments, g.view(1, 1, 1, window).expand(k, 1, 1, window), groups=k)
    blurred = F.conv2d(blurred, g.view(1, 1, window, 1).expand(k, 1, window, 1), groups=k)
    mu_x, mu_y, xx, yy, xy = blurred.split(c, 1)
    var_x, var_y, cov = xx - mu_x.square(), yy - mu_y.square(), xy - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x.square() + mu_y.square() + c1) * (var_x + var_y + c2)
    return (num / den).flatten(1).mean(1)


def code_histogram(codes: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """How often each code occurs, (codebook_size,)."""
    return torch.bincount(codes.flatten().long().cpu(), minlength=codebook_size)


def codebook_usage(counts: torch.Tensor) -> float:
    """Fraction of the codebook that occurs at least once."""
    return float((counts > 0).float().mean())


def perplexity(counts: torch.Tensor) -> float:
    """exp(entropy) of the code distribution: the effective number of codes in use."""
    p = counts.double() / counts.sum().clamp_min(1)
    return float(torch.exp(-(p * torch.log(p.clamp_min(1e-30))).sum()))


def small_objects(
    target: torch.Tensor,
    recon: torch.Tensor,
    previous: torch.Tensor,
    background: torch.Tensor,
    threshold: float,
) -> tuple[int, int]:
    """(drawn, total) moving foreground blobs (8-connected) of <= `SMALL_OBJECT_PIXELS` pixels.

    `previous` holds the frame before each of `target` in its episode.
    """
    mask = foreground_mask(target, background, threshold)[:, 0].cpu().numpy()
    moved = foreground_mask(target, previous, threshold)[:, 0].cpu().numpy()
    contrast = (target - background).abs().mean(1).cpu().numpy()  # (B, H, W)
    error = (recon - target).abs().mean(1).cpu().numpy()
    drawn = total = 0
    for i in range(len(mask)):
        labels, n = ndimage.label(mask[i], structure=np.ones((3, 3)))
        flat = labels.ravel()
        size = np.bincount(flat, minlength=n + 1)[1:]
        small = (size <= SMALL_OBJECT_PIXELS) & (np.bincount(flat, moved[i].ravel(), n + 1)[1:] > 0)
        err = np.bincount(flat, error[i].ravel(), minlength=n + 1)[1:]
        con = np.bincount(flat, contrast[i].ravel(), minlength=n + 1)[1:]
        drawn += int((small & (err < 0.5 * con)).sum())
        total += int(small.sum())
    return drawn, total


@torch.no_grad()
def evaluate_tokenizer(
    tokenizer: FrameTokenizer,
    ds: datasets.Dataset,
    batch_size: int = 64,
    max_frames: int | None = None,
    grid: str | Path | None = None,
    grid_frames: int = 16,
    threshold: float | None = None,
) -> dict:
    """PSNR, SSIM, MSE (means over frames), foreground PSNR, small-object recall, codebook usage
    and perplexity.

    With `max_frames`, an evenly spaced subset is used. With `grid`, a PNG of `grid_frames`
    evenly spaced originals over their reconstructions is written there. `threshold` (default:
    the tokenizer config's `foreground_threshold`) is how far from the background a pixel must
    be to count as foreground.
    """
    if "observation" not in ds.column_names:
        raise TokWorldError("dataset has no 'observation' column")
    if len(ds) == 0:
        raise TokWorldError("dataset has no frames to evaluate")
    if max_frames and len(ds) > max_frames:
        ds = ds.select(np.linspace(0, len(ds) - 1, max_frames).round().astype(int))
    frames = ds.select_columns(["observation"]).with_format("numpy", dtype=np.uint8)
    order = ds.select_columns(["episode_index", "frame_index"]).with_format("numpy")[:]
    # Row r follows row r - 1 in its episode: the frames whose motion is known.
    follows = np.zeros(len(ds), dtype=bool)
    follows[1:] = (np.diff(order["episode_index"]) == 0) & (np.diff(order["frame_index"]) == 1)
    sample = np.linspace(0, len(ds) - 1, min(256, len(ds))).round().astype(int)
    sample = rearrange(torch.from_numpy(frames[sample]["observation"]), "b h w c -> b c h w")
    background = sample.float().div(255).median(dim=0, keepdim=True).values
    tokenizer.eval()
    sums = {"psnr": 0.0, "ssim": 0.0, "mse": 0.0}
    fg_error, fg_pixels, small_drawn, small_total, ghosts = 0.0, 0, 0, 0, 0
    counts = torch.zeros(tokenizer.codebook_size, dtype=torch.long)
    threshold = tokenizer.config.foreground_threshold if threshold is None else threshold
    for start in range(0, len(ds), batch_size):
        n = min(batch_size, len(ds) - start)
        window = torch.from_numpy(frames[max(start - 1, 0) : start + n]["observation"])
        batch = window[-n:]
        codes = tokenizer.encode(batch)
        recon = tokenizer.decode(codes).cpu()
        pixels = rearrange(window, "b h w c -> b c h w").float() / 255
        target, previous = pixels[-n:], torch.cat([pixels[:1], pixels[:-1]])[-n:]  # rows r, r - 1
        mse = (recon - target).square().flatten(1).mean(1)
        sums["psnr"] += float((-10 * torch.log10(mse.clamp_min(1e-10))).sum())
        sums["ssim"] += float(ssim(recon, target).sum())
        sums["mse"] += float(mse.sum())
        mask = foreground_mask(target, background, threshold)
        fg_error += float(((recon - target).square() * mask).sum())
        fg_pixels += 3 * int(mask.sum())
        ghosts += int((foreground_mask(recon, background, threshold) & ~mask).sum())
        keep = torch.from_numpy(follows[start : start + n])
        drawn, total = small_objects(
            target[keep], recon[keep], previous[keep], background, threshold
        )
        small_drawn, small_total = small_drawn + drawn, small_total + total
        counts += code_histogram(codes, tokenizer.codebook_size)
    if grid is not None:
        pick = np.linspace(0, len(ds) - 1, min(grid_frames, len(ds))).round().astype(int)
        originals = torch.from_numpy(frames[pick]["observation"])
        save_grid(originals, to_uint8(tokenizer.decode(tokenizer.encode(originals))), grid)
    return {
        "frames": len(ds),
        **{k: v / len(ds) for k, v in sums.items()},
        "foreground_psnr": -10 * math.log10(max(fg_error / max(fg_pixels, 1), 1e-10)),
        "foreground_fraction": fg_pixels / (3 * len(ds) * background[0, 0].numel()),
        "small_objects": small_total,
        "small_object_recall": small_drawn / small_total if small_total else None,
        "ghost_pixels_per_frame": ghosts / len(ds),
        "codebook_usage": codebook_usage(counts),
        "perplexity": perplexity(counts),
        "codes_used": int((counts > 0).sum()),
        "codebook_size": tokenizer.codebook_size,
        "tokens_per_frame": tokenizer.tokens_per_frame,
    }


def save_grid(
    originals: torch.Tensor, reconstructions: torch.Tensor, path: str | Path, columns: int = 8
) -> None:
    """PNG of uint8 frames (N, H, W, 3): rows of originals, each over its reconstructions."""
    n = len(originals)
    pad = (-n) % columns
    pairs = torch.stack([originals, reconstructions])  # (2, N, H, W, 3)
    pairs = F.pad(pairs.cpu(), (0, 0, 1, 1, 1, 1, 0, pad), value=255)  # white borders, full rows
    image = rearrange(pairs, "two (r col) h w c -> (r two h) (col w) c", col=columns)
    write_image(image.numpy(), path)
