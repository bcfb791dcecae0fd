"""tokworld: a token world model. Frames, actions, rewards and ends in one vocabulary.

The public API is imported on first use (PEP 562), so `import tokworld.tokenizer` loads neither
transformers nor the environments.
"""

from __future__ import annotations

import importlib

# Public name -> the module that defines it.
_EXPORTS = {
    "TokWorldError": "tokworld.errors",
    "Vocabulary": "tokworld.tokenizer.vocab",
    "Kind": "tokworld.tokenizer.vocab",
    "ActionCodec": "tokworld.tokenizer.codecs",
    "RewardCodec": "tokworld.tokenizer.codecs",
    "FrameTokenizer": "tokworld.tokenizer.frame",
    "FrameTokenizerConfig": "tokworld.tokenizer.frame",
    "TokWorldConfig": "tokworld.config",
    "TokWorldModel": "tokworld.model",
    "ImaginationEngine": "tokworld.imagine",
    "SamplingConfig": "tokworld.sampling",
    "DreamVectorEnv": "tokworld.dream",
    "ActorCritic": "tokworld.policy",
    "Agent": "tokworld.policy",
    "PolicyConfig": "tokworld.policy",
    "adapt_world_model": "tokworld.adapt",
    "load_run": "tokworld.run",
    "load_policy": "tokworld.run",
    "make_env": "tokworld.envs",
    "play_episodes": "tokworld.returns",
    "TrajectoryMeta": "tokworld.data.format",
    "load_trajectories": "tokworld.data.format",
    "validate_trajectories": "tokworld.data.validate",
    "write_trajectories": "tokworld.data.format",
    "WindowDataset": "tokworld.data.windows",
    "RealContext": "tokworld.data.windows",
    "collect": "tokworld.data.collect",
    "CollectSummary": "tokworld.data.collect",
    "import_dataset": "tokworld.data.importers",
    "push_dataset": "tokworld.data.hub",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tokworld' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
