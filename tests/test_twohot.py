"""Two-hot symlog regression and the critic that uses it (`PolicyConfig.value_bins`)."""

from __future__ import annotations

import gymnasium as gym
import pytest
import torch

from tokworld import twohot
from tokworld.policy import ActorCritic, PolicyConfig
from tokworld.tokenizer.codecs import ActionCodec, symexp


def test_two_hot_weights_round_trip_and_sit_on_the_two_neighbours():
    x = torch.tensor([-1234.5, -3.7, 0.0, 0.5, 1e3, 1e12])
    weights = twohot.encode(x, 255)
    torch.testing.assert_close(weights.sum(-1), torch.ones(6))
    assert ((weights > 0).sum(-1) <= 2).all()
    nonzero = [w.nonzero().flatten() for w in weights]
    assert all(len(i) == 1 or i[1] - i[0] == 1 for i in nonzero)  # neighbours only
    decoded = twohot.decode(weights.clamp(min=1e-30).log())
    torch.testing.assert_close(decoded[:5], x[:5], rtol=1e-4, atol=1e-5)
    assert decoded[5] == pytest.approx(symexp(torch.tensor(20.0)).item(), rel=1e-4)


def _fit(value_bins: int, target: float, steps: int) -> float:
    """Fit a fresh critic's value on fixed inputs to `target` by its own loss; the last value."""
    torch.manual_seed(0)
    codec = ActionCodec.from_space(gym.spaces.Discrete(3))
    cfg = PolicyConfig.preset("tiny", codec, "tokens", codebook_size=64, value_bins=value_bins)
    policy = ActorCritic(cfg)
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-3)
    codes = torch.randint(0, 64, (8, 4, 16))
    for _ in range(steps):
        out = policy(codes)
        goal = torch.full_like(out.value, target)
        if value_bins:
            loss = twohot.loss(out.value_logits, goal).mean()
        else:
            loss = 0.5 * (out.value - goal).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return policy(codes).value.mean().item()


def test_a_two_hot_critic_learns_a_large_return_that_a_scalar_one_is_still_far_from():
    """Returns in the hundreds (Pendulum): the squared error's head moves at Adam's pace, a few
    thousandths per step, while two-hot logits reach the scale in the same steps."""
    assert _fit(0, 1.0, 150) == pytest.approx(1.0, abs=0.1)  # the scalar head fits small ones
    assert _fit(0, -500.0, 300) > -100
    assert _fit(255, -500.0, 300) == pytest.approx(-500.0, rel=0.1)


def test_a_two_hot_critic_starts_at_zero_and_saves_its_bins(tmp_path):
    codec = ActionCodec.from_space(gym.spaces.Discrete(3))
    cfg = PolicyConfig.preset("tiny", codec, "tokens", codebook_size=64, value_bins=31)
    policy = ActorCritic(cfg)
    codes = torch.randint(0, 64, (2, 3, 16))
    out = policy(codes)
    assert out.value_logits.shape == (2, 3, 31) and out.value.abs().max() < 1e-6
    assert policy.step(codes[:, 0]).value_logits.shape == (2, 31)
    policy.save_pretrained(tmp_path / "policy")
    loaded = ActorCritic.from_pretrained(tmp_path / "policy")
    assert loaded.config.value_bins == 31
    assert (
        ActorCritic(PolicyConfig.preset("tiny", codec, "tokens")).step(codes[:, 0]).value_logits
        is None
    )
