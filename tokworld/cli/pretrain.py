"""`tokworld pretrain`: train the frame tokenizer and the world model on an offline dataset."""

from __future__ import annotations

import argparse
from dataclasses import fields

from accelerate import PartialState

from tokworld.training.pretrain import PretrainConfig, pretrain


def register(sub: argparse._SubParsersAction) -> None:
    """Add `pretrain`."""
    p = sub.add_parser(
        "pretrain",
        help="pretrain the frame tokenizer and the world model on a trajectory dataset",
        description="Train (or reuse) the frame tokenizer, tokenize the dataset once, train the "
        "world model; write RUN/tokenizer, RUN/world_model and RUN/metrics.json. Runs on N "
        "processes under `accelerate launch --multi_gpu --num_processes N -m tokworld pretrain`.",
    )
    p.add_argument("--dataset", required=True, help="dataset directory, Hub id, minari:ID or hf:ID")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--preset", choices=("tiny", "small", "base"), default="small")
    p.add_argument("--tokenizer", help="reuse this trained tokenizer directory")
    p.add_argument("--tokenizer-steps", type=int, default=2000)
    p.add_argument("--tokenizer-batch-size", type=int, default=64)
    p.add_argument("--world-model-steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=32, help="world-model batch per process")
    p.add_argument("--lr", type=float, default=3e-4, help="world-model peak learning rate")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--checkpoint-every", type=int, default=250)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--eval-fraction", type=float, default=0.1, help="episodes held out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run")
    p.set_defaults(func=_pretrain)


def _pretrain(args: argparse.Namespace) -> dict | None:
    """Run the pipeline; the main process prints the metrics, the others nothing."""
    options = {f.name: getattr(args, f.name) for f in fields(PretrainConfig) if f.name in args}
    metrics = pretrain(PretrainConfig(**options), args.out, resume=args.resume)
    return metrics if PartialState().is_main_process else None
