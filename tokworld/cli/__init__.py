"""The `tokworld` command line: one subcommand per job, one clear line per error.

The top floor: the only code that imports `tokworld.training` and `tokworld.eval` together with
the library. One module per command family; `main` turns a `TokWorldError` into one line on
stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

import datasets
import torch
import transformers

from tokworld.errors import TokWorldError
from tokworld.folders import json_text

# Modules that add subcommands: each has `register(subparsers)`, setting `func` on its parsers.
COMMAND_MODULES = (
    "tokworld.cli.data",
    "tokworld.cli.tokenizer",
    "tokworld.cli.pretrain",
    "tokworld.cli.finetune",
    "tokworld.cli.imagine",
    "tokworld.cli.evaluate",
    "tokworld.cli.demo",
    "tokworld.cli.play",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokworld", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; print its result as JSON; bad input exits 2 with one line."""
    args = build_parser().parse_args(argv)
    threads = torch.get_num_threads()
    try:
        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
        if getattr(args, "threads", None) is not None:  # every command's `--threads`
            if args.threads < 1:
                raise TokWorldError(f"--threads must be >= 1, got {args.threads}")
            torch.set_num_threads(args.threads)
        result = args.func(args)
    except TokWorldError as e:
        print(f"tokworld {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tokworld {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        torch.set_num_threads(threads)
    if result is not None:
        print(json_text(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
