"""Pretraining on several datasets: one model, a task per dataset, held-out episodes from each."""

from __future__ import annotations

import json
import shutil

import gymnasium as gym
import numpy as np
import pytest
import torch

from tokworld.adapt import adapt_world_model
from tokworld.cli import main
from tokworld.data.format import (
    TrajectoryMeta,
    load_trajectories,
    trajectory_row,
    write_trajectories,
)
from tokworld.data.mixture import load_mixture, mixed_rows, recorded_held_out, split_by_task
from tokworld.errors import TokWorldError
from tokworld.run import load_world_model
from tokworld.tokenizer.codecs import space_to_dict


def synthetic(path, space: gym.Space, episodes: int = 8, length: int = 12, seed: int = 0) -> str:
    """A trajectory dataset of noise frames in `space`, episodes ending terminated."""
    rng = np.random.default_rng(seed)
    space.seed(seed)

    def rows():
        for e in range(episodes):
            for t in range(length):
                frame = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
                last = t == length - 1
                yield trajectory_row(e, t, frame, space.sample(), float(last), last, False, last)

    meta = TrajectoryMeta("Synthetic-v0", space_to_dict(space), 64, {"kind": "test"})
    write_trajectories(rows, path, meta, (64, 64, 3))
    return str(path)


@pytest.fixture(scope="module")
def three_actions(tmp_path_factory) -> str:
    return synthetic(tmp_path_factory.mktemp("mix") / "three", gym.spaces.Discrete(3))


@pytest.fixture(scope="module")
def mixed_run(minigrid_dataset, three_actions, pretrain_argv, tmp_path_factory):
    """A tiny run pretrained on MiniGrid (Discrete(7)) and the Discrete(3) dataset at once,
    with a 32-code tokenizer (not the tiny preset's 64)."""
    out = tmp_path_factory.mktemp("mixed") / "run"
    extra = ["--dataset", three_actions, "--codebook-size", "32"]
    assert main(pretrain_argv(minigrid_dataset, out) + extra) == 0
    return out


def test_two_datasets_with_other_action_spaces_train_one_model(mixed_run):
    out = mixed_run
    metrics = json.loads((out / "metrics.json").read_text())
    specs = [d["spec"] for d in metrics["dataset"]["datasets"]]
    assert len(specs) == 2
    by_dataset = metrics["world_model"]["eval_by_dataset"]
    assert set(by_dataset) == set(specs)  # every dataset gave held-out episodes
    assert all("eval/frame_acc" in m and "eval/reward_acc" in m for m in by_dataset.values())
    vocab = json.loads((out / "world_model" / "config.json").read_text())["vocab"]
    tokenizer = json.loads((out / "tokenizer" / "config.json").read_text())
    assert tokenizer["codebook_size"] == vocab["codebook_size"] == 32
    assert vocab["action"]["sizes"] == [7]  # MiniGrid's 7 and the other's 3 share one slice
    held, described = recorded_held_out(out)
    assert set(np.unique(held["task"])) == {0, 1} and "held out" in described


def test_datasets_that_cannot_share_an_action_slice_are_one_line(
    minigrid_dataset, tmp_path, capsys
):
    box = synthetic(tmp_path / "box", gym.spaces.Box(-1, 1, (2,), np.float32))
    argv = [
        "pretrain",
        "--dataset",
        minigrid_dataset,
        "--dataset",
        box,
        "--out",
        str(tmp_path / "r"),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "one action space or Discrete ones" in err
    assert not (tmp_path / "r").exists()


def test_held_out_episodes_come_from_every_dataset_and_match_for_codes(three_actions, tmp_path):
    other = synthetic(tmp_path / "other", gym.spaces.Discrete(3), episodes=6, seed=1)
    ds, meta, parts = load_mixture([three_actions, other])
    assert meta.env_id == "Synthetic-v0+Synthetic-v0" and [p.episodes for p in parts] == [8, 6]
    train, held = split_by_task(ds, 0.25, seed=0)
    assert set(np.unique(held["task"])) == {0, 1}
    assert not set(np.unique(train["episode_index"])) & set(np.unique(held["episode_index"]))
    again = split_by_task(ds.remove_columns("observation"), 0.25, seed=0)[1]
    assert again["episode_index"] == held["episode_index"]  # frames and codes split alike


def test_mix_weights_set_each_tasks_share():
    tasks = np.array([0] * 900 + [1] * 100)
    rows = mixed_rows(tasks, [1.0, 1.0], seed=0)
    share = np.mean(tasks[rows] == 1)
    assert share == pytest.approx(0.5, abs=0.01)
    assert np.array_equal(mixed_rows(tasks, None), np.arange(1000))
    with pytest.raises(TokWorldError, match="2 datasets"):
        mixed_rows(tasks, [1.0])


def test_a_changed_dataset_is_not_evaluated_as_held_out(tiny_run, minigrid_dataset, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    record = json.loads((run / "held_out.json").read_text())
    record["datasets"][0]["fingerprint"] = "0" * 16
    (run / "held_out.json").write_text(json.dumps(record))
    with pytest.raises(TokWorldError, match="changed since"):
        recorded_held_out(run)
    assert len(load_trajectories(minigrid_dataset)) > len(recorded_held_out(tiny_run)[0])


def test_finetuning_adds_a_task_and_an_action_slice_and_keeps_the_rest(mixed_run):
    model = load_world_model(mixed_run)
    assert model.config.tasks == ["MiniGrid-Empty-5x5-v0", "Synthetic-v0"]
    table = model.task_embedding.weight
    assert table.shape[0] == 2 and table.abs().sum() > 0  # learned from zeros
    adapted = adapt_world_model(model, gym.spaces.Discrete(5), task="Third-v0")
    assert adapted.config.tasks == [*model.config.tasks, "Third-v0"]
    assert torch.equal(adapted.task_embedding.weight[:2], table)
    assert not adapted.task_embedding.weight[2].any()  # a new task starts as no change
    old, new = model.vocab, adapted.vocab
    assert new.action.sizes == (5,) and old.action.sizes == (7,)
    kept_old, kept_new = old.shared_ids(new)
    for name in ("backbone.embed_tokens.weight", "head.weight"):
        assert torch.equal(adapted.state_dict()[name][kept_new], model.state_dict()[name][kept_old])
    ours, theirs = adapted.state_dict(), model.state_dict()
    same = [k for k in theirs if k not in ("backbone.embed_tokens.weight", "head.weight",
                                           "task_embedding.weight")]  # fmt: skip
    assert all(torch.equal(ours[k], theirs[k]) for k in same)


def test_the_task_identity_changes_what_the_model_predicts(mixed_run):
    model = load_world_model(mixed_run)
    tokens = torch.zeros(1, model.vocab.block_size, dtype=torch.long)
    with torch.no_grad():
        first, second, default = (model(tokens, task=torch.tensor([t])).logits for t in (0, 1, 1))
        assert not torch.equal(first, second)
        assert torch.equal(second, model(tokens).logits)  # no task: the last one's
    assert torch.equal(second, default)
