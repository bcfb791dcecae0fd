"""The online loop (resume after a kill), fine-tuning onto a new action space, real evaluation."""

from __future__ import annotations

import json
from dataclasses import replace

import gymnasium as gym
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tokworld.adapt import adapt_world_model
from tokworld.cli import main
from tokworld.config import ModelChoices, TokWorldConfig
from tokworld.eval.real_env import evaluate_run
from tokworld.model import TokWorldModel
from tokworld.planner import PlannerConfig
from tokworld.returns import human_normalized
from tokworld.tokenizer.vocab import Kind, Vocabulary
from tokworld.training import online
from tokworld.training.imagination import ImaginationConfig
from tokworld.training.online import run_dataset, train_online
from tokworld.training.online_config import OnlineConfig

ENV = "MiniGrid-Empty-5x5-v0"
CONFIG = OnlineConfig(
    env_id=ENV,
    env_steps=60,
    initial_steps=40,
    steps_per_epoch=20,
    preset="tiny",
    tokenizer_steps=2,
    tokenizer_batch_size=8,
    model=ModelChoices(codebook_size=32),  # not the tiny preset's 64
    world_model_steps=2,
    world_model_batch_size=4,
    imagination=ImaginationConfig(steps=2, batch_size=4, horizon=3, context_steps=2),
    eval_episodes=2,
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """An uninterrupted tiny online run of two epochs: (directory, metrics)."""
    out = tmp_path_factory.mktemp("online") / "run"
    return out, train_online(CONFIG, out, progress=False)


def _weights(run_dir) -> dict[str, torch.Tensor]:
    found = {}
    for name in ("tokenizer", "world_model", "policy"):
        for key, value in load_file(str(run_dir / name / "model.safetensors")).items():
            found[f"{name}.{key}"] = value
    state = run_dir / "train_state" / "online" / "policy_state" / "optimizer.safetensors"
    found.update({f"optimizer.{k}": v for k, v in load_file(str(state)).items()})
    return found


def test_two_epochs_write_models_data_and_a_learning_curve(run):
    out, metrics = run
    assert CONFIG.epochs == 2 and metrics["epochs"] == 2
    tokenizer = json.loads((out / "tokenizer" / "config.json").read_text())
    world_model = json.loads((out / "world_model" / "config.json").read_text())
    assert tokenizer["codebook_size"] == world_model["vocab"]["codebook_size"] == 32
    assert metrics["env_steps"] == 60 == len(run_dataset(out))
    assert [e["env_steps"] for e in metrics["learning_curve"]] == [40, 60]
    assert sorted(p.name for p in (out / "data").iterdir()) == ["chunk_000", "chunk_001"]
    history = metrics["history"]
    assert history[1]["policy"]["steps"] == 4  # imagination steps accumulate over epochs
    assert set(history[1]) >= {"collect", "tokenizer", "world_model", "policy", "eval"}
    episodes = run_dataset(out).with_format("numpy")["episode_index"]
    assert (np.diff(episodes) >= 0).all()  # chunks never merge two episodes


def test_resume_after_a_kill_matches_an_uninterrupted_run(run, tmp_path, monkeypatch):
    reference, _ = run
    out = tmp_path / "run"
    real = online.train_policy
    calls = []

    def killed_in_epoch_1(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # epoch 1: its data is collected, tokenizer and world model moved
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(online, "train_policy", killed_in_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        train_online(CONFIG, out, progress=False)
    assert (out / "data" / "chunk_001").exists()
    monkeypatch.setattr(online, "train_policy", real)
    with pytest.raises(Exception, match="not empty: pass --resume"):
        train_online(CONFIG, out, progress=False)
    metrics = train_online(CONFIG, out, resume=True, progress=False)
    assert metrics["env_steps"] == 60 == len(run_dataset(out))
    ours, theirs = _weights(out), _weights(reference)
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        assert torch.equal(ours[key], value), key
    with pytest.raises(Exception, match="other settings"):
        train_online(OnlineConfig(**{**CONFIG.__dict__, "seed": 1}), out, resume=True)


def test_eval_writes_returns_and_gifs(run, tmp_path):
    out, _ = run
    summary = evaluate_run(out, ENV, 3, tmp_path / "eval.json", greedy=True, progress=False)
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["episodes"] == 3 and len(saved["returns"]) == 3
    assert saved["min"] <= saved["mean"] <= saved["max"]
    assert saved["human_normalized"] is None  # not an ALE game
    assert (tmp_path / "eval_best.gif").exists() and (tmp_path / "eval_worst.gif").exists()
    assert summary["best_gif"] == str(tmp_path / "eval_best.gif")


def test_human_normalized_scores():
    assert human_normalized("ALE/Pong-v5", 14.6) == pytest.approx(1.0)
    assert human_normalized("ALE/Breakout-v5", 1.7) == pytest.approx(0.0)
    assert human_normalized(ENV, 1.0) is None


def test_finetune_onto_six_actions_keeps_every_row_but_the_actions():
    vocab = Vocabulary.from_spaces(gym.spaces.Discrete(3), codebook_size=64)
    torch.manual_seed(0)
    model = TokWorldModel(TokWorldConfig.preset("tiny", vocab))
    adapted = adapt_world_model(model, gym.spaces.Discrete(6))
    new = adapted.vocab
    assert new.action.sizes == (6,) and new.size == vocab.size + 3
    for kind in (Kind.FRAME, Kind.REWARD, Kind.END):
        assert new.id_slice(kind) == vocab.id_slice(kind)
    assert new.id_slice(Kind.ACTION).start == vocab.id_slice(Kind.ACTION).start
    keep = vocab.id_slice(Kind.ACTION).start
    for name in ("backbone.embed_tokens.weight", "head.weight"):
        old, ours = model.state_dict()[name], adapted.state_dict()[name]
        assert ours.shape[0] == new.size
        assert torch.equal(ours[:keep], old[:keep])  # specials, frames, rewards, ends
        assert not torch.equal(ours[keep : keep + 3], old[keep:])  # fresh action rows
    for name, value in model.state_dict().items():
        if "embed_tokens" not in name and name != "head.weight":
            assert torch.equal(adapted.state_dict()[name], value), name
    assert adapt_world_model(model, gym.spaces.Discrete(3)) is model
    tokens = new.encode(torch.zeros(1, 2, 16), torch.tensor([[5, 4]]), torch.zeros(1, 2),
                        torch.zeros(1, 2, dtype=torch.bool)).view(1, -1)  # fmt: skip
    logits = adapted(tokens).logits
    assert torch.isfinite(logits[0, 15, new.id_slice(Kind.ACTION)]).all()  # all 6 actions allowed


@pytest.mark.parametrize(
    "argv, message",
    [
        (["finetune", "--run", "/nonexistent", "--env", ENV, "--env-steps", "10", "--out", "X"],
         "has no world_model"),
        (["finetune", "--env", ENV, "--env-steps", "0", "--out", "X"], "env_steps must be >= 1"),
        (["finetune", "--env", ENV, "--env-steps", "9", "--value-bins", "1", "--out", "X"],
         "value_bins must be 0 or >= 2, got 1"),
        (["eval", "--run", "/nonexistent", "--env", ENV, "--json", "x.json"], "has no tokenizer/"),
        (["finetune", "--env", ENV, "--env-steps", "9", "--plan-horizon", "5", "--out", "X"],
         "the --plan-* flags set the planner: add --act plan"),
    ],
)  # fmt: skip
def test_cli_bad_input_is_one_line(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_eval_rejects_a_policy_for_another_action_space(run, tmp_path, capsys):
    out, _ = run
    argv = ["eval", "--run", str(out), "--env", "ALE/Pong-v5", "--json", str(tmp_path / "e.json")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "acts in Discrete [7]" in err and "\n" not in err


def test_planning_collects_and_is_evaluated_without_a_policy(tmp_path, monkeypatch):
    collected = []  # single observations: what `collect` passes; evaluation passes batches

    class Spy(online.Planner):
        def __call__(self, observations):
            collected.extend([1] if np.ndim(observations) == 3 else [])
            return super().__call__(observations)

    monkeypatch.setattr(online, "Planner", Spy)
    cfg = replace(CONFIG, act="plan", plan=PlannerConfig(candidates=4, horizon=2, context=2))
    out = tmp_path / "run"
    metrics = train_online(cfg, out, progress=False)
    assert len(collected) == 20  # epoch 1's steps; epoch 0's 40 are random
    assert "policy" not in metrics["history"][1] and not (out / "policy").exists()
    assert [e["env_steps"] for e in metrics["learning_curve"]] == [40, 60]
    resumed = train_online(cfg, out, resume=True, progress=False)  # a snapshot without a policy
    assert resumed["learning_curve"] == metrics["learning_curve"]


def test_a_policy_run_records_no_planner_settings():
    # Runs recorded before `act` and `plan` existed must still resume: a policy run's record
    # is what it was then.
    assert not {"act", "plan"} & set(CONFIG.to_dict())
    assert replace(CONFIG, act="plan").to_dict()["act"] == "plan"
