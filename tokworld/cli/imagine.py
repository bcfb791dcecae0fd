"""`tokworld imagine`: sample imagined episodes, write GIFs, a contact sheet and a dataset (a
vector run: the dataset, and with --open-loop a plot of every dimension, real vs imagined)."""

from __future__ import annotations

import argparse

from tokworld.cli.flags import add_config_flags, config_from_args
from tokworld.eval.imagined import ImagineConfig, write_imagined


def register(sub: argparse._SubParsersAction) -> None:
    """Add `imagine`."""
    p = sub.add_parser("imagine", help="sample imagined episodes from a run's world model")
    p.add_argument("--run", required=True, help="run directory (tokenizer/ + world_model/)")
    p.add_argument("--dataset", required=True, help="real trajectories to take context from")
    p.add_argument("--out", required=True)
    add_config_flags(p, ImagineConfig)
    p.set_defaults(func=_imagine)


def _imagine(args: argparse.Namespace) -> dict:
    return write_imagined(args.run, args.dataset, args.out, config_from_args(ImagineConfig, args))
