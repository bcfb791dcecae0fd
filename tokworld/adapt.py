"""Fine-tuning surgery: a world model moved onto another environment's action space.

The embedding and head rows of the tokens both vocabularies share (`Vocabulary.shared_ids`:
frame codes, rewards and ends) are copied bit-identically, the rows of the new action slice are
initialised fresh, and every other weight is copied.
"""

from __future__ import annotations

import copy

import gymnasium as gym
import torch

from tokworld.model import TokWorldModel

ROWS = ("backbone.embed_tokens.weight", "head.weight")  # (vocab size, width) both


def adapt_world_model(model: TokWorldModel, action_space: gym.Space, seed: int = 0):
    """`model` for `action_space`: a new model whose vocabulary differs only in the action slice.

    Returns `model` itself when the action space is already its own.
    """
    old = model.vocab
    vocab = old.with_action_space(action_space, bins=old.action.bins)
    if vocab == old:
        return model
    config = copy.deepcopy(model.config)
    config.vocab = vocab.to_dict()
    torch.manual_seed(seed)
    new = TokWorldModel(config)
    old_ids, new_ids = old.shared_ids(vocab)
    theirs = model.state_dict()
    state = new.state_dict()
    with torch.no_grad():
        for name, tensor in state.items():
            if name in ROWS:
                tensor[new_ids] = theirs[name][old_ids].to(tensor.device)
            else:
                tensor.copy_(theirs[name])
    return new.to(model.device)
