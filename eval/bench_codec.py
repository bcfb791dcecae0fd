"""How finely the vector codec's bins resolve a dataset's dynamics, as JSON.

`python -m tokworld.eval.bench_codec --dataset DIR [--dataset DIR2 ...] [--bins 16 32 64 128]`

For each binning (quantile, uniform) and bin count, the codec is fitted on a dataset's training
episodes and measured on its held-out ones. Per dimension d:

- `rmse`: root mean squared error of decode(encode(x)) against x;
- `step`: the standard deviation of one step's change, x[t+1] - x[t], inside episodes: the
  scale of what the world model has to predict;
- `ratio` = rmse / step: below 1, quantisation is finer than one step of motion.

The JSON gives each setting's mean and worst `ratio` over dimensions and its normalised MSE
(MSE / variance, averaged over dimensions).
"""

from __future__ import annotations

import argparse
import json

import datasets
import numpy as np
import torch

from tokworld.data.format import TrajectoryMeta, episode_bounds, load_trajectories
from tokworld.data.windows import split_episodes
from tokworld.errors import TokWorldError
from tokworld.tokenizer.vector import BINNINGS
from tokworld.training.tokenizer import fit_vector_codec


def _observations(ds: datasets.Dataset) -> np.ndarray:
    return np.asarray(ds.select_columns(["observation"]).with_format("numpy")[:]["observation"])


def step_scale(ds: datasets.Dataset) -> np.ndarray:
    """(D,) standard deviation of x[t+1] - x[t] over consecutive steps of one episode."""
    x = _observations(ds)
    starts, lengths = episode_bounds(ds)
    inside = np.ones(len(x) - 1, dtype=bool)
    inside[(starts + lengths - 1)[:-1]] = False  # no step from one episode's end to the next
    return np.diff(x, axis=0)[inside].std(0)


def bench_codec(dataset: str, bins: tuple[int, ...] = (16, 32, 64, 128), seed: int = 0) -> dict:
    """The codec's held-out error against the dynamics' step scale, per binning and bin count."""
    ds = load_trajectories(dataset)
    meta = TrajectoryMeta.from_dataset(ds)
    if meta.observation != "vector":
        raise TokWorldError(f"{dataset} has frames: bench codec measures vector observations")
    train, held = split_episodes(ds, 0.2, seed)
    x = torch.from_numpy(_observations(held))
    step = np.maximum(step_scale(held), 1e-8)
    variance = np.maximum(x.numpy().var(0), 1e-12)
    results = []
    for binning in BINNINGS:
        for n in bins:
            codec = fit_vector_codec(train, n, binning)
            error = (codec.decode(codec.encode(x)) - x).numpy()
            rmse = np.sqrt((error**2).mean(0))
            ratio = rmse / step
            results.append(
                {
                    "binning": binning,
                    "bins": n,
                    "mean_ratio": float(ratio.mean()),
                    "max_ratio": float(ratio.max()),
                    "nmse": float(((error**2).mean(0) / variance).mean()),
                }
            )
    return {
        "dataset": dataset,
        "env_id": meta.env_id,
        "dims": int(x.shape[1]),
        "held_out_steps": len(held),
        "step_scale": step.tolist(),
        "results": results,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    """Measure each dataset; print and return the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", action="append", required=True, help="vector dataset")
    parser.add_argument("--bins", type=int, nargs="+", default=[16, 32, 64, 128])
    args = parser.parse_args(argv)
    results = [bench_codec(d, tuple(args.bins)) for d in args.dataset]
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
