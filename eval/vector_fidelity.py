"""Fidelity figures of vector observations (a vector codec's runs), in place of PSNR and SSIM.

Per imagined step, over the windows where it exists:

- `mae`: the mean absolute error of each dimension, in the observation's own units (D values);
- `nmse`: the normalised mean squared error: each dimension's MSE divided by that dimension's
  variance over the held-out observations, averaged over the dimensions. 0 is exact; 1 is as
  far off as always guessing the mean. A dimension that never varies has no scale: it is left
  out of the average (its absolute error still shows in `mae`).

As for frames, imagined values are compared with the real ones (`_vs_real`), with the codec's
reconstruction of the real ones (`_vs_reconstruction`: the world model's error alone), and the
reconstruction with the real values (`codec_`: the floor binning leaves).
"""

from __future__ import annotations

import datasets
import numpy as np
import torch

from tokworld.errors import TokWorldError


def observation_variance(ds: datasets.Dataset, tokenizer, batch_size: int = 4096) -> np.ndarray:
    """(D,) the variance of each dimension over the dataset's observations (the values its
    codes decode to, for a dataset of codes)."""
    column = "observation" if "observation" in ds.column_names else "codes"
    if column not in ds.column_names:
        raise TokWorldError("dataset has neither an 'observation' nor a 'codes' column")
    table = ds.select_columns([column]).with_format("numpy")
    values = []
    for start in range(0, len(ds), batch_size):
        x = np.asarray(table[start : start + batch_size][column])
        if column == "codes":
            x = tokenizer.decode(torch.from_numpy(x).long()).cpu().numpy()
        values.append(x.astype(np.float64))
    if not values:
        raise TokWorldError("dataset has no rows")
    return np.concatenate(values).var(0)


def _errors(a: np.ndarray, b: np.ndarray, valid: np.ndarray, variance: np.ndarray):
    """(N, T, D) values x2 -> per step: MAE per dimension [T][D], NMSE [T] (None: no row)."""
    err = a.astype(np.float64) - b.astype(np.float64)
    mask = valid[..., None]
    counts = valid.sum(0)[:, None]  # (T, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mae = np.where(mask, np.abs(err), 0).sum(0) / counts
        mse = np.where(mask, err**2, 0).sum(0) / counts
    varying = variance > 0
    nmse = (mse[:, varying] / variance[varying]).mean(1) if varying.any() else None
    maes, nmses = [], []
    for t, n in enumerate(counts[:, 0]):
        maes.append(mae[t].tolist() if n else None)
        nmses.append(float(nmse[t]) if n and nmse is not None else None)
    return maes, nmses


def compare_vectors(imagined, reconstruction, variance, real=None, valid=None) -> dict[str, list]:
    """Per-step MAE (per dimension) and NMSE of float (N, T, D) imagined observations vs the
    codec's reconstruction and, with `real`, vs the real ones; `variance` (D,) of the held-out
    observations scales the NMSE.

    Over the rows where `valid` (N, T) holds. Keys `mae_vs_reconstruction`,
    `nmse_vs_reconstruction` and, with `real`, `mae_vs_real`, `nmse_vs_real`, `codec_mae`,
    `codec_nmse` (reconstruction vs real).
    """
    imagined = np.asarray(imagined)
    valid = np.ones(imagined.shape[:2], bool) if valid is None else np.asarray(valid)
    variance = np.asarray(variance, np.float64)
    if variance.shape != imagined.shape[2:]:
        raise TokWorldError(
            f"variance has shape {variance.shape}, the observations {imagined.shape[2:]}"
        )
    pairs = {"vs_reconstruction": (imagined, reconstruction)}
    if real is not None:
        pairs.update({"vs_real": (imagined, real), "codec": (reconstruction, real)})
    out = {}
    for name, (a, b) in pairs.items():
        prefix, suffix = ("", "_" + name) if name != "codec" else ("codec_", "")
        mae, nmse = _errors(a, np.asarray(b), valid, variance)
        out[f"{prefix}mae{suffix}"], out[f"{prefix}nmse{suffix}"] = mae, nmse
    return out


def codec_figures(tokenizer, ds: datasets.Dataset, max_rows: int = 4096) -> dict:
    """The vector codec's settings and its reconstruction error on up to `max_rows` of the
    dataset's observations: NMSE (scaled by those rows' variance) and MAE per dimension."""
    config = tokenizer.config
    figures = {"dims": config.dims, "bins": config.bins, "binning": config.binning}
    if "observation" not in ds.column_names:
        return figures
    rows = ds.select_columns(["observation"]).with_format("numpy")[:max_rows]
    real = np.asarray(rows["observation"], np.float32)
    recon = tokenizer.decode(tokenizer.encode(real)).cpu().numpy()
    mae, nmse = _errors(recon[None], real[None], np.ones((1, len(real)), bool), real.var(0))
    return {**figures, "rows": len(real), "nmse": nmse[0], "mae": mae[0]}
