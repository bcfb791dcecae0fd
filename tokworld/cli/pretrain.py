"""`tokworld pretrain`: train the frame tokenizer and the world model on an offline dataset."""

from __future__ import annotations

import argparse

from accelerate import PartialState

from tokworld.cli.flags import add_config_flags, config_from_args
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
    p.add_argument("--out", required=True, help="run directory")
    add_config_flags(p, PretrainConfig)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run")
    p.set_defaults(func=_pretrain)


def _pretrain(args: argparse.Namespace) -> dict | None:
    """Run the pipeline; the main process prints the metrics, the others nothing."""
    metrics = pretrain(config_from_args(PretrainConfig, args), args.out, resume=args.resume)
    return metrics if PartialState().is_main_process else None
