"""How imagination draws tokens (`tokworld.sampling`) and the event calibration it can apply
(`training.calibration`): the fitted shift, its bias on the logits, the command line."""

from __future__ import annotations

import json

import pytest
import torch
from one_forward import actions_of, model_of, steps_of, vocab_of

from tokworld.cli import main
from tokworld.dream import DreamVectorEnv
from tokworld.errors import TokWorldError
from tokworld.imagine import ImaginationEngine
from tokworld.sampling import SamplingConfig, draw
from tokworld.tokenizer import Kind
from tokworld.training.calibration import event_log_odds, solve_shift

MODES = ["token", "parallel", "block"]


def test_top_k_keeps_the_k_best_of_each_slot():
    # (B, Q, V) logits, as one-forward steps sample them: top 1 is greedy in every slot, and
    # top 2 draws only each slot's own two best.
    logits = torch.randn(3, 5, 40, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    drawn = draw(logits, SamplingConfig(temperature=5.0, top_k=1), g)
    assert torch.equal(drawn, logits.argmax(-1, keepdim=True))
    best = logits.topk(2, dim=-1).indices
    draws = torch.cat([draw(logits, SamplingConfig(temperature=50.0, top_k=2), g)
                       for _ in range(200)], -1)  # fmt: skip
    for row, slot in torch.cartesian_prod(torch.arange(3), torch.arange(5)).tolist():
        assert set(draws[row, slot].tolist()) == set(best[row, slot].tolist())


def test_the_fitted_shift_matches_the_mean_event_probability_to_the_rate():
    log_odds = torch.randn(5000, generator=torch.Generator().manual_seed(0)).double() + 2.0
    shift = solve_shift(log_odds, 0.01)
    assert torch.sigmoid(log_odds - shift).mean().item() == pytest.approx(0.01, abs=1e-9)
    assert solve_shift(log_odds, 0.0) == 0.0 and solve_shift(log_odds[:0], 0.5) == 0.0


def test_event_log_odds_are_those_of_the_softmax_over_the_kinds_ids():
    model = model_of(vocab_of(), "token")
    vocab = model.vocab
    logits = torch.randn(7, vocab.size, generator=torch.Generator().manual_seed(0))
    part = vocab.id_slice(Kind.REWARD)
    p = logits[:, part].softmax(-1)
    event = vocab.is_event(torch.arange(part.start, part.stop))
    expected = torch.log(p[:, event].sum(-1) / p[:, ~event].sum(-1))
    got = event_log_odds(model, logits, Kind.REWARD)
    torch.testing.assert_close(got.float(), expected, atol=1e-5, rtol=1e-5)


def test_the_event_bias_lowers_only_event_ids():
    model = model_of(vocab_of(), "block")
    vocab = model.vocab
    with pytest.raises(TokWorldError, match="no fitted event calibration"):
        ImaginationEngine(model, sampling=SamplingConfig(calibrated=True))
    model.config.event_shift = [1.5, 0.5]
    bias = model.event_bias()
    ids = torch.arange(vocab.size)
    reward = vocab.id_slice(Kind.REWARD)
    rewarded = vocab.is_event(ids) & (ids >= reward.start) & (ids < reward.stop)
    terminal = vocab.is_event(ids) & ~rewarded
    assert (bias[rewarded] == -1.5).all() and (bias[terminal] == -0.5).all()
    assert rewarded.sum() == vocab.num_ids(Kind.REWARD) - 1 and terminal.sum() == 1
    assert (bias[~vocab.is_event(ids)] == 0).all()
    model.config.event_shift = [1.5]
    with pytest.raises(TokWorldError, match=r"event_shift must hold 2 numbers \(reward, end\)"):
        model.event_bias()


@pytest.mark.parametrize("decoding", MODES)
def test_calibrated_sampling_moves_the_odds_of_rewards_and_ends(decoding):
    model = model_of(vocab_of(), decoding)
    vocab = model.vocab
    actions = actions_of(vocab, (6, 4), torch.Generator().manual_seed(2))
    model.config.event_shift = [0.0, 0.0]
    engine = ImaginationEngine(model, sampling=SamplingConfig(calibrated=True), seed=1)
    for shift, events in ((40.0, False), (-40.0, True)):
        model.config.event_shift = [shift, shift]  # refitted: the next start samples with it
        engine.start(steps_of(vocab, 4, 2))
        outs = [engine.step(a) for a in actions]
        assert all(((o.reward != 0) == events).all() for o in outs)
        assert all((o.terminated == events).all() for o in outs)


def test_training_fits_the_calibration_and_the_command_line_samples_with_it(
    tiny_run, minigrid_dataset, tmp_path
):
    config = json.loads((tiny_run / "world_model" / "config.json").read_text())
    shift = config["event_shift"]
    assert len(shift) == 2 and all(isinstance(s, float) for s in shift)
    metrics = json.loads((tiny_run / "metrics.json").read_text())["world_model"]
    assert metrics["reward_event_shift"] == shift[0]
    assert metrics["fit_steps"] > 0 and {"reward_fit_events", "end_fit_events"} <= set(metrics)
    # On the held-out episodes: the rate, and the mean predicted probability raw and calibrated.
    for kind, fitted in zip(("reward", "end"), shift, strict=True):
        rate, p = metrics[f"eval/{kind}_event_rate"], metrics[f"eval/{kind}_event_p"]
        calibrated = metrics[f"eval/{kind}_event_p_calibrated"]
        assert 0 <= rate <= 1 and 0 < p < 1 and (calibrated < p) == (fitted > 0)
    fidelity = tmp_path / "fidelity.json"
    assert main(["eval-model", "--run", str(tiny_run), "--context", "2", "--horizon", "2",
                 "--windows", "2", "--calibrated", "--json", str(fidelity)]) == 0  # fmt: skip
    assert json.loads(fidelity.read_text())["sampling"]["calibrated"] is True
    out = tmp_path / "imagined"
    assert main(["imagine", "--run", str(tiny_run), "--dataset", minigrid_dataset,
                 "--episodes", "2", "--steps", "2", "--calibrated",
                 "--out", str(out)]) == 0  # fmt: skip
    env = DreamVectorEnv(str(tiny_run), minigrid_dataset, num_envs=2, calibrated=True)
    env.reset(seed=0)
    assert env.engine.sampling.calibrated and env.step([0, 1])[0].shape == (2, 64, 64, 3)
