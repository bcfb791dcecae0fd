"""The shared training loop: loss falls, resume is bit-identical, samplers shard and resume."""

import json

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import TensorDataset

from tokworld.training.loop import ResumableSampler, TrainConfig, train


class Regressor(torch.nn.Module):
    """A tiny model with dropout, so resume must also restore RNG state."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(4, 16), torch.nn.Dropout(0.1), torch.nn.Linear(16, 1)
        )

    def compute_loss(self, batch):
        x, y = batch["x"], batch["y"]
        loss = torch.nn.functional.mse_loss(self.net(x).squeeze(-1), y)
        return loss, {"mse": loss.detach()}


class Killed(Exception):
    pass


class Pairs(TensorDataset):
    def __init__(self, x, y, kill_after=None):
        super().__init__(x, y)
        self.kill_after, self.served = kill_after, 0

    def __getitem__(self, i):
        self.served += 1
        if self.kill_after is not None and self.served > self.kill_after:
            raise Killed
        x, y = super().__getitem__(i)
        return {"x": x, "y": y}


def _data(kill_after=None):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 4, generator=g)
    return Pairs(x, x.sum(-1), kill_after)


def _model():
    torch.manual_seed(0)
    return Regressor()


def test_loss_falls_and_resume_is_bit_identical(tmp_path):
    cfg = TrainConfig(
        steps=40, batch_size=16, lr=1e-2, warmup_steps=2, checkpoint_every=20, log_every=1
    )
    full = _model()
    result = train(full, _data(), cfg, tmp_path / "full", name="t", progress=False)
    history = json.loads((tmp_path / "full" / "history.json").read_text())
    assert history[-1]["mse"] < history[0]["mse"] / 2
    assert result["world_size"] == 1

    # A run killed after its step-20 checkpoint, resumed in a fresh model, matches the full run.
    with pytest.raises(Killed):
        train(
            _model(), _data(kill_after=25 * 16), cfg, tmp_path / "split", name="t", progress=False
        )
    torch.manual_seed(123)  # resume must not depend on the RNG state of the new process
    resumed = Regressor()
    train(resumed, _data(), cfg, tmp_path / "split", name="t", resume=True, progress=False)
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    saved = load_file(str(tmp_path / "split" / "train_state" / "model.safetensors"))
    assert torch.equal(saved["net.0.weight"], full.net[0].weight)


def test_resume_with_other_config_is_an_error(tmp_path):
    cfg = TrainConfig(steps=2, batch_size=8, checkpoint_every=1)
    train(_model(), _data(), cfg, tmp_path, name="t", config_to_check={"a": 1}, progress=False)
    try:
        train(_model(), _data(), cfg, tmp_path, name="t", resume=True, config_to_check={"a": 2},
              progress=False)  # fmt: skip
    except Exception as e:
        assert "another config" in str(e)
    else:
        raise AssertionError("resume with another config must fail")


def test_sampler_shards_are_disjoint_and_resume_by_index():
    a = ResumableSampler(100, 10, seed=1, rank=0, world_size=2)
    b = ResumableSampler(100, 10, seed=1, rank=1, world_size=2)
    first_epoch_a = sum((a.batch(i) for i in range(5)), [])
    first_epoch_b = sum((b.batch(i) for i in range(5)), [])
    assert not set(first_epoch_a) & set(first_epoch_b)
    assert sorted(first_epoch_a + first_epoch_b) == list(range(100))
    later = ResumableSampler(100, 10, seed=1, rank=0, world_size=2, start=7)
    assert next(iter(later)) == a.batch(7)
