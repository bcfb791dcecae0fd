"""A run's policy in the real environment: returns as JSON; the best and worst episode as GIFs,
or for a vector run (vector codec) as one plot of every observation dimension over them."""

from __future__ import annotations

from pathlib import Path

from tokworld.envs import action_space
from tokworld.eval.media import write_gif
from tokworld.eval.plots import plot_dimensions
from tokworld.folders import write_json_atomic
from tokworld.policy import Agent
from tokworld.returns import play_episodes
from tokworld.run import load_policy, load_tokenizer


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
) -> dict:
    """Play `episodes` real episodes with the run's policy; write the JSON and the files
    `episode_media` names: two GIFs, or for a vector run a plot of the observations."""
    tokenizer = load_tokenizer(run)
    policy = load_policy(run, action_space(env_id))
    agent = Agent(policy, tokenizer, greedy, temperature, seed=seed)
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
        "greedy": greedy,
        "returns": result.returns.tolist(),
        **{key: str(path) for key, path in media.items()},
    }
    write_json_atomic(Path(out_json), summary)
    return summary
