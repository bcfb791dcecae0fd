"""How long imagination stays faithful: open-loop rollouts replaying real actions, scored per step.

Each real window of a held-out dataset gives C context steps; the world model then imagines H
steps while replaying the window's real actions, and every imagined step is compared with the
real one it should match:

- frames: PSNR (of the mean squared error over the windows) and mean SSIM of the decoded
  imagined frame vs the real frame, and vs the tokenizer's own reconstruction of the real frame
  (decode(encode(real))). The second isolates the world model's dynamics error: a model that
  predicts every code right scores `PSNR_MAX` there however blurry the tokenizer is;
  `tokenizer_psnr` (reconstruction vs real) is the tokenizer's share;
- vector observations (a vector codec's runs), instead of PSNR and SSIM: the mean absolute
  error of each dimension and the normalised MSE, vs real, vs the codec's reconstruction, and
  the codec's own floor (`tokworld.eval.vector_fidelity`);
- frame tokens: the fraction of imagined codes equal to the codes of the real frame;
- rewards and episode ends: precision and recall of nonzero rewards (a hit needs the same sign)
  and of terminal steps, over all compared steps.

Windows run to the end of an episode when it comes first (so real terminal steps are scored);
steps past it are left out. Index t of a per-step list is horizon t + 1: the frame after the
(t + 1)-th imagined action.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import torch

from tokworld.data.format import TrajectoryMeta, episode_bounds, load_trajectories
from tokworld.data.mixture import recorded_held_out
from tokworld.errors import TokWorldError
from tokworld.eval.tokenizer_metrics import ssim
from tokworld.eval.vector_fidelity import compare_vectors, observation_variance
from tokworld.imagine import ImaginationEngine
from tokworld.rollout import observations
from tokworld.run import check_observations
from tokworld.sampling import SamplingConfig, bf16_field, calibrated_field

PSNR_MAX = 100.0  # dB; identical frames (infinite PSNR) are reported as this, keeping JSON valid
REPORTED_HORIZONS = (1, 5, 10, 20)


@dataclass
class OpenLoop:
    """Imagined and real steps of N windows over H open-loop steps (arrays are numpy).

    codes (N, H, K); frames uint8 (N, H, h, w, 3), or float32 (N, H, D) for a vector codec;
    reward float, end bool (N, H). `real_frames` is None for a dataset of codes only.
    `frame_valid` / `step_valid` (N, H): the real frame / the real reward and end exist (an
    episode may end inside the horizon). `start` (N, h, w, 3) or (N, D): the last context
    observation, real when there is one.
    """

    imagined_codes: np.ndarray
    imagined_frames: np.ndarray
    imagined_reward: np.ndarray
    imagined_end: np.ndarray
    real_codes: np.ndarray
    real_frames: np.ndarray | None
    reconstruction: np.ndarray
    real_reward: np.ndarray
    real_end: np.ndarray
    frame_valid: np.ndarray
    step_valid: np.ndarray
    start: np.ndarray


def choose_windows(ds: datasets.Dataset, context: int, horizon: int, n: int):
    """(starts, valid lengths) of up to `n` windows of `context + horizon` steps, evenly spread.

    A window may start wherever its episode has at least `context + 1` steps left; it stops at
    the episode's end.
    """
    starts, lengths = episode_bounds(ds)
    room = np.maximum(lengths - context, 0)  # start offsets per episode
    if not room.sum():
        raise TokWorldError(f"no episode of the dataset is longer than the context of {context}")
    picks = np.unique(np.linspace(0, room.sum() - 1, min(n, int(room.sum()))).round().astype(int))
    episode = np.searchsorted(np.cumsum(room), picks, side="right")
    offset = picks - (np.cumsum(room) - room)[episode]
    valid = np.minimum(lengths[episode] - offset, context + horizon)
    return starts[episode] + offset, valid


def load_windows(ds, starts, valid, length: int, tokenizer, batch_size: int = 256) -> dict:
    """Windows padded to `length`: codes (N, L, K), action, reward, terminated, observation (and
    task, for a mixture's datasets)."""
    frame_column = "observation" if "observation" in ds.column_names else "codes"
    if frame_column not in ds.column_names:
        raise TokWorldError("dataset has neither an 'observation' nor a 'codes' column")
    columns = [frame_column, "action", "reward", "terminated"]
    columns += ["task"] if "task" in ds.column_names else []
    table = ds.select_columns(columns).with_format("numpy", dtype=None)
    out: dict[str, list] = {c: [] for c in columns}
    for s, v in zip(starts, valid, strict=True):
        rows = table[int(s) : int(s + v)]
        for c in columns:
            x = np.asarray(rows[c])
            out[c].append(np.concatenate([x, np.zeros((length - v, *x.shape[1:]), x.dtype)]))
    batch = {c: torch.from_numpy(np.stack(v)) for c, v in out.items()}
    if frame_column == "codes":
        batch["codes"] = batch["codes"].long()
        return batch
    frames = batch["observation"].flatten(0, 1)
    codes = [
        tokenizer.encode(frames[i : i + batch_size]).cpu()
        for i in range(0, len(frames), batch_size)
    ]
    batch["codes"] = torch.cat(codes).view(*batch["observation"].shape[:2], -1)
    return batch


def reconstruct(tokenizer, codes: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Codes (..., K) -> uint8 frames (..., h, w, 3) or float32 vectors (..., D) decoded by the
    tokenizer."""
    flat = codes.reshape(-1, codes.shape[-1])
    frames = [
        observations(tokenizer.decode(flat[i : i + batch_size].to(tokenizer.device)))
        for i in range(0, len(flat), batch_size)
    ]
    return torch.cat(frames).view(*codes.shape[:-1], *frames[0].shape[1:]).numpy()


@torch.no_grad()
def open_loop(
    engine: ImaginationEngine,
    tokenizer,
    windows: dict,
    valid,
    context: int,
    horizon: int,
    batch_size: int = 32,
) -> OpenLoop:
    """Imagine `horizon` steps from each window's first `context` steps, replaying its actions."""
    n = len(windows["codes"])
    imagined: dict[str, list] = {"codes": [], "frames": [], "reward": [], "end": []}
    for b in range(0, n, batch_size):
        rows = {k: v[b : b + batch_size] for k, v in windows.items()}
        keys = ("codes", "action", "reward", "terminated", "task")
        engine.start({k: rows[k][:, :context] for k in keys if k in rows})
        steps = [engine.step(rows["action"][:, context - 1 + t]) for t in range(horizon)]
        imagined["codes"].append(torch.stack([s.codes.cpu() for s in steps], 1))
        imagined["frames"].append(torch.stack([observations(s.frames) for s in steps], 1))
        imagined["reward"].append(torch.stack([s.reward.cpu() for s in steps], 1))
        imagined["end"].append(torch.stack([s.terminated.cpu() for s in steps], 1))
    im = {k: torch.cat(v).numpy() for k, v in imagined.items()}
    t = np.arange(horizon)
    valid = np.asarray(valid)[:, None]
    real = windows.get("observation")
    recon = reconstruct(tokenizer, windows["codes"][:, context - 1 : context + horizon])
    return OpenLoop(
        imagined_codes=im["codes"],
        imagined_frames=im["frames"],
        imagined_reward=im["reward"],
        imagined_end=im["end"],
        real_codes=windows["codes"][:, context : context + horizon].numpy(),
        real_frames=None if real is None else real[:, context : context + horizon].numpy(),
        reconstruction=recon[:, 1:],
        real_reward=windows["reward"][:, context - 1 : context - 1 + horizon].float().numpy(),
        real_end=windows["terminated"][:, context - 1 : context - 1 + horizon].bool().numpy(),
        frame_valid=context + t < valid,
        step_valid=context - 1 + t < valid,
        start=recon[:, 0] if real is None else real[:, context - 1].numpy(),
    )


def _per_step(values: torch.Tensor, valid: np.ndarray) -> list[float | None]:
    """(N, T) values -> per-step means over valid rows (None where no row is valid)."""
    v = torch.from_numpy(valid)
    sums = torch.where(v, values.double(), 0.0).sum(0)
    counts = v.sum(0)
    return [float(s / c) if c else None for s, c in zip(sums, counts, strict=True)]


def _psnr_per_step(mse: torch.Tensor, valid: np.ndarray) -> list[float | None]:
    """(N, T) per-frame MSE -> per-step PSNR of the mean MSE, capped at PSNR_MAX."""
    return [
        None if m is None else min(PSNR_MAX, -10 * math.log10(m) if m > 0 else math.inf)
        for m in _per_step(mse, valid)
    ]


def _scores(a: np.ndarray, b: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 frames (N, T, h, w, 3) x2 -> per-frame MSE (pixels in [0, 1]) and SSIM, (N, T)."""
    n, t = a.shape[:2]
    x, y = (torch.from_numpy(f).flatten(0, 1).permute(0, 3, 1, 2).float() / 255 for f in (a, b))
    mse = (x.double() - y.double()).square().flatten(1).mean(1)
    chunks = range(0, len(x), 256)  # bound SSIM's memory (five blurred moments per frame)
    s = torch.cat([ssim(x[i : i + 256], y[i : i + 256]) for i in chunks])
    return mse.view(n, t), s.view(n, t)


def compare_frames(imagined, reconstruction, real=None, valid=None) -> dict[str, list]:
    """Per-step PSNR/SSIM of uint8 (N, T, h, w, 3) imagined frames vs reconstruction and real.

    Over the rows where `valid` (N, T) holds: PSNR of the mean squared error (so frames that
    match exactly count as an error of 0, not as an infinite PSNR; all exact: `PSNR_MAX`), mean
    SSIM. Keys `psnr_vs_reconstruction`, `ssim_vs_reconstruction` and, with `real`,
    `psnr_vs_real`, `ssim_vs_real`, `tokenizer_psnr`, `tokenizer_ssim` (reconstruction vs real).
    """
    valid = np.ones(imagined.shape[:2], bool) if valid is None else valid
    pairs = {"vs_reconstruction": (imagined, reconstruction)}
    if real is not None:
        pairs.update({"vs_real": (imagined, real), "tokenizer": (reconstruction, real)})
    out = {}
    for name, (a, b) in pairs.items():
        mse, s = _scores(a, b)
        prefix, suffix = ("", "_" + name) if name != "tokenizer" else ("tokenizer_", "")
        out[f"{prefix}psnr{suffix}"] = _psnr_per_step(mse, valid)
        out[f"{prefix}ssim{suffix}"] = _per_step(s, valid)
    return out


def compare_observations(imagined, reconstruction, real=None, valid=None, variance=None) -> dict:
    """Per-step figures of imagined observations (N, T, ...) vs reconstruction and real:
    `compare_frames` for uint8 frames, `compare_vectors` for float vectors (N, T, D), whose
    normalised MSE needs the held-out observations' `variance` (D,)."""
    if np.asarray(imagined).ndim == 3:
        return compare_vectors(imagined, reconstruction, variance, real, valid)
    return compare_frames(imagined, reconstruction, real, valid)


def precision_recall(predicted: np.ndarray, actual: np.ndarray, hit: np.ndarray) -> dict:
    """Event detection: precision = hits / predicted, recall = hits / actual (None if 0/0)."""
    n_pred, n_true, n_hit = int(predicted.sum()), int(actual.sum()), int(hit.sum())
    return {
        "precision": n_hit / n_pred if n_pred else None,
        "recall": n_hit / n_true if n_true else None,
        "predicted": n_pred,
        "actual": n_true,
        "hits": n_hit,
    }


def score(rollouts: OpenLoop, variance: np.ndarray | None = None) -> dict:
    """Per-step observation and token scores, and reward/end precision and recall, of rollouts
    (vector observations: scaled by the held-out `variance` (D,))."""
    r, fv, sv = rollouts, rollouts.frame_valid, rollouts.step_valid
    per_step = {
        "horizon": list(range(1, fv.shape[1] + 1)),
        "frames": fv.sum(0).tolist(),
        **compare_observations(r.imagined_frames, r.reconstruction, r.real_frames, fv, variance),
        "token_accuracy": _per_step(
            torch.from_numpy((r.imagined_codes == r.real_codes).mean(-1)), fv
        ),
    }
    im_sign, real_sign = np.sign(r.imagined_reward), np.sign(r.real_reward)
    reward = precision_recall(
        (im_sign != 0) & sv, (real_sign != 0) & sv, (im_sign != 0) & (im_sign == real_sign) & sv
    )
    end = precision_recall(r.imagined_end & sv, r.real_end & sv, r.imagined_end & r.real_end & sv)
    at = {
        str(h): {k: per_step[k][h - 1] for k in per_step if k not in ("horizon", "frames")}
        for h in REPORTED_HORIZONS
        if h <= len(per_step["horizon"])
    }
    return {"per_step": per_step, "at_horizon": at, "reward": reward, "end": end}


@dataclass(frozen=True)
class FidelityConfig:
    """How `evaluate_fidelity` scores a world model: windows of real context and horizon."""

    context: int = field(default=4, metadata={"help": "real steps to condition on"})
    horizon: int = field(default=20, metadata={"help": "imagined steps per window"})
    windows: int = field(default=64, metadata={"help": "real windows to imagine from"})
    batch_size: int = 32
    temperature: float = field(default=0.0, metadata={"help": "0: greedy (the default)"})
    top_k: int | None = None
    seed: int = 0
    bf16: bool = bf16_field()
    calibrated: bool = calibrated_field()

    def __post_init__(self):
        if min(self.context, self.horizon, self.windows, self.batch_size) < 1:
            raise TokWorldError("--context, --horizon, --windows and --batch-size must be positive")
        if self.temperature < 0:
            raise TokWorldError(f"--temperature must be >= 0, got {self.temperature}")

    def options(self) -> dict:
        """Keyword arguments of `evaluate_fidelity`."""
        greedy = self.temperature == 0
        temperature = self.temperature if not greedy else 1.0
        sampling = SamplingConfig(temperature, self.top_k, greedy, self.calibrated)
        return {
            "context": self.context,
            "horizon": self.horizon,
            "windows": self.windows,
            "batch_size": self.batch_size,
            "sampling": sampling,
            "seed": self.seed,
            "bf16": self.bf16,
        }


def evaluate_fidelity(
    world_model,
    tokenizer,
    ds: datasets.Dataset,
    context: int = 4,
    horizon: int = 20,
    windows: int = 64,
    batch_size: int = 32,
    sampling: SamplingConfig | None = None,
    seed: int = 0,
    bf16: bool = False,
) -> tuple[dict, OpenLoop]:
    """Open-loop fidelity of a world model on `ds`: (scores as in `score`, the rollouts).

    Sampling is greedy unless `sampling` says otherwise: the model's most likely future.
    `bf16`: imagine under bfloat16 autocast (`ImaginationEngine`).
    """
    sampling = sampling or SamplingConfig(greedy=True)
    if context < 1 or horizon < 1 or windows < 1 or batch_size < 1:
        raise TokWorldError("context, horizon, windows and batch size must be positive")
    world_model.vocab.check_action_space(TrajectoryMeta.from_dataset(ds).space, "the dataset")
    starts, valid = choose_windows(ds, context, horizon, windows)
    data = load_windows(ds, starts, valid, context + horizon, tokenizer)
    engine = ImaginationEngine(world_model, tokenizer.decode, sampling, seed, bf16=bf16)
    rollouts = open_loop(engine, tokenizer, data, valid, context, horizon, batch_size)
    vector = tokenizer.observation == "vector"  # scored per dimension, against its variance
    result = {
        "observation": tokenizer.observation,
        "context": context,
        "horizon": horizon,
        "windows": len(starts),
        "context_kept": min(context, world_model.config.context_steps),
        "sampling": {
            "greedy": sampling.greedy,
            "temperature": sampling.temperature,
            "top_k": sampling.top_k,
            "calibrated": sampling.calibrated,
            "seed": seed,
        },
        "bf16": bf16,
        **score(rollouts, observation_variance(ds, tokenizer) if vector else None),
    }
    return result, rollouts


def held_out_dataset(
    run: str | Path, dataset: str | None = None, tokenizer=None
) -> tuple[datasets.Dataset, str]:
    """(episodes, description) to evaluate a run on.

    With `dataset`, all of it; without, the episodes `tokworld pretrain` held out of the run's
    training set, as it recorded them (`tokworld.data.mixture.recorded_held_out`). With the
    run's `tokenizer`, checked to hold the observations it reads (`check_observations`).
    """
    if dataset is not None:
        ds, described = load_trajectories(dataset), dataset
    else:
        ds, described = recorded_held_out(run)
    if tokenizer is not None:
        what = f"dataset {dataset}" if dataset is not None else "its held-out episodes"
        check_observations(run, tokenizer, TrajectoryMeta.from_dataset(ds), what)
    return ds, described
