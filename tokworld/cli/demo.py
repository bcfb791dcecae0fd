"""`tokworld demo`: the whole story on a small default, on CPU, in one command."""

from __future__ import annotations

import argparse

from tokworld.config import FRAME_DECODINGS
from tokworld.eval.demo import DemoConfig, run_demo
from tokworld.eval.demo import __doc__ as DEMO_DOC


def register(sub: argparse._SubParsersAction) -> None:
    """Add `demo`."""
    p = sub.add_parser(
        "demo",
        help="collect -> pretrain -> finetune online -> eval -> imagine, on CPU (the command to "
        "try first)",
        description=DEMO_DOC.split("\n\n")[0],
    )
    p.add_argument("--out", default="tokworld-demo", help="where everything goes")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: fastest for tiny "
                   "models, and on a busy machine)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seeds collection, training and eval")
    p.add_argument("--frame-decoding", choices=FRAME_DECODINGS, help="the world model's "
                   "(default: the tiny preset's)")  # fmt: skip
    p.add_argument("--calibrated", action="store_true", help="train the policy on dreams with "
                   "rewards and ends at the data's odds (`--imagine-calibrated`)")  # fmt: skip
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> dict:
    cfg = DemoConfig(seed=args.seed, frame_decoding=args.frame_decoding, calibrated=args.calibrated)
    return run_demo(cfg, args.out)
