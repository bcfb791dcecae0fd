"""`tokworld finetune` (the online loop from a pretrained run) and `tokworld eval` (real returns).

Fine-tuning onto another environment keeps the tokenizer and the world model and changes only
the action slice of the vocabulary (actions are last in the id space): the embedding and head
rows of specials, frame codes, rewards and ends are copied bit-identically, the action rows are
initialised fresh.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import gymnasium as gym
import torch

from tokworld.errors import TokWorldError
from tokworld.model import TokWorldModel

ROWS = ("backbone.embed_tokens.weight", "head.weight")  # (vocab size, width) both


def adapt_world_model(model: TokWorldModel, action_space: gym.Space, seed: int = 0):
    """`model` for `action_space`: a new model whose vocabulary differs only in the action slice.

    Returns `model` itself when the action space is already its own.
    """
    old = model.vocab
    vocab = old.with_action_space(action_space, bins=old.action.bins)
    if vocab == old:
        return model
    config = copy.deepcopy(model.config)
    config.vocab = vocab.to_dict()
    torch.manual_seed(seed)
    new = TokWorldModel(config)
    keep = old.action_slice.start  # == vocab.action_slice.start: everything before actions
    theirs = model.state_dict()
    state = new.state_dict()
    with torch.no_grad():
        for name, tensor in state.items():
            if name in ROWS:
                tensor[:keep] = theirs[name][:keep]
            else:
                tensor.copy_(theirs[name])
    return new.to(model.device)


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
    from tokworld.training.imagination import ImaginationConfig
    from tokworld.training.online import OnlineConfig

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


def finetune(cfg, out: str | Path, run: str | None = None, resume=False, progress=True) -> dict:
    """The online loop in `out`, from the tokenizer and world model of `run` (or from scratch)."""
    from tokworld.envs import action_space
    from tokworld.run import load_run
    from tokworld.training.online import Models, train_online

    models = Models()
    if run is not None:
        world_model, tokenizer = load_run(run)
        space = action_space(cfg.env_id)
        if tokenizer.config.frame_size != cfg.frame_size:
            raise TokWorldError(
                f"run {run} was trained on {tokenizer.config.frame_size}px frames, not "
                f"{cfg.frame_size}px"
            )
        models = Models(tokenizer, adapt_world_model(world_model, space, cfg.seed))
    source = {"run": None if run is None else str(run)}
    return train_online(cfg, out, models, resume=resume, progress=progress, source=source)


def _finetune(args: argparse.Namespace) -> dict:
    metrics = finetune(online_config(args), args.out, args.run, args.resume)
    return {k: v for k, v in metrics.items() if k != "history"}


def evaluate_run(
    run: str | Path,
    env_id: str,
    episodes: int,
    out_json: str | Path,
    greedy: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Play `episodes` real episodes with the run's policy; write the JSON and two GIFs."""
    from tokworld.envs import action_space
    from tokworld.eval.media import write_gif
    from tokworld.eval.real_env import evaluate
    from tokworld.policy import Agent
    from tokworld.run import load_policy, load_tokenizer

    tokenizer = load_tokenizer(run)
    policy = load_policy(run, action_space(env_id))
    agent = Agent(policy, tokenizer, greedy, temperature, seed=seed)
    result = evaluate(env_id, agent, episodes, seed=seed, progress=progress,
                      frame_size=tokenizer.config.frame_size)  # fmt: skip
    out_json = Path(out_json)
    stem = out_json.with_suffix("")
    summary = {
        **result.summary(),
        "run": str(run),
        "greedy": greedy,
        "returns": result.returns.tolist(),
        "best_gif": str(write_gif(result.best_frames, f"{stem}_best.gif")),
        "worst_gif": str(write_gif(result.worst_frames, f"{stem}_worst.gif")),
    }
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(summary, indent=2))
    return summary


def _eval(args: argparse.Namespace) -> dict:
    summary = evaluate_run(
        args.run, args.env, args.episodes, args.json, args.greedy, args.temperature, args.seed
    )
    return {k: v for k, v in summary.items() if k != "returns"}
