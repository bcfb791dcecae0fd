"""Event calibration: the odds of a rare reward or end that the balanced loss adds, measured.

`event_balance` b weighs each rare event (a nonzero reward, a terminal end) about
1 + b / ((1 - b) f) times an ordinary step, for an event rate f, so a trained model's odds of
an event are inflated by up to that factor (on Breakout, rate 0.009, its mean predicted
probability of a reward was 0.28-0.36). Oversampling windows with events (`event_share`)
inflates them further. `fit_event_shift` measures, on windows drawn uniformly from the training
data, the log-odds shift per event kind that brings the model's mean predicted probability of an
event back to the events' rate there; it is saved as `TokWorldConfig.event_shift`, and
imagination subtracts it from the event ids' logits when its sampling is `calibrated`
(`SamplingConfig`), as long-tail learning's logit adjustment does.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from tokworld.data.windows import WindowDataset
from tokworld.model import EVENT_KINDS, TokWorldModel


def event_log_odds(model: TokWorldModel, logits: torch.Tensor, kind) -> torch.Tensor:
    """(..., V) logits at `kind`'s slots -> (...) log-odds of an event of that kind."""
    vocab = model.vocab
    ids = torch.arange(vocab.size, device=logits.device)
    part = vocab.id_slice(kind)
    mine = (ids >= part.start) & (ids < part.stop)
    event = vocab.is_event(ids) & mine
    logits = logits.double()
    events = logits.masked_fill(~event, float("-inf")).logsumexp(-1)
    others = logits.masked_fill(~(mine & ~event), float("-inf")).logsumexp(-1)
    return events - others


def solve_shift(log_odds: torch.Tensor, rate: float, iterations: int = 60) -> float:
    """The shift s with mean(sigmoid(log_odds - s)) == rate (bisection); 0 where the rate is 0
    or 1 (nothing to match: the data holds no event, or nothing else)."""
    if not 0 < rate < 1 or log_odds.numel() == 0:
        return 0.0
    low, high = -50.0, 50.0
    for _ in range(iterations):
        mid = (low + high) / 2
        if torch.sigmoid(log_odds - mid).mean().item() > rate:
            low = mid
        else:
            high = mid
    return (low + high) / 2


@torch.no_grad()
def fit_event_shift(
    model: TokWorldModel,
    windows: WindowDataset,
    limit: int = 512,
    batch_size: int = 32,
    seed: int = 0,
) -> list[float]:
    """Per event kind (reward, end), the log-odds shift that matches the model's mean predicted
    probability of an event to the events' rate on up to `limit` windows of `windows` drawn
    uniformly (real steps only)."""
    rows = np.random.default_rng(seed).permutation(len(windows))[:limit]
    loader = DataLoader(Subset(windows, rows.tolist()), batch_size=batch_size)
    training = model.training
    model.eval()
    odds = {kind: [] for kind in EVENT_KINDS}
    happened = {kind: [] for kind in EVENT_KINDS}
    for batch in loader:
        batch = {k: v.to(model.device) for k, v in batch.items()}
        logits, targets, valid, kinds = model.window_predictions(batch)
        for kind in EVENT_KINDS:
            at = valid & (kinds == int(kind))
            odds[kind].append(event_log_odds(model, logits[at], kind))
            happened[kind].append(model.vocab.is_event(targets[at]))
    model.train(training)
    shifts = []
    for kind in EVENT_KINDS:
        rate = torch.cat(happened[kind]).double().mean().item() if happened[kind] else 0.0
        shifts.append(solve_shift(torch.cat(odds[kind]), rate) if odds[kind] else 0.0)
    return shifts
