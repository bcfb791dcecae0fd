"""`tokworld collect`, `tokworld import`, `tokworld data info` and `tokworld data push`: make
datasets, bring them in, look at them, share them on the Hub."""

from __future__ import annotations

import argparse
from pathlib import Path

from tokworld.data.collect import OBSERVATION_CHOICES, collect
from tokworld.data.hub import dataset_info, describe, push_dataset
from tokworld.data.importers import import_dataset
from tokworld.envs import action_space
from tokworld.errors import TokWorldError
from tokworld.policy import Agent
from tokworld.run import load_policy, load_tokenizer


def register(sub: argparse._SubParsersAction) -> None:
    """Add `collect`, `import` and `data {info,push}`."""
    p = sub.add_parser("collect", help="collect trajectories from a gymnasium env into a dataset")
    p.add_argument("--env", required=True, help="gymnasium env id, e.g. ALE/Pong-v5")
    p.add_argument("--steps", type=int, required=True, help="number of env steps")
    p.add_argument("--out", required=True, help="output dataset directory")
    p.add_argument(
        "--policy",
        default="random",
        help="'random', or a run directory whose trained policy acts (sampling, as it collects "
        "in training), e.g. to record held-out data a trained agent reaches",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frame-size", type=int, default=64)
    p.add_argument(
        "--obs",
        choices=OBSERVATION_CHOICES,
        default="auto",
        help="observations to store: 'frames' (RGB, rendered if need be), 'vector' (the env's "
        "own flat Box, float32), 'auto' (vector where the env observes one, else frames)",
    )
    p.add_argument("--sticky-actions", action="store_true", help="ALE: repeat actions, p=0.25")
    p.set_defaults(func=_collect)

    p = sub.add_parser("import", help="convert a Minari or Hub/parquet dataset to tokworld's")
    p.add_argument("spec", help="minari:DATASET_ID_OR_PATH or hf:REPO_OR_PATH")
    p.add_argument("--out", required=True, help="output dataset directory")
    p.add_argument(
        "--frame-size", type=int, default=64, help="side of imported frames (vectors are kept)"
    )
    p.add_argument(
        "--map",
        dest="mapping",
        help="hf: source columns, observation=COL,action=COL,reward=COL"
        "[,terminated=COL,truncated=COL,episode=COL]",
    )
    p.add_argument("--config", help="hf: dataset configuration name")
    p.add_argument("--split", default="train", help="hf: split to import")
    p.add_argument("--revision", help="hf: Hub branch, tag or commit")
    p.add_argument(
        "--streaming",
        action="store_true",
        help="hf: stream a Hub dataset instead of downloading it first (local parquet always is)",
    )
    p.add_argument("--action-space", help='hf: JSON, e.g. {"type": "Discrete", "n": 18}')
    p.add_argument("--env-id", help="hf: gymnasium env id the data comes from")
    p.set_defaults(func=_import)

    data = sub.add_parser("data", help="inspect and share trajectory datasets")
    actions = data.add_subparsers(dest="action", required=True, metavar="ACTION")
    info = actions.add_parser(
        "info", help="print episodes, steps, observation kind and shape, returns, source"
    )
    info.add_argument("dataset", help="dataset directory or Hub id")
    info.set_defaults(func=lambda args: dataset_info(args.dataset))
    push = actions.add_parser("push", help="push a dataset to the Hub with a dataset card")
    push.add_argument("dataset", help="dataset directory")
    push.add_argument("--repo", required=True, help="Hub dataset repo id, e.g. me/pong-random")
    push.add_argument("--private", action="store_true")
    push.set_defaults(func=lambda args: push_dataset(args.dataset, args.repo, args.private))


def _import(args: argparse.Namespace) -> dict:
    options = {
        "config": args.config,
        "split": args.split,
        "revision": args.revision,
        "streaming": args.streaming,
        "action_space": args.action_space,
        "env_id": args.env_id,
    }
    defaults = {"split": "train", "streaming": False}
    given = {k: v for k, v in options.items() if v != defaults.get(k)}
    ds = import_dataset(args.spec, args.out, args.frame_size, args.mapping, **given)
    return {"out": args.out, **describe(ds)}


def _collect(args: argparse.Namespace) -> dict:
    policy, observation = args.policy, args.obs
    if policy != "random":
        if not Path(policy).is_dir():
            raise TokWorldError(
                f"unknown policy {policy!r}: use 'random' or a trained run's directory"
            )
        tokenizer = load_tokenizer(policy)
        if observation not in ("auto", tokenizer.observation):
            raise TokWorldError(
                f"the policy of {policy} reads {tokenizer.observation}, not --obs " + observation
            )
        observation = tokenizer.observation
        actor = load_policy(policy, action_space(args.env))
        policy = Agent(actor, tokenizer, seed=args.seed)
    summary = collect(
        args.env,
        args.steps,
        args.out,
        policy=policy,
        seed=args.seed,
        frame_size=args.frame_size,
        sticky_actions=args.sticky_actions,
        observation=observation,
    )
    return summary.to_dict()
