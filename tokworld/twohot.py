"""Two-hot symlog regression (DreamerV3): a scalar as a distribution over fixed bins.

A target x becomes symlog(x), placed on `bins` evenly spaced points over [-20, 20] (symlog
space, so about +-5e8 in x) as two-hot weights: the two neighbouring points share it in
proportion to their closeness, so the expected point is exactly symlog(x). A network predicts
logits over the points and learns them by cross-entropy to those weights; its value is the
symexp of the expected point. Unlike a squared error on x, the loss and its gradients do not
grow with the scale of x, so one learning rate suits returns of 1 and of -1,000 alike.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tokworld.tokenizer.codecs import symexp, symlog

LIMIT = 20.0


def points(bins: int, device=None) -> torch.Tensor:
    """The `bins` points over [-LIMIT, LIMIT] in symlog space."""
    return torch.linspace(-LIMIT, LIMIT, bins, device=device)


def encode(x: torch.Tensor, bins: int) -> torch.Tensor:
    """Scalars (...) -> two-hot weights (..., bins) around symlog(x), clipped to the range."""
    y = symlog(x.float()).clamp(-LIMIT, LIMIT)
    position = (y + LIMIT) / (2 * LIMIT) * (bins - 1)
    below = position.floor().clamp(max=bins - 2).long()
    upper = (position - below).unsqueeze(-1)
    weights = torch.zeros(*x.shape, bins, device=x.device)
    weights.scatter_(-1, below.unsqueeze(-1), 1 - upper)
    return weights.scatter_(-1, below.unsqueeze(-1) + 1, upper)


def decode(logits: torch.Tensor) -> torch.Tensor:
    """Logits (..., bins) -> the symexp of the expected point (...)."""
    probs = logits.float().softmax(-1)
    return symexp(probs @ points(logits.shape[-1], logits.device))


def loss(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of logits (..., bins) to the two-hot weights of targets x (...): (...)."""
    target = encode(x, logits.shape[-1])
    return -(target * F.log_softmax(logits.float(), -1)).sum(-1)
