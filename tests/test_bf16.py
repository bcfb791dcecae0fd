"""bf16 imagination (`ImaginationEngine(bf16=True)`, `--bf16`): every forward and the decoder
under bfloat16 autocast, close to float32, in every mode and through the command line."""

from __future__ import annotations

import json

import pytest
import torch
from one_forward import actions_of, greedy_rollout, model_of, recording, steps_of, vocab_of

from tokworld import sampling
from tokworld.cli import main
from tokworld.dream import DreamVectorEnv
from tokworld.errors import TokWorldError
from tokworld.imagine import ImaginationEngine
from tokworld.sampling import SamplingConfig


def _ring_precision(engine: ImaginationEngine):
    """The autocast dtype the engine's ring was written under (False: none)."""
    (key,) = engine.rings
    return key[-1]


@pytest.mark.parametrize("decoding", ["token", "parallel", "block"])
def test_bf16_imagination_runs_under_autocast_close_to_float32(decoding):
    model = model_of(vocab_of(), decoding)
    vocab = model.vocab
    full, (context, actions, _) = greedy_rollout(model, 3)
    decoded = []
    engine = ImaginationEngine(model, decoded.append, SamplingConfig(greedy=True), bf16=True)
    half = recording(engine)
    engine.start(context)
    outs = [engine.step(a) for a in actions]
    assert _ring_precision(engine) == torch.bfloat16
    assert all(logits.dtype == torch.bfloat16 for logits in half)
    # The decoder runs under autocast too (a callable that records what it is given).
    assert torch.is_tensor(decoded[0]) and len(decoded) == 1 + len(actions)
    # The first step reads the same tokens in both precisions: its logits agree to bf16's
    # precision (later steps may sample other tokens).
    torch.testing.assert_close(half[0].float(), full[0], atol=0.05, rtol=0.02)
    for out in outs:
        assert ((0 <= out.codes) & (out.codes < vocab.codebook_size)).all()
    # A restarted row is encoded under autocast too and joins the bf16 ring.
    engine.restart_rows(torch.tensor([1]), steps_of(vocab, 1, 2, seed=5))
    more = engine.step(actions_of(vocab, (2,), torch.Generator().manual_seed(3)))
    assert more.codes.shape == (2, vocab.tokens_per_frame)
    # A restored snapshot keeps its ring under bf16's key: the next start reuses it.
    engine.restore(engine.snapshot())
    assert _ring_precision(engine) == torch.bfloat16
    assert _ring_precision(engine) == torch.bfloat16


@pytest.mark.parametrize("decoding", ["token", "block"])
def test_a_world_model_held_in_bfloat16_imagines_close_to_float32(decoding):
    # As `from_pretrained(..., dtype=torch.bfloat16)` loads it: the ring's float mask meets
    # bfloat16 scores, which must not promote them to float32.
    model = model_of(vocab_of(), decoding)
    full, (context, actions, _) = greedy_rollout(model, 2)
    engine = ImaginationEngine(model.to(torch.bfloat16), sampling=SamplingConfig(greedy=True))
    half = recording(engine)
    engine.start(context)
    outs = [engine.step(a) for a in actions]
    assert all(logits.dtype == torch.bfloat16 for logits in half) and len(outs) == 2
    torch.testing.assert_close(half[0].float(), full[0], atol=0.05, rtol=0.02)


def test_without_bf16_the_callers_precision_applies():
    model = model_of(vocab_of(), "block")
    context = steps_of(model.vocab, 2, 2)
    engine = ImaginationEngine(model)
    engine.start(context)
    assert _ring_precision(engine) is False
    with torch.autocast("cpu", torch.bfloat16):  # as `bench imagine --bf16` times IRIS and us
        engine.start(context)
    assert _ring_precision(engine) == torch.bfloat16


def test_bf16_on_a_gpu_without_bfloat16_is_one_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    with pytest.raises(TokWorldError, match="bf16 needs a GPU with bfloat16 support"):
        sampling.check_bf16("cuda")


def test_bf16_through_the_command_line_the_planner_and_the_dream_env(
    tiny_run, minigrid_dataset, tmp_path
):
    fidelity = tmp_path / "fidelity.json"
    assert main(["eval-model", "--run", str(tiny_run), "--context", "2", "--horizon", "2",
                 "--windows", "2", "--bf16", "--json", str(fidelity)]) == 0  # fmt: skip
    result = json.loads(fidelity.read_text())
    assert result["bf16"] is True and len(result["per_step"]["psnr_vs_real"]) == 2
    out = tmp_path / "imagined"
    assert main(["imagine", "--run", str(tiny_run), "--dataset", minigrid_dataset,
                 "--episodes", "2", "--steps", "2", "--context", "2", "--bf16",
                 "--out", str(out)]) == 0  # fmt: skip
    assert (out / "grid.png").exists()
    plan = tmp_path / "plan.json"  # planning in the real env, imagining under bf16
    assert main(["eval", "--run", str(tiny_run), "--env", "MiniGrid-Empty-5x5-v0",
                 "--episodes", "1", "--json", str(plan), "--plan", "--plan-candidates", "2",
                 "--plan-horizon", "2", "--plan-bf16"]) == 0  # fmt: skip
    assert json.loads(plan.read_text())["planner"]["bf16"] is True
    env = DreamVectorEnv(str(tiny_run), minigrid_dataset, num_envs=2, context_steps=2, bf16=True)
    env.reset(seed=0)
    obs, *_ = env.step([0, 1])
    assert obs.shape == (2, 64, 64, 3) and _ring_precision(env.engine) == torch.bfloat16
