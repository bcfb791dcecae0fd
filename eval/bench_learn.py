"""`tokworld bench learn`: return vs real env steps of tokworld against model-free RL.

Arms, each run for `seeds` seeds and evaluated at the same real-step checkpoints on the same
number of real episodes:

- `scratch`: the online loop (`training.online`) from nothing, at the config's preset;
- `pretrained` (with `--from RUN`): the same loop fine-tuned from a pretrained run;
- `ppo` (with `--ppo`) and `sac` (with `--sac`, Box actions only): stable-baselines3 on the
  same observations as tokworld's (pixel frames through a CNN, or the env's vector through an
  MLP; `pip install -e ".[bench]"`).

A folder per arm and seed (`DIR/ARM/seed_S`) holds that run; a finished one is read back, an
unfinished online run resumes, and an unfinished sb3 run starts over (sb3 checkpoints are
pickles, which tokworld never writes). `DIR/results.json` holds every curve plotted in
`DIR/curves.png`, the wall time of every run, and the pretraining cost of `--from RUN`. With
`only` ("ARM", or "ARM:SEED" for one seed of it), that alone runs and nothing is gathered:
start arms (or seeds) side by side in the same DIR, then run the command without it to gather
them.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import gymnasium as gym
import numpy as np

from tokworld.envs import action_space, make_env, native_observation
from tokworld.errors import TokWorldError
from tokworld.eval.media import pyplot, save_figure
from tokworld.folders import write_json_atomic
from tokworld.returns import play_episodes
from tokworld.training.finetune import finetune
from tokworld.training.online_config import OnlineConfig

MODEL_FREE = ("ppo", "sac")
ARMS = ("scratch", "pretrained", *MODEL_FREE)


def checkpoints(cfg: OnlineConfig) -> list[int]:
    """Real env steps after each epoch of the online loop: where every arm is evaluated."""
    steps = np.cumsum([cfg.steps_in(e) for e in range(cfg.epochs)])
    return [int(s) for s in steps]


def run_online(cfg: OnlineConfig, out: Path, run: str | None, progress: bool) -> dict:
    """One online arm-seed in `out` (resumed when started before): its curve and wall time."""
    done = out / "curve.json"
    if done.exists():
        return json.loads(done.read_text())
    began = time.perf_counter()
    metrics = finetune(cfg, out / "run", run, resume=(out / "run").exists(), progress=progress)
    curve = {
        "env_steps": [p["env_steps"] for p in metrics["learning_curve"]],
        "returns": [p["return"] for p in metrics["learning_curve"]],
        "wall_time_s": round(time.perf_counter() - began, 1),
    }
    write_json_atomic(done, curve)
    return curve


def run_model_free(algo: str, cfg: OnlineConfig, out: Path, progress: bool) -> dict:
    """sb3 PPO or SAC on `cfg.env_id`'s frames (CNN) or vector (MLP), evaluated at
    `checkpoints(cfg)`."""
    done = out / "curve.json"
    if done.exists():
        return json.loads(done.read_text())
    try:
        from stable_baselines3 import PPO, SAC
        from stable_baselines3.common.callbacks import BaseCallback
        from stable_baselines3.common.vec_env import DummyVecEnv
    except ImportError:  # an optional extra, not a dependency of the library
        needs = f"--{algo} needs stable-baselines3: pip install -e '.[bench]'"
        raise TokWorldError(needs) from None

    marks = checkpoints(cfg)
    curve: dict = {"env_steps": [], "returns": []}
    observation = cfg.observation
    if observation == "auto":
        observation = native_observation(cfg.env_id)

    def evaluate(model) -> None:
        agent = lambda obs: model.predict(obs, deterministic=False)[0]  # noqa: E731
        result = play_episodes(cfg.env_id, agent, cfg.eval_episodes, seed=10**6 + cfg.seed,
                               frame_size=cfg.frame_size, observation=observation,
                               progress=False)  # fmt: skip
        curve["env_steps"].append(int(model.num_timesteps))
        curve["returns"].append(float(result.returns.mean()))

    class AtCheckpoints(BaseCallback):
        def _on_step(self) -> bool:
            taken = len(curve["env_steps"])
            if taken < len(marks) and self.num_timesteps >= marks[taken]:
                evaluate(self.model)
            return True

    began = time.perf_counter()
    policy = "MlpPolicy" if observation == "vector" else "CnnPolicy"
    env = lambda: make_env(cfg.env_id, cfg.frame_size, observation=observation)  # noqa: E731
    envs = DummyVecEnv([env] * (1 if algo == "sac" else 8))
    envs.seed(cfg.seed)
    if algo == "sac":
        model = SAC(policy, envs, learning_rate=1e-3, seed=cfg.seed, verbose=0)
    elif observation == "vector":  # RL Zoo's classic-control PPO settings
        model = PPO(policy, envs, n_steps=32, batch_size=256, n_epochs=20, gamma=0.98,
                    gae_lambda=0.8, learning_rate=1e-3, seed=cfg.seed, verbose=0)  # fmt: skip
    else:  # RL Zoo's Atari PPO settings
        model = PPO(policy, envs, n_steps=128, batch_size=256, n_epochs=4, learning_rate=2.5e-4,
                    ent_coef=0.01, clip_range=0.1, seed=cfg.seed, verbose=0)  # fmt: skip
    model.learn(total_timesteps=marks[-1], callback=AtCheckpoints(), progress_bar=progress)
    if len(curve["env_steps"]) < len(marks):
        evaluate(model)
    envs.close()
    curve["wall_time_s"] = round(time.perf_counter() - began, 1)
    write_json_atomic(done, curve)
    return curve


def summarize(curves: list[dict]) -> dict:
    """Mean and std over seeds of curves taken at the same checkpoints."""
    returns = np.array([c["returns"] for c in curves], dtype=np.float64)
    return {
        "env_steps": curves[0]["env_steps"],
        "mean": returns.mean(0).tolist(),
        "std": returns.std(0).tolist(),
        "seeds": curves,
    }


def plot_curves(results: dict, path: Path) -> Path:
    """One line per arm (mean over seeds), shaded one std either side."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8), dpi=120)
    for name, arm in results["arms"].items():
        x, mean, std = (np.asarray(arm[k]) for k in ("env_steps", "mean", "std"))
        ax.plot(x, mean, "o-", markersize=3, label=f"{name} ({len(arm['seeds'])} seeds)")
        ax.fill_between(x, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("real env steps")
    ax.set_ylabel(f"mean return ({results['eval_episodes']} real episodes)")
    ax.set_title(results["env_id"], fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def bench_learn(
    cfg: OnlineConfig,
    out: str | Path,
    seeds: int = 3,
    pretrained: str | None = None,
    ppo: bool = False,
    progress: bool = True,
    sac: bool = False,
    only: str | None = None,
) -> dict:
    """Run every arm (or only `only`: "ARM" or "ARM:SEED") for `seeds` seeds into `out`; write
    and return `results.json` (with `only`: return what ran and write nothing more)."""
    if seeds < 1:
        raise TokWorldError(f"--seeds must be >= 1, got {seeds}")
    chosen = {"scratch": True, "pretrained": bool(pretrained), "ppo": ppo, "sac": sac}
    only, seed_list = _only(only, chosen, seeds)
    space = action_space(cfg.env_id)
    if sac and not isinstance(space, gym.spaces.Box):
        raise TokWorldError(f"--sac needs continuous (Box) actions; {cfg.env_id} has {space}")
    out = Path(out)
    cfg = replace(cfg, eval_every=1)  # every arm is evaluated at every checkpoint
    arms = {"scratch": None} | ({"pretrained": pretrained} if pretrained else {})
    results: dict = {
        "env_id": cfg.env_id,
        "env_steps": cfg.env_steps,
        "eval_episodes": cfg.eval_episodes,
        "checkpoints": checkpoints(cfg),
        "config": cfg.to_dict(),
        "arms": {},
    }
    for name, run in arms.items():
        if only not in (None, name):
            continue
        curves = [
            run_online(replace(cfg, seed=s), out / name / f"seed_{s}", run, progress)
            for s in seed_list
        ]
        results["arms"][name] = summarize(curves)
    for algo in [a for a in MODEL_FREE if chosen[a] and only in (None, a)]:
        curves = [run_model_free(algo, replace(cfg, seed=s), out / algo / f"seed_{s}", progress)
                  for s in seed_list]  # fmt: skip
        results["arms"][algo] = summarize(curves)
    if only is not None:
        return results
    if pretrained:
        results["pretraining"] = _pretraining_cost(Path(pretrained))
    results["curves"] = str(plot_curves(results, out / "curves.png"))
    write_json_atomic(out / "results.json", results)
    return results


def _only(only: str | None, chosen: dict[str, bool], seeds: int) -> tuple[str | None, list]:
    """--only "ARM" or "ARM:SEED" -> (the arm or None, the seeds to run)."""
    if only is None:
        return None, list(range(seeds))
    arm, colon, seed = only.partition(":")
    if not chosen.get(arm):
        arms = ", ".join(name for name, on in chosen.items() if on)
        raise TokWorldError(f"--only {only}: {arm} is not an arm of this benchmark ({arms})")
    if not colon:
        return arm, list(range(seeds))
    if not (seed.isdigit() and int(seed) < seeds):
        raise TokWorldError(f"--only {only}: the seed must be one of 0 to {seeds - 1}")
    return arm, [int(seed)]


def _pretraining_cost(run: Path) -> dict:
    """Steps and wall time the pretrained run cost, from its metrics.json."""
    metrics = json.loads((run / "metrics.json").read_text())
    stages = ("tokenizer", "world_model")
    return {
        "run": str(run),
        "dataset": metrics.get("dataset"),
        "seconds": {s: metrics.get(s, {}).get("seconds") for s in stages},
        "steps": {s: metrics.get(s, {}).get("steps") for s in stages},
    }
