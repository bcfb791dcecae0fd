"""`tokworld pretrain` end to end on real MiniGrid steps: outputs, held-out metrics, kill and
resume, bad input. The finished run is the session's `tiny_run` (tests/conftest.py)."""

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


def test_pretrain_writes_tokenizer_world_model_codes_and_metrics(tiny_run, minigrid_dataset):
    for name in ("tokenizer", "world_model"):
        assert sorted(p.name for p in (tiny_run / name).iterdir()) == [
            "config.json",
            "model.safetensors",
        ]
    assert (tiny_run / "train_state" / "tokenizer" / "train_state" / "state.json").exists()
    assert (tiny_run / "train_state" / "world_model" / "train_state" / "state.json").exists()
    tokenizer = FrameTokenizer.from_pretrained(tiny_run / "tokenizer")
    model = TokWorldModel.from_pretrained(tiny_run / "world_model")
    assert model.vocab.codebook_size == tokenizer.codebook_size
    assert model.vocab.tokens_per_frame == tokenizer.tokens_per_frame == 16
    assert model.vocab.action.sizes == (7,)  # MiniGrid's Discrete(7)

    # The codes cache: every step once, no frames, the codes the saved tokenizer gives.
    codes = datasets.load_from_disk(str(tiny_run / "codes"))
    source = datasets.load_from_disk(minigrid_dataset)
    assert "observation" not in codes.column_names and len(codes) == len(source)
    frames = torch.from_numpy(source.with_format("numpy", dtype=None)[:5]["observation"])
    assert torch.equal(torch.as_tensor(codes[:5]["codes"]).long(), tokenizer.encode(frames))

    metrics = json.loads((tiny_run / "metrics.json").read_text())
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


def test_killed_run_resumes_from_its_last_checkpoint(
    tiny_run, tiny_run_options, minigrid_dataset, tmp_path, monkeypatch
):
    """Killed in world-model step 7 (checkpoint at 4), resumed: the weights equal an
    uninterrupted run's, and only steps 5-12 are trained again."""
    options = tiny_run_options
    assert (options["world_model_steps"], options["checkpoint_every"]) == (12, 4)
    cfg = PretrainConfig(minigrid_dataset, tokenizer=str(tiny_run / "tokenizer"), **options)
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
    uninterrupted = load_file(str(tiny_run / "world_model" / "model.safetensors"))
    for name, tensor in uninterrupted.items():
        assert torch.equal(resumed[name], tensor), name
    history = json.loads((tmp_path / "run/train_state/world_model/history.json").read_text())
    assert [h["step"] for h in history] == [10, 12]  # logged every 10 steps and at the end


def test_bad_input_is_one_line(tiny_run, pretrain_argv, minigrid_dataset, tmp_path, capsys):
    def error(dataset, out, *flags, **changes) -> str:
        assert main(pretrain_argv(dataset, out, **changes) + list(flags)) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err, err
        return err

    assert "not empty: pass --resume" in error(minigrid_dataset, tiny_run)
    err = error(minigrid_dataset, tiny_run, "--resume", world_model_steps=99)
    assert "world_model_steps=12, not 99" in err
    assert "not a directory" in error(str(tmp_path / "none"), tmp_path / "a")
    assert "unknown dataset spec prefix" in error("foo:bar", tmp_path / "a")
    assert not (tmp_path / "a").exists()
    assert "is not an observation tokenizer" in error(
        minigrid_dataset, tmp_path / "b", tokenizer=tmp_path
    )
    assert "batch_size must be >= 1" in error(minigrid_dataset, tmp_path / "c", batch_size=0)
