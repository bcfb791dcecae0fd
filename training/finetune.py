"""`finetune`: the online loop started from a pretrained run, or from scratch."""

from __future__ import annotations

from pathlib import Path

from tokworld.adapt import adapt_world_model
from tokworld.envs import action_space
from tokworld.errors import TokWorldError
from tokworld.run import load_run
from tokworld.training.online import Models, OnlineConfig, train_online


def finetune(
    cfg: OnlineConfig, out: str | Path, run: str | None = None, resume=False, progress=True
) -> dict:
    """The online loop in `out`, from the tokenizer and world model of `run` (or from scratch).

    From a pretrained run the world model's action slice is adapted to `cfg.env_id`'s action
    space (`tokworld.adapt`); everything else is kept.
    """
    models = Models()
    if run is not None:
        world_model, tokenizer = load_run(run)
        space = action_space(cfg.env_id)
        if tokenizer.config.frame_size != cfg.frame_size:
            raise TokWorldError(
                f"run {run} was trained on {tokenizer.config.frame_size}px frames, not "
                f"{cfg.frame_size}px"
            )
        adapted = adapt_world_model(world_model, space, cfg.seed, task=cfg.env_id)
        models = Models(tokenizer, adapted)
    source = {"run": None if run is None else str(run)}
    return train_online(cfg, out, models, resume=resume, progress=progress, source=source)
