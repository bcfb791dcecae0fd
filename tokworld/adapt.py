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
TASKS = "task_embedding.weight"  # (tasks, width)


def adapt_world_model(
    model: TokWorldModel, action_space: gym.Space, seed: int = 0, task: str | None = None
):
    """`model` for `action_space` (and, when it has task identities, the task `task`): a new
    model whose vocabulary differs only in the action slice and whose task table has a fresh
    row (zeros: no change to the inputs yet) for a task it has not seen.

    Returns `model` itself when nothing changes.
    """
    old = model.vocab
    vocab = old.with_action_space(action_space, bins=old.action.bins)
    tasks = list(model.config.tasks or [])
    new_task = bool(tasks) and task is not None and task not in tasks
    if vocab == old and not new_task:
        return model
    config = copy.deepcopy(model.config)
    config.vocab = vocab.to_dict()
    if new_task:
        config.tasks = [*tasks, task]
    torch.manual_seed(seed)
    new = TokWorldModel(config)
    old_ids, new_ids = old.shared_ids(vocab)
    theirs = model.state_dict()
    state = new.state_dict()
    with torch.no_grad():
        for name, tensor in state.items():
            if name in ROWS:
                tensor[new_ids] = theirs[name][old_ids].to(tensor.device)
            elif name == TASKS:
                tensor[: len(tasks)] = theirs[name]
            else:
                tensor.copy_(theirs[name])
    return new.to(model.device)
