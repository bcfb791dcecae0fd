"""Throughput and peak memory of `tokworld import` for Minari and Hub/parquet sources.

    python -m tokworld.eval.bench_import --episodes 20 --scale 10

Builds two synthetic sources of N and scale*N episodes: a Minari dataset written by Minari's
`DataCollector` (84x84x3 frames, Minari's default JPEG encoding) and a parquet file in the
jat-dataset layout (one row per episode, 4x84x84 uint8 stacks; local parquet is always read as
a stream). Each import runs as its own `tokworld import` subprocess; its peak resident set size
comes from `wait4`. rows/s is the
marginal rate, (rows at scale*N - rows at N) / (seconds at scale*N - seconds at N), so process
start-up does not count. Prints JSON per path: rows/s, seconds and peak RSS at both sizes, and
the RSS ratio (flat memory: close to 1); `start_up_rss_mb` is the peak RSS of the CLI doing
nothing (interpreter, torch, datasets), the floor under every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

JAT_MAP = "observation=image_observations,action=discrete_actions,reward=rewards"


class NoiseEnv(gym.Env):
    """84x84x3 random frames, 4 actions, episodes of `length` steps that terminate."""

    observation_space = gym.spaces.Box(0, 255, (84, 84, 3), np.uint8)
    action_space = gym.spaces.Discrete(4)

    def __init__(self, length: int):
        self.length = length
        self.t = 0

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.observation_space.sample(), {}

    def step(self, action):
        self.t += 1
        obs = self.np_random.integers(0, 256, (84, 84, 3), dtype=np.uint8)
        return obs, float(action == 0), self.t >= self.length, False, {}


def make_minari(root: Path, name: str, episodes: int, length: int) -> Path:
    """A Minari dataset of `episodes` NoiseEnv episodes under `root`; returns its directory."""
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    import minari

    env = NoiseEnv(length)
    collector = minari.DataCollector(env)
    collector.action_space.seed(0)
    for episode in range(episodes):
        collector.reset(seed=episode)
        for _ in range(length):
            collector.step(collector.action_space.sample())
    collector.create_dataset(f"bench/{name}-v0", algorithm_name="random", description="bench")
    return root / "bench" / f"{name}-v0"


def make_jat_parquet(path: Path, episodes: int, length: int) -> Path:
    """A jat-dataset layout parquet file of `episodes` episodes, written one episode at a time."""
    rng = np.random.default_rng(0)
    schema = pa.schema(
        [
            ("image_observations", pa.list_(pa.list_(pa.list_(pa.list_(pa.uint8()))))),
            ("discrete_actions", pa.list_(pa.int64())),
            ("rewards", pa.list_(pa.float32())),
        ]
    )
    with pq.ParquetWriter(path, schema) as writer:
        for _ in range(episodes):
            frames = rng.integers(0, 256, (length, 4, 84, 84), dtype=np.uint8)
            row = {
                "image_observations": nested_lists(frames[None]),
                "discrete_actions": [rng.integers(0, 6, length).tolist()],
                "rewards": [rng.normal(size=length).astype(np.float32).tolist()],
            }
            writer.write_table(pa.table(row, schema=schema))
    return path


def nested_lists(array: np.ndarray) -> pa.Array:
    """An n-d numpy array as an Arrow array of len(array) nested lists, keeping its dtype."""
    values = pa.array(array.reshape(-1))
    for size in reversed(array.shape[1:]):
        offsets = np.arange(0, len(values) + 1, size, dtype=np.int32)
        values = pa.ListArray.from_arrays(pa.array(offsets), values)
    return values


def run(cmd: list[str]) -> tuple[int, bytes, float, float]:
    """Run `cmd`: (exit code, stdout, seconds, peak RSS in MiB from `wait4`)."""
    with tempfile.TemporaryFile() as stderr:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr)
        stdout = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        proc.stdout.close()
        if proc.returncode not in (0, 2):
            stderr.seek(0)
            raise RuntimeError(f"{' '.join(cmd)} failed: {stderr.read().decode(errors='replace')}")
    return proc.returncode, stdout, seconds, usage.ru_maxrss / 1024  # Linux reports KiB


def run_import(args: list[str], out: Path) -> dict:
    """Run `tokworld import ARGS --out OUT`: {"rows", "seconds", "peak_rss_mb"}."""
    cmd = [sys.executable, "-m", "tokworld", "import", *args, "--out", str(out)]
    code, stdout, seconds, rss = run(cmd)
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {code}")
    return {
        "rows": json.loads(stdout)["steps"],
        "seconds": round(seconds, 2),
        "peak_rss_mb": round(rss, 1),
    }


def main(argv: list[str] | None = None) -> dict:
    """Build the sources, import each at both sizes, print and return the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=20, help="N, the small source")
    parser.add_argument("--scale", type=int, default=10, help="the large source has scale*N")
    parser.add_argument("--length", type=int, default=50, help="steps per episode")
    args = parser.parse_args(argv)
    sizes = (args.episodes, args.episodes * args.scale)
    result: dict = {
        "episodes": list(sizes),
        "steps_per_episode": args.length,
        "cpus": os.cpu_count(),
    }
    with tempfile.TemporaryDirectory(prefix="bench-import-") as tmp:
        tmp = Path(tmp)
        # Start-up alone: the CLI refusing an unknown spec prefix right after its imports.
        start_up = run(
            [sys.executable, "-m", "tokworld", "import", "none:x", "--out", str(tmp / "x")]
        )
        result["start_up_rss_mb"] = round(start_up[3], 1)
        sources = {
            "minari": [
                f"minari:{make_minari(tmp / 'minari', f'n{n}', n, args.length)}" for n in sizes
            ],
            "hf": [
                f"hf:{make_jat_parquet(tmp / f'jat{n}.parquet', n, args.length)}" for n in sizes
            ],
        }
        paths = {
            "minari": lambda i: [sources["minari"][i]],
            "hf": lambda i: [sources["hf"][i], "--map", JAT_MAP],
        }
        for name, spec_args in paths.items():
            small, large = (run_import(spec_args(i), tmp / f"out-{name}-{i}") for i in range(2))
            rate = (large["rows"] - small["rows"]) / (large["seconds"] - small["seconds"])
            result[name] = {
                "rows_per_s": round(rate, 1),
                "small": small,
                "large": large,
                "rss_ratio": round(large["peak_rss_mb"] / small["peak_rss_mb"], 3),
            }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
