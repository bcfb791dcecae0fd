"""Figures of evaluations, as PNG files: open-loop fidelity against the horizon (frames or
vectors), and observation vectors over time, one panel per dimension."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from tokworld.eval.media import pyplot, save_figure

MAX_PANELS = 24  # dimensions drawn by `plot_dimensions`; a wider observation shows its first ones

# Per kind of observation: the fidelity panel's y label, title, scale and lines (key, label,
# style) of `plot_fidelity`.
FIDELITY_LINES = {
    "frames": ("PSNR (dB)", "Frame fidelity", "linear", [
        ("psnr_vs_real", "imagined vs real", "-"),
        ("psnr_vs_reconstruction", "imagined vs tokenizer reconstruction", "-"),
        ("tokenizer_psnr", "tokenizer reconstruction vs real", ":"),
    ]),
    "vector": ("normalised MSE", "Observation fidelity", "log", [
        ("nmse_vs_real", "imagined vs real", "-"),
        ("nmse_vs_reconstruction", "imagined vs codec reconstruction", "-"),
        ("codec_nmse", "codec reconstruction vs real (floor)", ":"),
    ]),
}  # fmt: skip


def _values(values) -> list[float]:
    return [np.nan if v is None else v for v in values]


def plot_fidelity(result: dict, path: str | Path) -> Path:
    """PNG of an `evaluate_fidelity` result against the horizon: PSNR (frames) or normalised
    MSE (vectors) vs real, vs reconstruction and of the tokenizer alone; and token accuracy."""
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    steps = result["per_step"]
    h = steps["horizon"]
    ylabel, title, scale, lines = FIDELITY_LINES[result.get("observation", "frames")]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for key, label, style in lines:
        if key in steps:
            left.plot(h, _values(steps[key]), style, label=label)
    left.set(xlabel="imagined steps (horizon)", ylabel=ylabel, title=title, yscale=scale)
    left.legend(fontsize=8)
    right.plot(h, _values(steps["token_accuracy"]), color="C3")
    right.set(
        xlabel="imagined steps (horizon)",
        ylabel="fraction of codes",
        ylim=(0, 1.02),
        title="Token accuracy",
    )
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    sampling = result["sampling"]
    how = "greedy" if sampling["greedy"] else f"sampled at temperature {sampling['temperature']}"
    fig.suptitle(
        f"open loop from {result['context']} real steps, {result['windows']} windows, {how}"
    )
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def plot_dimensions(lines: list[tuple], path: str | Path, title: str) -> Path:
    """PNG of observation vectors over time, one panel per dimension (the first `MAX_PANELS`).

    `lines`: (label or None, values (T, D), matplotlib style keywords) each, drawn in every
    panel against the step index.
    """
    plt = pyplot()
    dims = np.asarray(lines[0][1]).shape[1]
    shown = min(dims, MAX_PANELS)
    cols = min(shown, 4)
    rows = math.ceil(shown / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.3 * rows + 0.6), squeeze=False)
    for d, ax in enumerate(axes.flat):
        if d >= shown:
            ax.axis("off")
            continue
        for label, values, style in lines:
            ax.plot(np.asarray(values)[:, d], label=label, **style)
        ax.set_title(f"dimension {d}", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("step", fontsize=8)
    if any(label for label, _, _ in lines):
        axes.flat[0].legend(fontsize=7)
    more = f" (first {shown} of {dims} dimensions)" if shown < dims else ""
    fig.suptitle(title + more, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)
