"""Imagined episodes written to a folder: GIFs, a contact sheet, a trajectory dataset, and with
`open_loop` the real-vs-imagined comparison (`tokworld imagine`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from tokworld.data.format import TrajectoryMeta, load_trajectories, write_trajectories
from tokworld.data.windows import RealContext
from tokworld.errors import TokWorldError
from tokworld.eval.fidelity import compare_frames, reconstruct
from tokworld.eval.media import contact_sheet, side_by_side, write_gif
from tokworld.folders import check_output_dir, write_json_atomic
from tokworld.imagine import ImaginationEngine, SamplingConfig
from tokworld.policy import Agent
from tokworld.rollout import Episodes, imagine_episodes, random_batch_policy
from tokworld.run import load_policy, load_run
from tokworld.tokenizer.codecs import space_to_dict

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class ImagineConfig:
    """How `write_imagined` samples: episodes, their length, the context, the policy, sampling."""

    episodes: int = 4
    steps: int = field(default=40, metadata={"help": "imagined steps per episode"})
    context: int = field(default=4, metadata={"help": "real steps to start from"})
    policy: str = field(
        default="random",
        metadata={
            "help": "'random', or a run directory with policy/ (e.g. from finetune): it acts on "
            "the frames imagined by --run"
        },
    )
    temperature: float = 1.0
    top_k: int | None = None
    greedy: bool = False
    open_loop: bool = field(default=False, metadata={"help": "replay real actions, compare frames"})
    seed: int = 0
    compile: bool = field(
        default=False,
        metadata={"help": "torch.compile the per-token forward (long runs: ~1.5x after a warm-up)"},
    )
    device: str = DEVICE

    def __post_init__(self):
        if self.steps < 1 or self.episodes < 1 or self.context < 1:
            raise TokWorldError("--steps, --episodes and --context must be positive")


def write_imagined(run: str, dataset: str, out: str | Path, cfg: ImagineConfig) -> dict:
    """Imagine `cfg.episodes` episodes of `cfg.steps` steps from `run`'s world model, starting
    from real context in `dataset`; write GIFs, a contact sheet, the episodes as a trajectory
    dataset and `summary.json` to `out`."""
    out = check_output_dir(out)
    world_model, tokenizer = load_run(run, cfg.device)
    ds = load_trajectories(dataset)
    meta = TrajectoryMeta.from_dataset(ds)
    world_model.vocab.check_action_space(meta.space, f"dataset {dataset}")
    if cfg.policy == "random":
        policy = random_batch_policy(meta.space, cfg.seed)
    else:
        policy = Agent(load_policy(cfg.policy, meta.space, cfg.device), tokenizer, seed=cfg.seed)
    sampling = SamplingConfig(cfg.temperature, cfg.top_k, cfg.greedy)
    engine = ImaginationEngine(world_model, tokenizer.decode, sampling, cfg.seed, cfg.compile)
    length = cfg.context + (cfg.steps if cfg.open_loop else 0)
    windows = RealContext(ds, length, tokenizer, cfg.seed).sample(cfg.episodes)
    context = {k: v[:, : cfg.context] for k, v in windows.items()}
    if cfg.open_loop:
        actions = windows["action"][:, cfg.context - 1 : -1]
        episodes = imagine_episodes(engine, context, cfg.steps, actions=actions)
    else:
        episodes = imagine_episodes(engine, context, cfg.steps, policy=policy)
    summary = _write(out, episodes, meta, cfg, run, dataset)
    if cfg.open_loop:
        summary.update(_compare(out, episodes, windows, tokenizer, cfg.context))
    write_json_atomic(out / "summary.json", summary)
    return summary


def _write(out: Path, episodes: Episodes, meta: TrajectoryMeta, cfg: ImagineConfig, run: str,
           dataset: str) -> dict:  # fmt: skip
    gifs = []
    for e, length in enumerate(episodes.lengths):
        gifs.append(str(write_gif(episodes.frames[e, : length + 1], out / f"episode_{e:03d}.gif")))
    grid = contact_sheet(episodes.frames, out / "grid.png")
    source = {
        "kind": "imagine",
        "run": str(run),
        "context_dataset": str(dataset),
        "temperature": cfg.temperature,
        "top_k": cfg.top_k,
        "greedy": cfg.greedy,
        "open_loop": cfg.open_loop,
        "seed": cfg.seed,
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
    recon = reconstruct(tokenizer, windows["codes"][:, context - 1 :])
    real = windows["observation"][:, context - 1 :].numpy() if "observation" in windows else None
    for e, imagined in enumerate(episodes.frames):
        shown = recon[e] if real is None else real[e]
        write_gif(side_by_side(shown, imagined), out / f"real_vs_imagined_{e:03d}.gif")
    return compare_frames(episodes.frames, recon, real)
