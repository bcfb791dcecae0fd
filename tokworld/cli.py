"""The `tokworld` command line: one subcommand per job, one clear line per error."""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from tokworld.errors import TokWorldError

# Modules that add subcommands: each has `register(subparsers)`, setting `func` on its parsers.
COMMAND_MODULES = (
    "tokworld.cli",
    "tokworld.datacli",
    "tokworld.demo",
    "tokworld.eval_cli",
    "tokworld.finetune_cli",
    "tokworld.imagine_cli",
    "tokworld.pretrain_cli",
    "tokworld.tokenizer_cli",
)


def register(sub: argparse._SubParsersAction) -> None:
    """The foundation's subcommands: `collect`."""
    p = sub.add_parser("collect", help="collect trajectories from a gymnasium env into a dataset")
    p.add_argument("--env", required=True, help="gymnasium env id, e.g. ALE/Pong-v5")
    p.add_argument("--steps", type=int, required=True, help="number of env steps")
    p.add_argument("--out", required=True, help="output dataset directory")
    p.add_argument("--policy", default="random", help="'random'")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frame-size", type=int, default=64)
    p.add_argument("--sticky-actions", action="store_true", help="ALE: repeat actions, p=0.25")
    p.set_defaults(func=_collect)


def _collect(args: argparse.Namespace) -> dict:
    from tokworld.collect import collect

    summary = collect(
        args.env,
        args.steps,
        args.out,
        policy=args.policy,
        seed=args.seed,
        frame_size=args.frame_size,
        sticky_actions=args.sticky_actions,
    )
    return summary.to_dict()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokworld", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; print its result as JSON; bad input exits 2 with one line."""
    args = build_parser().parse_args(argv)
    import torch

    threads = torch.get_num_threads()
    try:
        import datasets
        import transformers

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
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
