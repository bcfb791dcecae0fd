"""`tokworld imagine`: sample imagined episodes, write GIFs, a contact sheet and a dataset."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from tokworld.data import TrajectoryMeta, load_trajectories, write_trajectories
from tokworld.dream import RealContext
from tokworld.errors import TokWorldError
from tokworld.imagine import ImaginationEngine, SamplingConfig
from tokworld.policy import Agent
from tokworld.rollout import Episodes, imagine_episodes, random_batch_policy
from tokworld.run import load_policy, load_run
from tokworld.tokenizer.codecs import space_to_dict


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("imagine", help="sample imagined episodes from a run's world model")
    p.add_argument("--run", required=True, help="run directory (tokenizer/ + world_model/)")
    p.add_argument("--dataset", required=True, help="real trajectories to take context from")
    p.add_argument("--episodes", type=int, default=4)
    p.add_argument("--steps", type=int, default=40, help="imagined steps per episode")
    p.add_argument("--out", required=True)
    p.add_argument("--policy", default="random",
                   help="'random', or a run directory with policy/ (e.g. from finetune): it acts "
                   "on the frames imagined by --run")  # fmt: skip
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--greedy", action="store_true")
    p.add_argument("--context", type=int, default=4, help="real steps to start from")
    p.add_argument("--open-loop", action="store_true", help="replay real actions, compare frames")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the per-token forward (long runs: ~1.5x after a warm-up)",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.set_defaults(func=run_imagine)


def run_imagine(args: argparse.Namespace) -> dict:
    """Imagine `--episodes` episodes of `--steps` steps and write them to `--out`."""
    if args.steps < 1 or args.episodes < 1 or args.context < 1:
        raise TokWorldError("--steps, --episodes and --context must be positive")
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise TokWorldError(f"output directory {out} already exists and is not empty")
    world_model, tokenizer = load_run(args.run, args.device)
    ds = load_trajectories(args.dataset)
    meta = TrajectoryMeta.from_dataset(ds)
    world_model.vocab.check_action_space(meta.space, f"dataset {args.dataset}")
    if args.policy == "random":
        policy = random_batch_policy(meta.space, args.seed)
    else:
        policy = Agent(load_policy(args.policy, meta.space, args.device), tokenizer, seed=args.seed)
    sampling = SamplingConfig(args.temperature, args.top_k, args.greedy)
    engine = ImaginationEngine(world_model, tokenizer.decode, sampling, args.seed, args.compile)
    length = args.context + (args.steps if args.open_loop else 0)
    windows = RealContext(ds, length, tokenizer, args.seed).sample(args.episodes)
    context = {k: v[:, : args.context] for k, v in windows.items()}
    if args.open_loop:
        actions = windows["action"][:, args.context - 1 : -1]
        episodes = imagine_episodes(engine, context, args.steps, actions=actions)
    else:
        episodes = imagine_episodes(engine, context, args.steps, policy=policy)
    summary = _write(out, episodes, meta, args)
    if args.open_loop:
        summary.update(_compare(out, episodes, windows, tokenizer, args.context))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _write(out: Path, episodes: Episodes, meta: TrajectoryMeta, args) -> dict:
    from tokworld.eval.media import contact_sheet, write_gif

    gifs = []
    for e, length in enumerate(episodes.lengths):
        gifs.append(str(write_gif(episodes.frames[e, : length + 1], out / f"episode_{e:03d}.gif")))
    grid = contact_sheet(episodes.frames, out / "grid.png")
    source = {
        "kind": "imagine",
        "run": str(args.run),
        "context_dataset": str(args.dataset),
        "temperature": args.temperature,
        "top_k": args.top_k,
        "greedy": args.greedy,
        "open_loop": args.open_loop,
        "seed": args.seed,
    }
    imagined = TrajectoryMeta(meta.env_id, space_to_dict(meta.space), meta.frame_size, source)
    write_trajectories(episodes.rows, out / "dataset", imagined, episodes.frames.shape[2:])
    return {
        "episodes": len(episodes.lengths),
        "steps": int(episodes.lengths.sum()),
        "mean_return": float(episodes.returns.mean()),
        "gifs": gifs,
        "grid": str(grid),
        "dataset": str(out / "dataset"),
    }


def _compare(out: Path, episodes: Episodes, windows: dict, tokenizer, context: int) -> dict:
    """Per-step PSNR/SSIM of imagined frames vs real ones and vs the tokenizer's reconstruction.

    Step 0 is the last context frame; when the dataset has no frames, the reconstruction
    stands in for the real ones.
    """
    from tokworld.eval.fidelity import compare_frames, reconstruct
    from tokworld.eval.media import side_by_side, write_gif

    recon = reconstruct(tokenizer, windows["codes"][:, context - 1 :])
    real = windows["observation"][:, context - 1 :].numpy() if "observation" in windows else None
    for e, imagined in enumerate(episodes.frames):
        shown = recon[e] if real is None else real[e]
        write_gif(side_by_side(shown, imagined), out / f"real_vs_imagined_{e:03d}.gif")
    return compare_frames(episodes.frames, recon, real)
