"""tokworld: a token world model. Frames, actions, rewards and ends in one vocabulary."""

from tokworld.collect import CollectSummary, collect
from tokworld.data import (
    TrajectoryMeta,
    load_trajectories,
    validate_trajectories,
    write_trajectories,
)
from tokworld.envs import make_env
from tokworld.errors import TokWorldError
from tokworld.finetune_cli import adapt_world_model
from tokworld.policy import ActorCritic, Agent, PolicyConfig
from tokworld.sampler import WindowDataset
from tokworld.tokenizer import ActionCodec, Kind, RewardCodec, Vocabulary

__all__ = [
    "ActionCodec",
    "ActorCritic",
    "Agent",
    "CollectSummary",
    "Kind",
    "PolicyConfig",
    "RewardCodec",
    "TokWorldError",
    "TrajectoryMeta",
    "Vocabulary",
    "WindowDataset",
    "adapt_world_model",
    "collect",
    "load_trajectories",
    "make_env",
    "validate_trajectories",
    "write_trajectories",
]
