"""`tokworld finetune` (the online loop, from a pretrained run or from scratch) and `tokworld eval`
(real returns of a run's policy, or of planning in its world model)."""

from __future__ import annotations

import argparse

from tokworld.cli.flags import add_config_flags, config_from_args
from tokworld.cli.outputs import add_overwrite_flag
from tokworld.cuda_graph import check_cuda_graphs
from tokworld.errors import TokWorldError
from tokworld.eval.real_env import episode_media, evaluate_run
from tokworld.folders import claim
from tokworld.planner import PlannerConfig
from tokworld.run import check_device, load_tokenizer
from tokworld.training.finetune import finetune
from tokworld.training.online_config import OnlineConfig


def register(sub: argparse._SubParsersAction) -> None:
    """Add `finetune` and `eval`."""
    p = sub.add_parser(
        "finetune",
        help="learn an env online: collect, update tokenizer and world model, train the policy "
        "in imagination",
        description="Starts from a pretrained run (tokenizer + world model, action slice adapted "
        "to ENV_ID) or, without --run, from scratch at --preset; writes RUN2/tokenizer, "
        "RUN2/world_model, RUN2/policy (not with --act plan), RUN2/data and RUN2/metrics.json "
        "after every epoch.",
    )
    p.add_argument("--run", help="pretrained run directory (omit to learn from scratch)")
    p.add_argument("--out", required=True, help="new run directory")
    add_config_flags(p, OnlineConfig)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.set_defaults(func=_finetune)

    p = sub.add_parser(
        "eval",
        help="real-environment returns of a run's policy (or of planning in its world model), "
        "with GIFs (vector runs: a plot)",
    )
    p.add_argument(
        "--run",
        required=True,
        help="run directory with tokenizer/ and policy/ (--plan: world_model/)",
    )
    p.add_argument("--env", required=True, help="gymnasium env id")
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--json", required=True, help="output JSON; GIFs (or a plot) go beside it")
    add_overwrite_flag(p)
    p.add_argument("--greedy", action="store_true", help="the policy takes its most likely action")
    p.add_argument("--temperature", type=float, default=1.0, help="the policy's temperature")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--device", default="cpu", help="where the run's networks run, e.g. cuda")
    p.add_argument(
        "--plan",
        action="store_true",
        help="act by planning in the run's world model (random-shooting MPC, the --plan-* "
        "flags) instead of with its policy; each real step costs --plan-horizon imagined steps "
        "of up to --plan-candidates rollouts per episode played at once (up to 16)",
    )
    add_config_flags(p, PlannerConfig)
    p.set_defaults(func=_eval)


def _finetune(args: argparse.Namespace) -> dict:
    metrics = finetune(config_from_args(OnlineConfig, args), args.out, args.run, args.resume)
    return {k: v for k, v in metrics.items() if k != "history"}


def _eval(args: argparse.Namespace) -> dict:
    plan = config_from_args(PlannerConfig, args)
    if not args.plan and plan != PlannerConfig():
        raise TokWorldError("the --plan-* flags set the planner: add --plan")
    check_device(args.device)
    if plan.cuda_graphs:
        check_cuda_graphs(args.device)
    if args.plan and (args.greedy or args.temperature != 1.0):
        raise TokWorldError(
            "--greedy and --temperature sample the run's policy; a planner's imagination "
            "takes --plan-temperature"
        )
    claim([args.json], args.overwrite)
    media = episode_media(args.json, load_tokenizer(args.run).observation)
    claim(list(media.values()), args.overwrite)
    summary = evaluate_run(args.run, args.env, args.episodes, args.json, args.greedy,
                           args.temperature, args.seed, plan=plan if args.plan else None,
                           device=args.device)  # fmt: skip
    return {k: v for k, v in summary.items() if k != "returns"}
