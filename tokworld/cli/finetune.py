"""`tokworld finetune` (the online loop, from a pretrained run or from scratch) and `tokworld eval`
(real returns of a run's policy)."""

from __future__ import annotations

import argparse

from tokworld.eval.real_env import evaluate_run
from tokworld.training.finetune import finetune
from tokworld.training.imagination import ImaginationConfig
from tokworld.training.online import OnlineConfig


def register(sub: argparse._SubParsersAction) -> None:
    """Add `finetune` and `eval`."""
    p = sub.add_parser(
        "finetune",
        help="learn an env online: collect, update tokenizer and world model, train the policy "
        "in imagination",
        description="Starts from a pretrained run (tokenizer + world model, action slice adapted "
        "to ENV_ID) or, without --run, from scratch at --preset; writes RUN2/tokenizer, "
        "RUN2/world_model, RUN2/policy, RUN2/data and RUN2/metrics.json after every epoch.",
    )
    p.add_argument("--run", help="pretrained run directory (omit to learn from scratch)")
    p.add_argument("--env", required=True, help="gymnasium env id, e.g. MiniGrid-Empty-5x5-v0")
    p.add_argument("--env-steps", type=int, required=True, help="real env steps in all")
    p.add_argument("--out", required=True, help="new run directory")
    p.add_argument("--preset", choices=("tiny", "small", "base"), default="small")
    p.add_argument("--policy-input", choices=("frames", "tokens"), default="frames")
    p.add_argument("--initial-steps", type=int, default=2000, help="random steps of epoch 0")
    p.add_argument("--steps-per-epoch", type=int, default=1000)
    p.add_argument("--tokenizer-steps", type=int, default=100, help="per epoch (0: frozen)")
    p.add_argument("--world-model-steps", type=int, default=200, help="per epoch")
    p.add_argument("--world-model-lr", type=float, default=3e-4)
    p.add_argument("--policy-steps", type=int, default=100, help="imagination updates per epoch")
    p.add_argument("--batch-size", type=int, default=32, help="imagined rollouts per update")
    p.add_argument("--horizon", type=int, default=20, help="imagined steps per rollout")
    p.add_argument("--context", type=int, default=4, help="real steps before imagining")
    p.add_argument("--policy-lr", type=float, default=1e-4)
    p.add_argument("--imagine-temperature", type=float, default=1.0, help="world-model sampling")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile imagination's per-token forward (on CPU, 1.35-1.5x more "
                   "imagined steps/s after a one-time warm-up of about a minute)")  # fmt: skip
    p.add_argument("--epsilon", type=float, default=0.01, help="random actions when collecting")
    p.add_argument("--temperature", type=float, default=1.0, help="policy temperature, collecting")
    p.add_argument("--eval-every", type=int, default=1, help="epochs between real evaluations")
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.set_defaults(func=_finetune)

    p = sub.add_parser("eval", help="real-environment returns of a run's policy, with GIFs")
    p.add_argument("--run", required=True, help="run directory with policy/ and tokenizer/")
    p.add_argument("--env", required=True, help="gymnasium env id")
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--json", required=True, help="output JSON; GIFs are written beside it")
    p.add_argument("--greedy", action="store_true", help="take the most likely action")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.set_defaults(func=_eval)


def online_config(args: argparse.Namespace):
    """The `OnlineConfig` of parsed `finetune` arguments."""
    imagination = ImaginationConfig(
        steps=args.policy_steps,
        batch_size=args.batch_size,
        horizon=args.horizon,
        context_steps=args.context,
        lr=args.policy_lr,
        temperature=args.imagine_temperature,
        compile=args.compile,
    )
    return OnlineConfig(
        env_id=args.env,
        env_steps=args.env_steps,
        initial_steps=args.initial_steps,
        steps_per_epoch=args.steps_per_epoch,
        epsilon=args.epsilon,
        temperature=args.temperature,
        preset=args.preset,
        policy_input=args.policy_input,
        tokenizer_steps=args.tokenizer_steps,
        world_model_steps=args.world_model_steps,
        world_model_lr=args.world_model_lr,
        imagination=imagination,
        eval_every=args.eval_every,
        eval_episodes=args.eval_episodes,
        seed=args.seed,
    )


def _finetune(args: argparse.Namespace) -> dict:
    metrics = finetune(online_config(args), args.out, args.run, args.resume)
    return {k: v for k, v in metrics.items() if k != "history"}


def _eval(args: argparse.Namespace) -> dict:
    summary = evaluate_run(
        args.run, args.env, args.episodes, args.json, args.greedy, args.temperature, args.seed
    )
    return {k: v for k, v in summary.items() if k != "returns"}
