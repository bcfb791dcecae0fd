"""A run's policy (or a planner in its world model) in the real environment: returns as JSON;
the best and worst episode as GIFs, or for a vector run (vector codec) as one plot of every
observation dimension over them."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from tokworld.envs import action_space
from tokworld.eval.media import write_gif
from tokworld.eval.plots import plot_dimensions
from tokworld.folders import write_json_atomic
from tokworld.planner import Planner, PlannerConfig
from tokworld.policy import Agent
from tokworld.returns import play_episodes
from tokworld.run import load_policy, load_run, load_tokenizer


def episode_media(out_json: str | Path, observation: str) -> dict[str, Path]:
    """The files `evaluate_run` writes beside `out_json` for a run reading `observation`
    ("frames" or "vector"), by their key in its summary."""
    stem = Path(out_json).with_suffix("")
    if observation == "vector":
        return {"plot": Path(f"{stem}_episodes.png")}
    return {"best_gif": Path(f"{stem}_best.gif"), "worst_gif": Path(f"{stem}_worst.gif")}


def evaluate_run(
    run: str | Path,
    env_id: str,
    episodes: int,
    out_json: str | Path,
    greedy: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
    progress: bool = True,
    plan: PlannerConfig | None = None,
    device: str = "cpu",
) -> dict:
    """Play `episodes` real episodes with the run's policy, or with a planner of config `plan`
    in the run's world model (no policy needed; `greedy` and `temperature` then unused), its
    networks on `device`; write the JSON and the files `episode_media` names: two GIFs, or for a
    vector run a plot of the observations."""
    if plan is None:
        tokenizer = load_tokenizer(run, device)
        policy = load_policy(run, action_space(env_id), device)
        agent = Agent(policy, tokenizer, greedy, temperature, seed=seed)
    else:
        agent = planning_agent(run, env_id, plan, seed, device)
        tokenizer = agent.tokenizer
    vector = tokenizer.observation == "vector"
    size = {} if vector else {"frame_size": tokenizer.config.frame_size}
    result = play_episodes(env_id, agent, episodes, seed=seed, progress=progress,
                           observation=tokenizer.observation, **size)  # fmt: skip
    media = episode_media(out_json, tokenizer.observation)
    if vector:
        best, worst = result.returns.max(), result.returns.min()
        lines = [
            (f"best episode (return {best:.4g})", result.best_frames, {"color": "C2"}),
            (f"worst episode (return {worst:.4g})", result.worst_frames, {"color": "C3"}),
        ]
        title = f"{env_id}: observations over the best and worst of {episodes} episodes"
        plot_dimensions(lines, media["plot"], title)
    else:
        write_gif(result.best_frames, media["best_gif"])
        write_gif(result.worst_frames, media["worst_gif"])
    summary = {
        **result.summary(),
        "run": str(run),
        "greedy": greedy if plan is None else None,
        "planner": None if plan is None else planner_summary(agent),
        "returns": result.returns.tolist(),
        **{key: str(path) for key, path in media.items()},
    }
    write_json_atomic(Path(out_json), summary)
    return summary


def planner_summary(planner: Planner) -> dict:
    """A planner's settings, its model's task and the sequences it imagines per row and step."""
    return {**asdict(planner.config), "task": planner.task_name, "rollouts": planner.rollouts}


def planning_agent(
    run: str | Path, env_id: str, config: PlannerConfig, seed: int = 0, device: str = "cpu"
) -> Planner:
    """A `Planner` in the run's world model (on `device`) for `env_id`, checked to act in its
    action space; the model's task for `env_id` where it was trained on several."""
    world_model, tokenizer = load_run(run, device)
    world_model.vocab.check_action_space(action_space(env_id), what=env_id)
    tasks = world_model.config.tasks or []
    task = tasks.index(env_id) if env_id in tasks else None
    return Planner(world_model, tokenizer, config, seed=seed, task=task)
