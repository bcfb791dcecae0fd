"""`tokworld demo`: the whole story on a small default, on CPU, in one command.

1. collect random-policy steps of MiniGrid-Empty-5x5-v0 (64x64 RGB frames);
2. pretrain the frame tokenizer and the world model on them (`tokworld pretrain`, tiny preset);
3. fine-tune online from that run (`tokworld finetune`): a few epochs of collect -> update
   tokenizer and world model -> train the policy in imagination only;
4. evaluate the policy and a random one on 100 real episodes (`tokworld eval`);
5. imagine episodes with the trained policy inside the world model (GIFs).

Everything lands under `--out` (default `tokworld-demo/`); running it again continues where it
stopped (finished stages are kept). It ends with a table: random vs trained return, real env
steps used, wall time, and the paths of the GIFs and the learning curve.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tokworld.config import ModelChoices
from tokworld.data.collect import collect
from tokworld.data.windows import RealContext
from tokworld.envs import action_space, native_observation
from tokworld.errors import TokWorldError
from tokworld.eval.media import contact_sheet, pyplot, save_figure, write_gif
from tokworld.eval.real_env import evaluate_run
from tokworld.imagine import ImaginationEngine
from tokworld.policy import Agent
from tokworld.returns import play_episodes
from tokworld.rollout import imagine_episodes
from tokworld.run import load_policy, load_run
from tokworld.sampling import SamplingConfig
from tokworld.tokenizer.frame import FrameTokenizerConfig
from tokworld.training.finetune import finetune
from tokworld.training.imagination import ImaginationConfig
from tokworld.training.online import run_dataset
from tokworld.training.online_config import OnlineConfig
from tokworld.training.pretrain import PretrainConfig, pretrain
from tokworld.training.tokenizer import train_tokenizer

ENV = "MiniGrid-Empty-5x5-v0"


@dataclass(frozen=True)
class DemoConfig:
    """The small default: tiny models, 6k real steps, about 9 minutes on one CPU thread."""

    env_id: str = ENV
    offline_steps: int = 4000
    # The tiny tokenizer with a 512-code book: with 64 codes some of the 32 MiniGrid frames share
    # their codes (the agent's heading is lost).
    codebook_size: int = 512
    codebook_dim: int = 16
    tokenizer_steps: int = 600
    world_model_steps: int = 600
    world_model_lr: float = 1e-3
    online_steps: int = 2000
    steps_per_epoch: int = 1000
    online_tokenizer_steps: int = 0  # pretrained on this env's frames already
    online_world_model_steps: int = 200
    policy_steps: int = 75  # imagination updates per epoch
    policy_batch_size: int = 64
    policy_lr: float = 2e-3
    entropy_weight: float = 3e-4
    # Sampling the world model a little cold: a young model's reward head keeps a flat tail over
    # its 33 bins, and rare sampled outliers (+-5) drown the policy gradient.
    imagine_temperature: float = 0.7
    horizon: int = 20  # imagined steps per policy rollout
    context_steps: int = 1  # MiniGrid is fully observed: imagine from any single real frame
    online_eval_episodes: int = 20  # real episodes after each online epoch (the learning curve)
    eval_episodes: int = 100
    imagine_episodes: int = 4
    seed: int = 0
    frame_decoding: str | None = None  # the world model's (`TokWorldConfig`); None: the preset's
    calibrated: bool = False  # the policy's dreams at the data's odds of rewards and ends


def _stage(i: int, text: str) -> None:
    print(f"\n[{i}/5] {text}", flush=True)


def run_demo(cfg: DemoConfig, out: str | Path) -> dict:
    """Run (or continue) the demo in `out`; print the closing table; return its figures.

    The demo's stages train a frame tokenizer: an env observed as vectors is refused.
    """
    if native_observation(cfg.env_id) == "vector":
        raise TokWorldError(
            f"tokworld demo needs an env observed as frames; {cfg.env_id} observes vectors"
        )
    began = time.perf_counter()
    out = Path(out)
    data, pretrained, online = out / "data" / "random", out / "pretrained", out / "finetuned"

    _stage(1, f"collect {cfg.offline_steps} random-policy steps of {cfg.env_id}")
    if not data.exists():
        collect(cfg.env_id, cfg.offline_steps, data, seed=cfg.seed)

    _stage(2, "pretrain the frame tokenizer and the world model (tiny preset)")
    tokenizer = _tokenizer(cfg, data, out / "tokenizer")
    pre = PretrainConfig(
        dataset=str(data), preset="tiny", tokenizer=str(tokenizer),
        model=ModelChoices(frame_decoding=cfg.frame_decoding),
        world_model_steps=cfg.world_model_steps, lr=cfg.world_model_lr, checkpoint_every=200,
        eval_every=200, seed=cfg.seed,
    )  # fmt: skip
    if not (pretrained / "world_model" / "model.safetensors").exists():
        pretrain(pre, pretrained, resume=pretrained.exists())

    _stage(3, f"fine-tune online: {cfg.online_steps} more real steps, policy learns in imagination")
    imagination = ImaginationConfig(
        steps=cfg.policy_steps, batch_size=cfg.policy_batch_size, lr=cfg.policy_lr,
        entropy_weight=cfg.entropy_weight, temperature=cfg.imagine_temperature,
        horizon=cfg.horizon, context_steps=cfg.context_steps, seed=cfg.seed,
        calibrated=cfg.calibrated,
    )  # fmt: skip
    online_cfg = OnlineConfig(
        env_id=cfg.env_id, env_steps=cfg.online_steps, initial_steps=cfg.steps_per_epoch,
        steps_per_epoch=cfg.steps_per_epoch, preset="tiny", policy_input="tokens",
        tokenizer_steps=cfg.online_tokenizer_steps,
        world_model_steps=cfg.online_world_model_steps, world_model_lr=cfg.world_model_lr,
        imagination=imagination, eval_episodes=cfg.online_eval_episodes, seed=cfg.seed,
    )  # fmt: skip
    metrics = finetune(online_cfg, online, str(pretrained), resume=online.exists())

    _stage(4, f"evaluate on {cfg.eval_episodes} real episodes: trained vs random policy")
    trained = evaluate_run(online, cfg.env_id, cfg.eval_episodes, out / "eval" / "trained.json",
                           seed=cfg.seed)  # fmt: skip
    random = _random_returns(cfg)

    _stage(5, f"imagine {cfg.imagine_episodes} episodes with the trained policy")
    imagined = _imagine(online, cfg, out / "imagined")

    env_steps = cfg.offline_steps + metrics["env_steps"]
    curve = [{"env_steps": 0, "return": random["mean"]}] + [
        {"env_steps": cfg.offline_steps + p["env_steps"], "return": p["return"]}
        for p in metrics["learning_curve"]
    ]
    plot = _plot_curve(curve, random["mean"], out / "learning_curve.png", cfg.env_id)
    summary = {
        "env_id": cfg.env_id,
        "random_return": _short(random),
        "trained_return": _short(trained),
        "real_env_steps": env_steps,
        "offline_steps": cfg.offline_steps,
        "online_steps": metrics["env_steps"],
        "wall_time_s": round(time.perf_counter() - began, 1),
        "learning_curve": curve,
        "gifs": {
            "best_real": trained["best_gif"],
            "worst_real": trained["worst_gif"],
            "imagined": imagined,
        },
        "learning_curve_png": str(plot),
        "run": str(online),
    }
    (out / "demo.json").write_text(json.dumps(summary, indent=2))
    print(_table(summary), flush=True)
    return summary


def _tokenizer(cfg: DemoConfig, data: Path, out: Path) -> Path:
    """Train (or continue, or reuse) the demo's frame tokenizer in `out`."""

    if not (out / "model.safetensors").exists():
        config = FrameTokenizerConfig.preset(
            "tiny", codebook_size=cfg.codebook_size, codebook_dim=cfg.codebook_dim
        )
        resume = (out / "train_state" / "state.json").exists()
        if not resume:  # killed before its first checkpoint: start the tokenizer over
            shutil.rmtree(out, ignore_errors=True)
        train_tokenizer(str(data), out, config=config, steps=cfg.tokenizer_steps,
                        checkpoint_every=200, resume=resume, seed=cfg.seed)  # fmt: skip
    return out


def _short(result: dict) -> dict:
    return {k: result[k] for k in ("mean", "std", "min", "max", "episodes")}


def _random_returns(cfg: DemoConfig) -> dict:
    """The same evaluation with uniformly random actions."""

    space = action_space(cfg.env_id)
    space.seed(cfg.seed)
    agent = lambda frames: np.array([space.sample() for _ in frames])  # noqa: E731
    return play_episodes(cfg.env_id, agent, cfg.eval_episodes, seed=cfg.seed).summary()


def _imagine(run: Path, cfg: DemoConfig, out: Path) -> list[str]:
    """Imagined episodes of the trained policy from real start frames: GIFs and a sheet."""

    world_model, tokenizer = load_run(run)
    policy = load_policy(run)
    ds = run_dataset(run)
    first = ds.select_columns(["frame_index"]).with_format("numpy")[:]["frame_index"] == 0
    starts = ds.select(np.flatnonzero(first))  # the real first frames of episodes
    context = RealContext(starts, 1, tokenizer, cfg.seed).sample(cfg.imagine_episodes)
    sampling = SamplingConfig(temperature=cfg.imagine_temperature)
    engine = ImaginationEngine(world_model, tokenizer.decode, sampling, seed=cfg.seed)
    agent = Agent(policy, tokenizer, seed=cfg.seed)
    episodes = imagine_episodes(engine, context, cfg.horizon, policy=agent)
    gifs = [
        str(write_gif(episodes.frames[e, : n + 1], out / f"episode_{e:03d}.gif"))
        for e, n in enumerate(episodes.lengths)
    ]
    contact_sheet(episodes.frames, out / "grid.png")
    return gifs


def _plot_curve(curve: list[dict], random: float, path: Path, env_id: str) -> Path:
    """PNG: mean real return against real env steps used, with the random policy's level."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    ax.plot([p["env_steps"] for p in curve], [p["return"] for p in curve], "o-", label="policy")
    ax.axhline(random, color="grey", linestyle="--", label="random policy")
    ax.set_xlabel("real env steps (offline + online)")
    ax.set_ylabel("mean return")
    ax.set_title(env_id, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def _table(s: dict) -> str:
    r, t = s["random_return"], s["trained_return"]
    rows = [
        ("random policy: return", f"{r['mean']:.3f} ± {r['std']:.3f} ({r['episodes']} episodes)"),
        ("trained in imagination", f"{t['mean']:.3f} ± {t['std']:.3f} ({t['episodes']} episodes)"),
        (
            "real env steps used",
            f"{s['real_env_steps']} ({s['offline_steps']} offline + {s['online_steps']} online)",
        ),  # fmt: skip
        ("wall time", f"{s['wall_time_s'] / 60:.1f} min"),
        ("best / worst real episode", f"{s['gifs']['best_real']}, {s['gifs']['worst_real']}"),
        ("imagined episodes", ", ".join(s["gifs"]["imagined"])),
        ("learning curve", s["learning_curve_png"]),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"\ntokworld demo on {s['env_id']} (64x64 pixels)", "-" * (width + 40)]
    lines += [f"{k:<{width}}  {v}" for k, v in rows]
    return "\n".join(lines)
