"""`tokworld eval-model`, `tokworld bench` and `tokworld report`: what a run is worth."""

from __future__ import annotations

import argparse
from pathlib import Path

from tokworld.cli.flags import add_config_flags, config_from_args
from tokworld.cli.outputs import add_overwrite_flag, write_json
from tokworld.eval.bench import run_suite
from tokworld.eval.bench_imagine import add_arguments as add_imagine_arguments
from tokworld.eval.bench_imagine import run as run_imagine_bench
from tokworld.eval.bench_learn import ARMS, bench_learn
from tokworld.eval.bench_learn import __doc__ as BENCH_LEARN_DOC
from tokworld.eval.fidelity import FidelityConfig, evaluate_fidelity, held_out_dataset
from tokworld.eval.plots import plot_fidelity
from tokworld.eval.report import write_report
from tokworld.folders import claim
from tokworld.run import check_device, default_device, load_run
from tokworld.training.online_config import OnlineConfig


def register(sub: argparse._SubParsersAction) -> None:
    """Add `eval-model`, `bench` (with `bench imagine`) and `report`."""
    p = sub.add_parser("eval-model", help="open-loop fidelity of a run's world model per step")
    p.add_argument("--run", required=True, help="run directory (tokenizer/ + world_model/)")
    p.add_argument("--dataset", help="held-out trajectories (default: the run's held-out episodes)")
    add_config_flags(p, FidelityConfig)
    p.add_argument("--device", default=default_device())
    p.add_argument("--json", help="write the figures here (and a PNG plot beside it)")
    p.add_argument(
        "--plot",
        help="PNG of PSNR (frames) or normalised MSE (vectors) vs horizon (default: the --json "
        "path, .png)",
    )
    add_overwrite_flag(p)
    p.set_defaults(func=_eval_model)

    p = sub.add_parser("bench", help="throughput and memory benchmarks of a preset")
    p.add_argument("--preset", default="base", choices=("tiny", "small", "base"))
    p.add_argument("--quick", action="store_true", help="few, small repetitions (a smoke test)")
    p.add_argument("--json", help="also write the JSON here")
    add_overwrite_flag(p)
    p.add_argument("--device", default=default_device())
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    p.set_defaults(func=_bench)
    what = p.add_subparsers(dest="benchmark", metavar="BENCHMARK")
    q = what.add_parser("imagine", help="imagined steps/s at one batch size, flat cost check")
    add_imagine_arguments(q)
    q.add_argument("--json", help="also write the JSON here")
    add_overwrite_flag(q)
    q.set_defaults(func=_bench_imagine)
    q = what.add_parser(
        "learn",
        help="return vs real env steps: tokworld from scratch, from a pretrained run, and PPO",
        description=BENCH_LEARN_DOC.split("\n\n")[0],
    )
    q.add_argument("--out", required=True, help="benchmark folder (an interrupted one resumes)")
    q.add_argument("--seeds", type=int, default=3, help="seeds per arm")
    q.add_argument("--from", dest="pretrained", help="also fine-tune from this pretrained run")
    q.add_argument("--ppo", action="store_true", help="also stable-baselines3 PPO (.[bench])")
    q.add_argument("--sac", action="store_true", help="also sb3 SAC, Box actions (.[bench])")
    q.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    q.add_argument(
        "--only",
        metavar="ARM[:SEED]",
        help=f"run this arm ({', '.join(ARMS)}), or one seed of it, alone and gather nothing "
        "(start them side by side in one --out, then run without --only to gather them)",
    )
    add_config_flags(q, OnlineConfig, defaults={"eval_episodes": 100})
    q.set_defaults(func=_bench_learn)

    p = sub.add_parser("report", help="one self-contained HTML page about a run")
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--out", required=True, help="the HTML file to write")
    p.add_argument("--dataset", help="real trajectories (default: the run's held-out episodes)")
    p.add_argument("--fidelity", help="reuse this `eval-model --json` output")
    add_config_flags(p, FidelityConfig, defaults={"windows": 32})
    p.add_argument("--device", default=default_device())
    p.add_argument("--videos", type=int, default=4, help="imagined-vs-real episodes shown")
    add_overwrite_flag(p)
    p.set_defaults(func=_report)


def _eval_model(args: argparse.Namespace) -> dict:
    options = config_from_args(FidelityConfig, args).options()
    plot = args.plot or (str(Path(args.json).with_suffix(".png")) if args.json else None)
    claim([args.json, plot], args.overwrite)
    world_model, tokenizer = load_run(args.run, args.device)
    ds, described = held_out_dataset(args.run, args.dataset, tokenizer)
    result, _ = evaluate_fidelity(world_model, tokenizer, ds, **options)
    result = {"run": str(args.run), "dataset": described, **result}
    if plot:
        result["plot"] = str(plot_fidelity(result, plot))
    return write_json(result, args.json)


def _bench(args: argparse.Namespace) -> dict:
    check_device(args.device)
    claim([args.json], args.overwrite)
    return write_json(run_suite(args.preset, args.quick, args.device), args.json)


def _bench_imagine(args: argparse.Namespace) -> dict:
    claim([args.json], args.overwrite)
    return write_json(run_imagine_bench(args), args.json)


def _bench_learn(args: argparse.Namespace) -> dict:
    cfg = config_from_args(OnlineConfig, args)
    result = bench_learn(cfg, args.out, args.seeds, args.pretrained, args.ppo, sac=args.sac,
                         only=args.only)  # fmt: skip
    return {k: v for k, v in result.items() if k != "config"}


def _report(args: argparse.Namespace) -> dict:
    claim([args.out], args.overwrite)
    return write_report(
        args.run,
        args.out,
        args.dataset,
        args.fidelity,
        args.videos,
        args.device,
        **config_from_args(FidelityConfig, args).options(),
    )
