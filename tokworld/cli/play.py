"""`tokworld play`: play inside a run's world model from a local web page."""

from __future__ import annotations

import argparse

from tokworld.cli.flags import add_config_flags, config_from_args
from tokworld.play.server import serve
from tokworld.play.world import PlayConfig, refuse_vector_run


def register(sub: argparse._SubParsersAction) -> None:
    """Add `play`."""
    p = sub.add_parser(
        "play",
        help="play inside a run's world model from a local web page (keys, forks, the real env "
        "beside it, sessions recorded as datasets)",
    )
    add_config_flags(p, PlayConfig)
    p.set_defaults(func=_play)


def _play(args: argparse.Namespace) -> dict:
    cfg = config_from_args(PlayConfig, args)
    refuse_vector_run(cfg.run)
    return serve(cfg)
