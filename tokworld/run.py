"""A run directory: `tokenizer/`, `world_model/`, `policy/`, `train_state/`, `metrics.json`."""

from __future__ import annotations

from pathlib import Path

import torch

from tokworld.errors import TokWorldError
from tokworld.model import TokWorldModel
from tokworld.policy import ActorCritic
from tokworld.tokenizer.observation import load_observation_tokenizer


def default_device() -> str:
    """The GPU if torch sees one, else the CPU: where the training loops run (accelerate picks
    the same) and the default device of the evaluation commands."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: str | torch.device) -> torch.device:
    """`device` as a torch.device, or a TokWorldError saying why it cannot be used here."""
    try:
        found = torch.device(device)
    except (RuntimeError, TypeError):
        raise TokWorldError(f"unknown device {device!r}: use cpu, cuda or cuda:N") from None
    if found.type == "cuda" and not torch.cuda.is_available():
        raise TokWorldError(f"device {device!r}: torch sees no CUDA device here")
    if found.type == "cuda" and (found.index or 0) >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise TokWorldError(f"device {device!r}: torch sees {count} CUDA device(s) here")
    return found


def _model_dir(run: str | Path, name: str) -> Path:
    path = Path(run) / name
    if not (path / "config.json").exists() or not (path / "model.safetensors").exists():
        raise TokWorldError(f"run {run} has no {name}/ (config.json + model.safetensors)")
    return path


def load_world_model(run: str | Path, device: str | torch.device = "cpu") -> TokWorldModel:
    """The run's world model, in eval mode."""
    path = _model_dir(run, "world_model")
    try:
        model = TokWorldModel.from_pretrained(str(path))
    except (OSError, ValueError, RuntimeError) as e:
        raise TokWorldError(f"cannot load the world model of {run}: {e}") from None
    return model.to(check_device(device)).eval()


def load_tokenizer(run: str | Path, device: str | torch.device = "cpu"):
    """The run's observation tokenizer (frame tokenizer or vector codec), in eval mode."""
    tokenizer = load_observation_tokenizer(_model_dir(run, "tokenizer"))
    return tokenizer.to(check_device(device)).eval()


def load_run(run: str | Path, device: str | torch.device = "cpu"):
    """(world model, tokenizer) of a run, checked to agree on the frame codes."""
    world_model, tokenizer = load_world_model(run, device), load_tokenizer(run, device)
    vocab = world_model.vocab
    if (tokenizer.codebook_size, tokenizer.tokens_per_frame) != (
        vocab.codebook_size,
        vocab.tokens_per_frame,
    ):
        raise TokWorldError(
            f"run {run}: the tokenizer makes {tokenizer.tokens_per_frame} codes of "
            f"{tokenizer.codebook_size} but the world model expects {vocab.tokens_per_frame} "
            f"of {vocab.codebook_size}"
        )
    return world_model, tokenizer


def check_observations(run: str | Path, tokenizer, meta, what: str = "the dataset") -> None:
    """Raise TokWorldError unless the run's `tokenizer` reads the observations `meta` (a
    `TrajectoryMeta`) describes: frames of its size, or vectors of its length."""
    kind = tokenizer.observation
    if meta.observation != kind:
        raise TokWorldError(
            f"run {run} reads {kind} observations but {what} has {meta.observation}"
        )
    want = (tokenizer.config.dims,) if kind == "vector" else (tokenizer.config.frame_size,) * 2
    have = meta.observation_shape[: len(want)]
    if have != want:
        raise TokWorldError(
            f"run {run} reads {kind} observations of shape {want} but {what}'s are {have}"
        )


def load_policy(run: str | Path, space=None, device: str | torch.device = "cpu"):
    """The run's actor-critic (`RUN/policy`), in eval mode; with `space` (a gymnasium action
    space), checked to act in it."""
    policy = ActorCritic.from_pretrained(
        _model_dir(run, "policy"), device=str(check_device(device))
    )
    codec = policy.codec
    if space is not None and not codec.matches(space):
        raise TokWorldError(
            f"the policy of {run} acts in {codec.kind} {list(codec.sizes)}, not in {space}"
        )
    return policy
