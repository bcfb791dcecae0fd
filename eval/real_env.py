"""A run's policy in the real environment: returns as JSON, the best and worst episode as GIFs."""

from __future__ import annotations

from pathlib import Path

from tokworld.envs import action_space
from tokworld.eval.media import write_gif
from tokworld.folders import write_json_atomic
from tokworld.policy import Agent
from tokworld.returns import play_episodes
from tokworld.run import load_policy, load_tokenizer


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
    tokenizer = load_tokenizer(run)
    policy = load_policy(run, action_space(env_id))
    agent = Agent(policy, tokenizer, greedy, temperature, seed=seed)
    result = play_episodes(env_id, agent, episodes, seed=seed, progress=progress,
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
    write_json_atomic(out_json, summary)
    return summary
