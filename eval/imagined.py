"""Imagined episodes written to a folder: GIFs, a contact sheet, a trajectory dataset, and with
`open_loop` the real-vs-imagined comparison (`tokworld imagine`).

A vector run (vector codec) writes no GIFs or contact sheet: its episodes are a dataset of
vector observations, and its open-loop comparison a plot of every dimension over time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tokworld.cuda_graph import check_cuda_graphs
from tokworld.data.format import TrajectoryMeta, load_trajectories, write_trajectories
from tokworld.data.windows import RealContext
from tokworld.errors import TokWorldError
from tokworld.eval.fidelity import compare_observations, reconstruct
from tokworld.eval.media import contact_sheet, side_by_side, write_gif
from tokworld.eval.plots import plot_dimensions
from tokworld.eval.vector_fidelity import observation_variance
from tokworld.folders import check_output_dir, write_json_atomic
from tokworld.imagine import ImaginationEngine, imagination_decoder
from tokworld.policy import Agent
from tokworld.rollout import Episodes, imagine_episodes, random_batch_policy
from tokworld.run import check_device, check_observations, default_device, load_policy, load_run
from tokworld.sampling import SamplingConfig, bf16_field, calibrated_field
from tokworld.tokenizer.codecs import space_to_dict


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
            "the observations imagined by --run"
        },
    )
    temperature: float = 1.0
    top_k: int | None = None
    greedy: bool = False
    open_loop: bool = field(
        default=False,
        metadata={"help": "replay the real actions of real episodes, compare with what followed"},
    )
    seed: int = 0
    compile: bool = field(
        default=False,
        metadata={"help": "torch.compile the per-token forward (long runs: ~1.5x after a warm-up)"},
    )
    cuda_graphs: bool = field(
        default=False,
        metadata={"help": "replay each step's forward and the decoder from CUDA graphs (GPU)"},
    )
    bf16: bool = bf16_field()
    calibrated: bool = calibrated_field()
    device: str = field(default_factory=default_device)

    def __post_init__(self):
        if self.steps < 1 or self.episodes < 1 or self.context < 1:
            raise TokWorldError("--steps, --episodes and --context must be positive")
        check_device(self.device)
        if self.cuda_graphs:
            check_cuda_graphs(self.device, self.compile)


def write_imagined(run: str, dataset: str, out: str | Path, cfg: ImagineConfig) -> dict:
    """Imagine `cfg.episodes` episodes of `cfg.steps` steps from `run`'s world model, starting
    from real context in `dataset`; write GIFs and a contact sheet (frames only), the episodes
    as a trajectory dataset and `summary.json` to `out`."""
    out = check_output_dir(out)
    world_model, tokenizer = load_run(run, cfg.device)
    ds = load_trajectories(dataset)
    meta = TrajectoryMeta.from_dataset(ds)
    check_observations(run, tokenizer, meta, f"dataset {dataset}")
    world_model.vocab.check_action_space(meta.space, f"dataset {dataset}")
    if cfg.policy == "random":
        policy = random_batch_policy(meta.space, cfg.seed)
    else:
        policy = Agent(load_policy(cfg.policy, meta.space, cfg.device), tokenizer, seed=cfg.seed)
    sampling = SamplingConfig(cfg.temperature, cfg.top_k, cfg.greedy, cfg.calibrated)
    decoder = imagination_decoder(tokenizer, cfg.cuda_graphs)
    engine = ImaginationEngine(world_model, decoder, sampling, cfg.seed, cfg.compile,
                               cfg.cuda_graphs, cfg.bf16)  # fmt: skip
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
        variance = observation_variance(ds, tokenizer) if meta.observation == "vector" else None
        summary.update(_compare(out, episodes, windows, tokenizer, cfg.context, variance))
    write_json_atomic(out / "summary.json", summary)
    return summary


def _write(out: Path, episodes: Episodes, meta: TrajectoryMeta, cfg: ImagineConfig, run: str,
           dataset: str) -> dict:  # fmt: skip
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
    imagined = TrajectoryMeta(meta.env_id, space_to_dict(meta.space), meta.frame_size, source,
                              meta.observation_space)  # fmt: skip
    write_trajectories(episodes.rows, out / "dataset", imagined, episodes.frames.shape[2:])
    summary = {
        "episodes": len(episodes.lengths),
        "steps": int(episodes.lengths.sum()),
        "mean_return": float(episodes.returns.mean()),
        "dataset": str(out / "dataset"),
    }
    if meta.observation == "frames":
        summary["gifs"] = [
            str(write_gif(episodes.frames[e, : n + 1], out / f"episode_{e:03d}.gif"))
            for e, n in enumerate(episodes.lengths)
        ]
        summary["grid"] = str(contact_sheet(episodes.frames, out / "grid.png"))
    return summary


def _compare(out: Path, episodes: Episodes, windows: dict, tokenizer, context: int,
             variance=None) -> dict:  # fmt: skip
    """Per-step figures of imagined observations vs real ones and vs the tokenizer's
    reconstruction (PSNR/SSIM of frames; MAE and normalised MSE of vectors, scaled by the
    dataset's `variance`), and real | imagined GIFs (frames) or one plot of every dimension
    (vectors).

    Step 0 is the last context observation; when the dataset has no observations, the
    reconstruction stands in for the real ones.
    """
    recon = reconstruct(tokenizer, windows["codes"][:, context - 1 :])
    real = windows["observation"][:, context - 1 :].numpy() if "observation" in windows else None
    shown = recon if real is None else real
    figures = compare_observations(episodes.frames, recon, real, variance=variance)
    if tokenizer.observation == "frames":
        for e, imagined in enumerate(episodes.frames):
            write_gif(side_by_side(shown[e], imagined), out / f"real_vs_imagined_{e:03d}.gif")
        return figures
    lines = []
    for e, n in enumerate(episodes.lengths):
        colour = {"color": f"C{e % 10}"}
        lines.append((("real" if real is not None else "reconstructed") if e == 0 else None,
                      shown[e], colour))  # fmt: skip
        lines.append(("imagined" if e == 0 else None, episodes.frames[e, : n + 1],
                      {**colour, "linestyle": "--"}))  # fmt: skip
    title = f"real (solid) vs imagined (dashed) from {context} real steps, real actions replayed"
    plot = plot_dimensions(lines, out / "real_vs_imagined.png", title)
    return {**figures, "plot": str(plot)}
