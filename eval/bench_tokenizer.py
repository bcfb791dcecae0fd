"""Benchmark the frame tokenizer: train on a random-policy dataset, measure on held-out episodes.

    python -m tokworld.eval.bench_tokenizer --env ALE/Breakout-v5 --steps 20000 \\
        --preset small --train-steps 1500 --threads 1 --json runs/bench_tokenizer/breakout.json

Collects (or reuses, under `--data-dir`) `--steps` random-policy steps, holds out a fraction of
whole episodes, trains for exactly `--train-steps` optimizer steps, and prints one JSON: PSNR,
SSIM, codebook usage and perplexity on the held-out frames, training frames/s, encode+decode
frames/s at batch 64, and the time to decode a batch of 32 frames (one imagined step of 32
parallel episodes). With `--iris`, the same for IRIS's tokenizer (`iris_tokenizer.py`), trained
with the same schedule on the same frames in the same order.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from tokworld.data.collect import collect
from tokworld.data.format import load_trajectories
from tokworld.data.windows import split_episodes
from tokworld.errors import TokWorldError
from tokworld.eval.iris_tokenizer import train_iris_tokenizer
from tokworld.eval.tokenizer_metrics import evaluate_tokenizer
from tokworld.folders import claim, report_json
from tokworld.tokenizer.foreground import FOREGROUND_LOSSES
from tokworld.tokenizer.frame import FrameTokenizer, FrameTokenizerConfig
from tokworld.training.tokenizer import train_tokenizer


def dataset_for(env_id: str, steps: int, seed: int, data_dir: Path):
    """The benchmark's dataset of `env_id`: collected once, then reused from `data_dir`."""
    path = data_dir / f"{env_id.replace('/', '-')}-{steps}-s{seed}"
    if not path.exists():
        collect(env_id, steps, path, seed=seed)
    ds = load_trajectories(str(path))
    if len(ds) != steps:
        raise TokWorldError(f"{path} has {len(ds)} rows, expected {steps}: remove it")
    return ds, path


def _best_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


@torch.no_grad()
def throughput(tokenizer: FrameTokenizer, frames: torch.Tensor, repeats: int = 5) -> dict:
    """Encode+decode frames/s at batch 64 and the decode time of a batch of 32 (best of runs)."""
    x64 = frames[:64]
    roundtrip = _best_time(lambda: tokenizer.decode(tokenizer.encode(x64)), repeats)
    codes32 = tokenizer.encode(frames[:32])
    decode32 = _best_time(lambda: tokenizer.decode(codes32), repeats)
    return {
        "encode_decode_fps_batch64": len(x64) / roundtrip,
        "decode_ms_batch32": 1000 * decode32,
        "decode_fps_batch32": len(codes32) / decode32,
    }


def _our_config(args: argparse.Namespace) -> FrameTokenizerConfig:
    """Our tokenizer's config: the preset with the command line's overrides."""
    overrides = {"tokens_per_frame": args.tokens_per_frame, "quantizer": args.quantizer,
                 "foreground_loss": args.foreground_loss,
                 "foreground_weight": args.foreground_weight, "dec_blocks": args.dec_blocks,
                 "dec_channels": args.dec_channels and tuple(args.dec_channels)}  # fmt: skip
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return FrameTokenizerConfig.preset(args.preset, **overrides)


def _train_ours(args: argparse.Namespace, config: FrameTokenizerConfig, train_ds, out: Path,
                schedule: dict):  # fmt: skip
    """Train our tokenizer of `config` (`_our_config(args)`)."""
    tokenizer, metrics = train_tokenizer(train_ds, out, config=config, **schedule)
    described = {"tokenizer": "tokworld", "preset": args.preset, "quantizer": config.quantizer,
                 "foreground_loss": config.foreground_loss,
                 "foreground_weight": config.foreground_weight, "dec_blocks": config.dec_blocks,
                 "dec_channels": list(config.dec_channels)}  # fmt: skip
    return tokenizer, metrics, described


def run(args: argparse.Namespace) -> dict:
    """Collect/reuse, split, train, evaluate; return the figures."""
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out or f"runs/bench_tokenizer/{args.env.replace('/', '-')}")
    if (out / "tokenizer").exists():
        raise TokWorldError(f"{out / 'tokenizer'} exists: pick another --out or remove it")
    if args.iris and (args.dec_blocks is not None or args.dec_channels is not None):
        raise TokWorldError("--dec-blocks and --dec-channels shape our decoder, not --iris's")
    config = None if args.iris else _our_config(args)  # a bad override fails before collecting
    ds, path = dataset_for(args.env, args.steps, args.seed, Path(args.data_dir))
    train_ds, held = split_episodes(ds, args.holdout, args.seed)
    schedule = {"steps": args.train_steps, "batch_size": args.batch_size, "lr": args.lr,
                "seed": args.seed, "checkpoint_every": max(500, args.train_steps)}  # fmt: skip
    start = time.perf_counter()
    if args.iris:
        tokenizer, train_metrics = train_iris_tokenizer(train_ds, out / "tokenizer", **schedule)
        described = {"tokenizer": "iris reference (no LPIPS)"}
    else:
        tokenizer, train_metrics, described = _train_ours(
            args, config, train_ds, out / "tokenizer", schedule
        )
    seconds = time.perf_counter() - start
    threshold = FrameTokenizerConfig.foreground_threshold  # the same for both tokenizers
    held_metrics = evaluate_tokenizer(tokenizer, held, grid=out / "grid.png", threshold=threshold)
    frames = held.select(range(min(64, len(held)))).select_columns(["observation"])
    frames = torch.from_numpy(frames.with_format("numpy", dtype=np.uint8)[:]["observation"])
    return {
        "env": args.env,
        "dataset": str(path),
        "train_frames": len(train_ds),
        "held_out_frames": len(held),
        **described,
        "tokens_per_frame": tokenizer.tokens_per_frame,
        "codebook_size": tokenizer.codebook_size,
        "parameters": sum(p.numel() for p in tokenizer.parameters()),
        "train_steps": args.train_steps,
        "batch_size": args.batch_size,
        "train_seconds": seconds,
        "train_fps": args.train_steps * args.batch_size / seconds,
        "train_final": {
            k: train_metrics[k] for k in ("loss", "psnr", "usage") if k in train_metrics
        },
        "held_out": held_metrics,
        **throughput(tokenizer, frames, args.repeats),
        "torch_threads": torch.get_num_threads(),
        "tokenizer_dir": str(out / "tokenizer"),
        "grid": str(out / "grid.png"),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--env", default="ALE/Breakout-v5")
    p.add_argument("--steps", type=int, default=20000, help="dataset size (env steps)")
    p.add_argument("--preset", default="small")
    p.add_argument("--tokens-per-frame", type=int, help="override the preset's 16")
    p.add_argument("--quantizer", choices=("vq", "fsq"), help="override the preset's quantizer")
    p.add_argument("--foreground-loss", choices=FOREGROUND_LOSSES, help="override it")
    p.add_argument("--foreground-weight", type=float, help="override the preset's 4")
    p.add_argument("--dec-blocks", type=int, help="override the preset's residual blocks per "
                   "decoder resolution")  # fmt: skip
    p.add_argument("--dec-channels", type=int, nargs="+", metavar="C",
                   help="override the preset's decoder widths, one per resolution, patch grid "
                   "first")  # fmt: skip
    p.add_argument("--iris", action="store_true",
                   help="train the IRIS tokenizer re-implementation (no LPIPS)")  # fmt: skip
    p.add_argument("--train-steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--holdout", type=float, default=0.05, help="fraction of episodes held out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=5, help="timed runs of each speed figure")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--data-dir", default="data/bench", help="where datasets are cached")
    p.add_argument("--out", help="run directory (default runs/bench_tokenizer/ENV)")
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args(argv)
    try:
        claim([args.json], overwrite=True)  # a bad --json fails now, not after the training
        report_json(run(args), args.json)
    except TokWorldError as e:
        print(f"bench_tokenizer: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
