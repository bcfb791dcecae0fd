"""Event calibration: the odds of a rare reward or end that the balanced loss adds, measured.

`event_balance` b weighs each rare event (a nonzero reward, a terminal end) about
1 + b / ((1 - b) f) times an ordinary step, for an event rate f, so a trained model's odds of
an event are inflated by up to that factor (on Breakout, rate 0.009, its mean predicted
probability of a reward was 0.28-0.36). Oversampling windows with events (`event_share`)
inflates them further. `fit_event_shift` measures, on windows that tile the training episodes
(each step once), the log-odds shift per event kind that brings the model's mean predicted
probability of an event back to the events' rate there; it is saved as
`TokWorldConfig.event_shift`, and imagination subtracts it from the event ids' logits when its
sampling is `calibrated` (`SamplingConfig`), as long-tail learning's logit adjustment does.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from tokworld.model import EVENT_KINDS, TokWorldModel

MIN_EVENTS = 10  # fewer events of a kind in the fit's steps: their rate is too uncertain


def event_log_odds(model: TokWorldModel, logits: torch.Tensor, kind) -> torch.Tensor:
    """(..., V) logits at `kind`'s slots -> (...) log-odds of an event of that kind."""
    part = model.vocab.id_slice(kind)
    event = model.vocab.is_event(torch.arange(part.start, part.stop, device=logits.device))
    logits = logits[..., part].double()
    return logits[..., event].logsumexp(-1) - logits[..., ~event].logsumexp(-1)


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
def _event_odds(model: TokWorldModel, windows: Dataset, batch_size: int) -> dict:
    """Per event kind: the log-odds of an event the model predicts at each real step of
    `windows`, and whether one happened there."""
    training = model.training
    model.eval()
    odds = {kind: [] for kind in EVENT_KINDS}
    happened = {kind: [] for kind in EVENT_KINDS}
    try:
        for batch in DataLoader(windows, batch_size=batch_size):
            batch = {k: v.to(model.device) for k, v in batch.items()}
            logits, targets, valid, kinds = model.window_predictions(batch)
            for kind in EVENT_KINDS:
                at = valid & (kinds == int(kind))
                odds[kind].append(event_log_odds(model, logits[at], kind))
                happened[kind].append(model.vocab.is_event(targets[at]))
    finally:
        model.train(training)
    return {kind: (torch.cat(odds[kind]), torch.cat(happened[kind]).double()) for kind in odds}


def fit_event_shift(
    model: TokWorldModel,
    windows: Dataset,
    limit: int = 2048,
    min_events: int = MIN_EVENTS,
    batch_size: int = 32,
    seed: int = 0,
) -> tuple[list[float], dict]:
    """Per event kind (reward, end), the log-odds shift that matches the model's mean predicted
    probability of an event to the events' rate, on up to `limit` of `windows` drawn at random
    (real steps only), and what it was fitted on (`fit_steps`, `<kind>_fit_events`).

    `windows` should hold each step once (`world_model.tiled_windows`): with a window at every
    start, an episode's last step, where its end is, lies in one window and a middle step in
    `length`, and ends are undercounted that many times. A kind seen fewer than `min_events`
    times keeps the model's current shift (a pretrained model's, while fine-tuning starts on
    little data), or gets none (0).
    """
    current = model.config.event_shift or [0.0] * len(EVENT_KINDS)
    rows = np.random.default_rng(seed).permutation(len(windows))[:limit]
    odds = _event_odds(model, Subset(windows, rows.tolist()), batch_size)
    shifts, fit = [], {"fit_steps": len(odds[EVENT_KINDS[0]][1])}
    for (kind, (lo, happened)), kept in zip(odds.items(), current, strict=True):
        events = int(happened.sum().item())
        fit[f"{kind.name.lower()}_fit_events"] = events
        shifts.append(solve_shift(lo, happened.mean().item()) if events >= min_events else kept)
    return shifts, fit


def event_rates(model: TokWorldModel, windows: Dataset, batch_size: int = 32) -> dict:
    """Per event kind on every window of `windows` (e.g. held-out ones): the events' rate, the
    model's mean predicted probability of one, and that mean once calibrated (`event_shift`)."""
    result = {}
    shifts = model.config.event_shift or [0.0] * len(EVENT_KINDS)
    for (kind, (lo, happened)), shift in zip(_event_odds(model, windows, batch_size).items(),
                                             shifts, strict=True):  # fmt: skip
        if not happened.numel():
            continue  # no step of this kind (windows of no real step)
        name = kind.name.lower()
        result[f"{name}_event_rate"] = happened.mean().item()
        result[f"{name}_event_p"] = torch.sigmoid(lo).mean().item()
        result[f"{name}_event_p_calibrated"] = torch.sigmoid(lo - shift).mean().item()
    return result
