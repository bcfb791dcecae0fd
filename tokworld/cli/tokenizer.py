"""`tokworld train-tokenizer`, `tokworld tokenize` and `tokworld eval-tokenizer`."""

from __future__ import annotations

import argparse

from tokworld.cli.outputs import add_overwrite_flag, write_json
from tokworld.data.format import load_trajectories
from tokworld.data.validate import validate_trajectories
from tokworld.data.windows import split_episodes
from tokworld.errors import TokWorldError
from tokworld.eval.tokenizer_metrics import evaluate_tokenizer
from tokworld.folders import claim
from tokworld.tokenizer.frame import FrameTokenizer, FrameTokenizerConfig
from tokworld.training.tokenizer import tokenize_to_disk, train_tokenizer


def register(sub: argparse._SubParsersAction) -> None:
    """Add the frame tokenizer's subcommands."""
    p = sub.add_parser("train-tokenizer", help="train the frame tokenizer (VQ-VAE) on a dataset")
    p.add_argument("--dataset", required=True, help="trajectory dataset (directory or Hub id)")
    p.add_argument("--out", required=True, help="tokenizer directory: new or empty unless --resume")
    p.add_argument("--preset", default="small", help="tiny | small | base")
    p.add_argument("--steps", type=int, default=2000, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--tokens-per-frame", type=int, help="16 (4x4, default) or 64 (8x8)")
    p.add_argument("--codebook-size", type=int, help="codes in the codebook (default 512)")
    p.add_argument("--quantizer", choices=("vq", "fsq"), help="vq (default) or fsq")
    p.add_argument("--foreground-loss", choices=("weighted", "balanced", "symmetric"),
                   help="the preset's by default. weighted: foreground pixels count 1+W; balanced: "
                   "foreground mean + background mean (draws small objects more, ghosts more); "
                   "symmetric: balanced, what the reconstruction draws counts as foreground too "
                   "(fewest ghosts)")  # fmt: skip
    p.add_argument("--foreground-weight", type=float,
                   help="weight of the foreground (the preset's: 4)")  # fmt: skip
    p.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints")
    p.add_argument("--holdout", type=float, default=0.0, help="fraction of episodes to evaluate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from OUT/train_state")
    p.set_defaults(func=_train)

    p = sub.add_parser("tokenize", help="add a `codes` column (frame codes) to a dataset")
    p.add_argument("--tokenizer", required=True, help="tokenizer directory")
    p.add_argument("--dataset", required=True, help="trajectory dataset (directory or Hub id)")
    p.add_argument("--out", required=True, help="output dataset directory")
    p.add_argument("--batch-size", type=int, default=256)
    p.set_defaults(func=_tokenize)

    p = sub.add_parser("eval-tokenizer", help="PSNR, SSIM and codebook use on held-out frames")
    p.add_argument("--tokenizer", required=True, help="tokenizer directory")
    p.add_argument("--dataset", required=True, help="trajectory dataset (directory or Hub id)")
    p.add_argument("--json", help="also write the metrics to this file")
    p.add_argument("--grid", help="write a PNG of originals over reconstructions here")
    p.add_argument("--max-frames", type=int, help="evaluate an evenly spaced subset")
    add_overwrite_flag(p)
    p.add_argument("--batch-size", type=int, default=64)
    p.set_defaults(func=_evaluate)


def _train(args: argparse.Namespace) -> dict:
    overrides = {
        "tokens_per_frame": args.tokens_per_frame,
        "codebook_size": args.codebook_size,
        "quantizer": args.quantizer,
        "foreground_loss": args.foreground_loss,
        "foreground_weight": args.foreground_weight,
    }
    config = FrameTokenizerConfig.preset(
        args.preset, **{k: v for k, v in overrides.items() if v is not None}
    )
    if args.steps < 1 or args.batch_size < 1:
        raise TokWorldError("--steps and --batch-size must be positive")
    ds = load_trajectories(args.dataset)
    validate_trajectories(ds)
    held = None
    if args.holdout > 0:
        ds, held = split_episodes(ds, args.holdout, args.seed)
    _, metrics = train_tokenizer(
        ds,
        args.out,
        config=config,
        steps=args.steps,
        batch_size=args.batch_size,
        resume=args.resume,
        eval_dataset=held,
        lr=args.lr,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
    )
    return {"out": args.out, **metrics}


def _tokenize(args: argparse.Namespace) -> dict:
    tokenizer = FrameTokenizer.from_pretrained(args.tokenizer)
    ds = load_trajectories(args.dataset)
    validate_trajectories(ds)
    coded = tokenize_to_disk(tokenizer, ds, args.out, args.batch_size)
    return {"out": args.out, "rows": len(coded), "tokens_per_frame": tokenizer.tokens_per_frame}


def _evaluate(args: argparse.Namespace) -> dict:
    claim([args.json, args.grid], args.overwrite)
    tokenizer = FrameTokenizer.from_pretrained(args.tokenizer)
    ds = load_trajectories(args.dataset)
    metrics = evaluate_tokenizer(
        tokenizer, ds, args.batch_size, max_frames=args.max_frames, grid=args.grid
    )
    if args.grid:
        metrics["grid"] = args.grid
    return write_json(metrics, args.json)
