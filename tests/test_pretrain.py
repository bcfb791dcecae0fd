"""`tokworld pretrain` end to end on real MiniGrid steps: outputs, held-out metrics, kill and
resume, bad input."""

import json
import math

import datasets
import pytest
import torch
from safetensors.torch import load_file

from tokworld.cli import main
from tokworld.model import TokWorldModel
from tokworld.tokenizer.frame import FrameTokenizer
from tokworld.training import pretrain as pretrain_module
from tokworld.training.pretrain import PretrainConfig, pretrain

# Tiny and short: the tokenizer trains 8 steps, the world model 12 (checkpoints every 4).
OPTIONS = dict(preset="tiny", tokenizer_steps=8, tokenizer_batch_size=16, world_model_steps=12,
               batch_size=4, checkpoint_every=4, eval_every=0, eval_fraction=0.25)  # fmt: skip


def _argv(dataset: str, out, **changes) -> list[str]:
    argv = ["pretrain", "--dataset", dataset, "--out", str(out)]
    for key, value in {**OPTIONS, **changes}.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv


@pytest.fixture(scope="module")
def run(minigrid_dataset, tmp_path_factory):
    """A finished pretraining run on 300 random MiniGrid steps (4 episodes, 1 held out)."""
    out = tmp_path_factory.mktemp("pretrain") / "run"
    assert main(_argv(minigrid_dataset, out)) == 0
    return out


def test_pretrain_writes_tokenizer_world_model_codes_and_metrics(run, minigrid_dataset):
    for name in ("tokenizer", "world_model"):
        assert sorted(p.name for p in (run / name).iterdir()) == [
            "config.json",
            "model.safetensors",
        ]
    assert (run / "train_state" / "tokenizer" / "train_state" / "state.json").exists()
    assert (run / "train_state" / "world_model" / "train_state" / "state.json").exists()
    tokenizer = FrameTokenizer.from_pretrained(run / "tokenizer")
    model = TokWorldModel.from_pretrained(run / "world_model")
    assert model.vocab.codebook_size == tokenizer.codebook_size
    assert model.vocab.tokens_per_frame == tokenizer.tokens_per_frame == 16
    assert model.vocab.action.sizes == (7,)  # MiniGrid's Discrete(7)

    # The codes cache: every step once, no frames, the codes the saved tokenizer gives.
    codes = datasets.load_from_disk(str(run / "codes"))
    source = datasets.load_from_disk(minigrid_dataset)
    assert "observation" not in codes.column_names and len(codes) == len(source)
    frames = torch.from_numpy(source.with_format("numpy", dtype=None)[:5]["observation"])
    assert torch.equal(torch.as_tensor(codes[:5]["codes"]).long(), tokenizer.encode(frames))

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["dataset"]["episodes"] == 4 and metrics["dataset"]["held_out_episodes"] == 1
    assert metrics["world_size"] == 1 and metrics["distributed_type"] == "NO"
    wm = metrics["world_model"]
    for key in ("eval/frame_acc", "eval/reward_acc", "eval/end_acc", "eval/frame_loss"):
        assert 0 <= wm[key] <= 1 or key.endswith("loss"), key
    assert "eval/psnr" in metrics["tokenizer"]
    # Held-out frame codes are predicted better than by a uniform guess (the initial model).
    assert wm["eval/frame_loss"] < math.log(tokenizer.codebook_size)


class Killed(Exception):
    pass


def test_killed_run_resumes_from_its_last_checkpoint(run, minigrid_dataset, tmp_path, monkeypatch):
    """Killed in world-model step 7 (checkpoint at 4), resumed: the weights equal an
    uninterrupted run's, and only steps 5-12 are trained again."""
    cfg = PretrainConfig(minigrid_dataset, tokenizer=str(run / "tokenizer"), **OPTIONS)
    compute_loss = TokWorldModel.compute_loss
    calls = {"train": 0}

    def counting(self, batch, kill_at=None):
        if self.training:
            calls["train"] += 1
            if calls["train"] == kill_at:
                raise Killed
        return compute_loss(self, batch)

    monkeypatch.setattr(TokWorldModel, "compute_loss", lambda s, b: counting(s, b, kill_at=7))
    with pytest.raises(Killed):
        pretrain(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "world_model").exists()

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished stage ran again")

    monkeypatch.setattr(pretrain_module, "tokenize_dataset", must_not_run)
    monkeypatch.setattr(TokWorldModel, "compute_loss", counting)
    calls["train"] = 0
    pretrain(cfg, tmp_path / "run", resume=True, progress=False)
    assert calls["train"] == 12 - 4
    resumed = load_file(str(tmp_path / "run" / "world_model" / "model.safetensors"))
    uninterrupted = load_file(str(run / "world_model" / "model.safetensors"))
    for name, tensor in uninterrupted.items():
        assert torch.equal(resumed[name], tensor), name
    history = json.loads((tmp_path / "run/train_state/world_model/history.json").read_text())
    assert [h["step"] for h in history] == [10, 12]  # logged every 10 steps and at the end


def _error(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, err
    return err


def test_bad_input_is_one_line(run, minigrid_dataset, tmp_path, capsys):
    assert "not empty: pass --resume" in _error(_argv(minigrid_dataset, run), capsys)
    err = _error(_argv(minigrid_dataset, run, world_model_steps=99) + ["--resume"], capsys)
    assert "world_model_steps=12, not 99" in err
    assert "not a directory" in _error(_argv(str(tmp_path / "none"), tmp_path / "a"), capsys)
    assert "unknown dataset spec prefix" in _error(_argv("foo:bar", tmp_path / "a"), capsys)
    assert not (tmp_path / "a").exists()
    err = _error(_argv(minigrid_dataset, tmp_path / "b", tokenizer=tmp_path), capsys)
    assert "is not a tokenizer" in err
    assert "batch_size must be >= 1" in _error(_argv(minigrid_dataset, tmp_path / "c",
                                                     batch_size=0), capsys)  # fmt: skip
