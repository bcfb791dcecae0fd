"""`finetune`: the online loop started from a pretrained run, or from scratch."""

from __future__ import annotations

from pathlib import Path

from tokworld.adapt import adapt_world_model
from tokworld.envs import action_space, make_env
from tokworld.errors import TokWorldError
from tokworld.run import load_run
from tokworld.training.online import Models, train_online
from tokworld.training.online_config import OnlineConfig


def finetune(
    cfg: OnlineConfig, out: str | Path, run: str | None = None, resume=False, progress=True
) -> dict:
    """The online loop in `out`, from the tokenizer and world model of `run` (or from scratch).

    From a pretrained run the world model's action slice is adapted to `cfg.env_id`'s action
    space (`tokworld.adapt`); everything else is kept, the observation tokenizer included, so the
    new env must be observed the same way (frames of the run's size, or vectors of its length).
    """
    models = Models()
    if run is not None:
        world_model, tokenizer = load_run(run)
        space = action_space(cfg.env_id)
        _check_observations(run, tokenizer, cfg)
        adapted = adapt_world_model(world_model, space, cfg.seed, task=cfg.env_id)
        models = Models(tokenizer, adapted)
    source = {"run": None if run is None else str(run)}
    return train_online(cfg, out, models, resume=resume, progress=progress, source=source)


def _check_observations(run: str, tokenizer, cfg: OnlineConfig) -> None:
    """Raise TokWorldError unless `cfg.env_id` can be observed as `run`'s tokenizer reads."""
    kind = tokenizer.observation
    if cfg.observation not in ("auto", kind):
        raise TokWorldError(f"run {run} reads {kind} observations, not {cfg.observation}")
    if kind == "frames":
        if tokenizer.config.frame_size != cfg.frame_size:
            raise TokWorldError(
                f"run {run} was trained on {tokenizer.config.frame_size}px frames, not "
                f"{cfg.frame_size}px"
            )
        return
    env = make_env(cfg.env_id, observation="vector")  # one clear line if it has no flat Box
    dims = env.observation_space.shape[0]
    env.close()
    if dims != tokenizer.config.dims:
        raise TokWorldError(
            f"run {run} reads {tokenizer.config.dims}-dimensional vector observations, "
            f"{cfg.env_id} gives {dims}"
        )
