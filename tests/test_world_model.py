"""The world model and its training: next-kind mask, padding, loss, save/load, resume, checks."""

import json

import datasets
import gymnasium as gym
import numpy as np
import pytest
import torch

from tokworld.config import TokWorldConfig
from tokworld.data.format import TrajectoryMeta
from tokworld.data.windows import WindowDataset
from tokworld.errors import TokWorldError
from tokworld.model import TokWorldModel
from tokworld.tokenizer.codecs import space_to_dict
from tokworld.tokenizer.vocab import Kind, Vocabulary
from tokworld.training.calibration import fit_event_shift
from tokworld.training.loop import TrainConfig
from tokworld.training.world_model import tiled_windows, train_world_model, window_dataset

CODEBOOK, K = 32, 4
DISCRETE = gym.spaces.Discrete(3)


def _model(space=DISCRETE, seed=0, **overrides) -> TokWorldModel:
    torch.manual_seed(seed)
    vocab = Vocabulary.from_spaces(space, CODEBOOK, K)
    return TokWorldModel(TokWorldConfig.preset("tiny", vocab, **overrides))


def _batch(space=DISCRETE, b=3, t=5, seed=0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if isinstance(space, gym.spaces.MultiDiscrete):
        parts = [torch.randint(0, int(n), (b, t), generator=g) for n in space.nvec]
        action = torch.stack(parts, -1)
    else:
        action = torch.randint(0, int(space.n), (b, t), generator=g)
    return {
        "codes": torch.randint(0, CODEBOOK, (b, t, K), generator=g),
        "action": action,
        "reward": torch.randint(-1, 2, (b, t), generator=g).float(),
        "terminated": torch.rand(b, t, generator=g) < 0.2,
        "mask": torch.ones(b, t, dtype=torch.bool),
    }


def codes_dataset(episodes=(12, 7, 9, 15, 10), space=DISCRETE, k=K, seed=0):
    """A codes dataset of random steps, with the metadata a tokenized trajectory dataset carries."""
    rng = np.random.default_rng(seed)
    n = sum(episodes)
    last = np.cumsum(episodes) - 1
    columns = {
        "episode_index": np.repeat(np.arange(len(episodes)), episodes),
        "frame_index": np.concatenate([np.arange(e) for e in episodes]),
        "codes": rng.integers(0, CODEBOOK, (n, k)),
        "action": rng.integers(0, int(space.n), n),
        "reward": rng.integers(-1, 2, n).astype(np.float32),
        "terminated": np.isin(np.arange(n), last),
        "truncated": np.zeros(n, dtype=bool),
    }
    meta = TrajectoryMeta("synthetic", space_to_dict(space), frame_size=64)
    info = datasets.DatasetInfo(description=meta.to_json())
    return datasets.Dataset.from_dict({c: list(v) for c, v in columns.items()}, info=info)


@pytest.mark.parametrize("space", [gym.spaces.Discrete(3), gym.spaces.MultiDiscrete([3, 2])])
def test_mask_allows_exactly_the_next_kind_at_every_position(space):
    model = _model(space)
    vocab = model.vocab
    tokens = model.tokens_of(_batch(space, b=2, t=4))
    logits = model(tokens).logits  # (B, L, V)
    ids = torch.arange(vocab.size)
    for p in range(tokens.shape[1]):
        lo, hi = vocab.block_ranges[(p + 1) % vocab.block_size]
        allowed = (ids >= lo) & (ids < hi)
        assert torch.isfinite(logits[:, p, allowed]).all(), p
        assert (logits[:, p, ~allowed] == float("-inf")).all(), p
    # The slices of consecutive positions cycle through frame, action(s), reward, end.
    ranges = vocab.block_ranges
    assert ranges[K - 1] == (vocab.id_slice(Kind.FRAME).start, vocab.id_slice(Kind.FRAME).stop)
    assert ranges[-2] == (vocab.id_slice(Kind.REWARD).start, vocab.id_slice(Kind.REWARD).stop)
    assert ranges[-1] == (vocab.id_slice(Kind.END).start, vocab.id_slice(Kind.END).stop)


def test_padded_steps_contribute_no_loss_or_gradient():
    model = _model()
    batch = _batch()
    batch["mask"][0, 3:] = False
    batch["mask"][2, 1:] = False

    def loss_and_grads(b):
        model.zero_grad()
        loss, metrics = model.compute_loss(b)
        loss.backward()
        return loss.detach(), metrics, [p.grad.clone() for p in model.parameters()]

    loss, metrics, grads = loss_and_grads(batch)
    other = _batch(seed=1)
    changed = {k: v.clone() for k, v in batch.items()}
    for key in ("codes", "action", "reward", "terminated"):
        pad = ~batch["mask"]
        changed[key][pad] = other[key][pad]
    assert not torch.equal(changed["codes"], batch["codes"])
    loss2, metrics2, grads2 = loss_and_grads(changed)
    assert torch.equal(loss, loss2)
    assert metrics == metrics2
    for a, b in zip(grads, grads2, strict=True):
        assert torch.equal(a, b)
    full = dict(batch, mask=torch.ones_like(batch["mask"]))
    assert not torch.equal(model.compute_loss(full)[0], loss)


def test_loss_falls_on_a_fixed_batch():
    model = _model()
    batch = _batch(b=4, t=6)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss, metrics = model.compute_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] / 2
    assert set(metrics) >= {"frame_loss", "frame_acc", "reward_acc", "end_acc", "action_loss"}


def test_save_and_load_are_bit_exact(tmp_path):
    model = _model(gym.spaces.MultiDiscrete([3, 2]))
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = TokWorldModel.from_pretrained(tmp_path)
    assert loaded.vocab == model.vocab
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    tokens = model.tokens_of(_batch(gym.spaces.MultiDiscrete([3, 2])))
    assert torch.equal(model(tokens).logits, loaded(tokens).logits)


def test_tiled_windows_tile_every_episode_up_to_its_end():
    model = _model()  # context of 8 steps
    windows = tiled_windows(model, codes_dataset(episodes=(20, 9, 5)))
    starts = [int(windows.windows.starts[i]) for i in windows.rows]
    # Each episode tiled by windows of 8 steps from its end, and its first window holding the
    # steps before the first tile (episode 0: 4, episode 1: 1); a short episode is one window.
    assert starts == [0, 4, 12, 20, 21, 29]
    counted = [int(windows[i]["mask"].sum()) for i in range(len(windows))]
    assert counted == [4, 8, 8, 1, 8, 5] and sum(counted) == 20 + 9 + 5


def test_the_calibration_reads_each_step_once_and_every_episodes_end():
    model = _model()  # context of 8 steps
    episodes = (20, 9, 5, 30, 12) * 3  # 15 episodes, each ending on its last step
    ds = codes_dataset(episodes=episodes)
    shifts, fit = fit_event_shift(model, tiled_windows(model, ds))
    assert (fit["end_fit_events"], fit["fit_steps"]) == (15, len(ds))
    assert shifts[1] != 0.0  # an untrained model's P(end) is not the rate
    # A window at every start holds an episode's last step in one window and a middle step in
    # up to eight: drawn from those, the ends' rate is undercounted several times over.
    _, every_start = fit_event_shift(model, window_dataset(model, ds))
    assert every_start["end_fit_events"] / every_start["fit_steps"] < 15 / len(ds) / 3
    # Too few events to trust their rate: the model's current shift is kept, or none is made.
    assert fit_event_shift(model, tiled_windows(model, ds), min_events=16)[0][1] == 0.0
    model.config.event_shift = [0.5, 1.5]
    assert fit_event_shift(model, tiled_windows(model, ds), min_events=16)[0] == [shifts[0], 1.5]


class Killed(Exception):
    pass


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, monkeypatch):
    ds = codes_dataset()
    cfg = TrainConfig(steps=12, batch_size=4, lr=3e-3, warmup_steps=2, checkpoint_every=5,
                      eval_every=6, eval_batches=2, log_every=1)  # fmt: skip
    held_out = codes_dataset(episodes=(9, 11), seed=1)
    full = _model()
    result = train_world_model(full, ds, cfg, tmp_path / "full", eval_ds=held_out, progress=False)
    assert result["world_size"] == 1
    assert {"eval/frame_acc", "eval/reward_acc", "eval/end_acc"} <= set(result)

    served = {"n": 0}
    getitem = WindowDataset.__getitem__

    def dying(self, i):
        served["n"] += 1
        if served["n"] > 7 * cfg.batch_size:  # after the step-5 checkpoint
            raise Killed
        return getitem(self, i)

    monkeypatch.setattr(WindowDataset, "__getitem__", dying)
    with pytest.raises(Killed):
        train_world_model(_model(), ds, cfg, tmp_path / "split", eval_ds=held_out, progress=False)
    monkeypatch.setattr(WindowDataset, "__getitem__", getitem)
    resumed = _model(seed=123)  # resume must not depend on the new model's initialisation
    train_world_model(
        resumed, ds, cfg, tmp_path / "split", eval_ds=held_out, resume=True, progress=False
    )
    history = json.loads((tmp_path / "split" / "history.json").read_text())
    assert [h["step"] for h in history if "eval/loss" in h] == [6, 12]
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_bad_inputs_are_one_line_errors(tmp_path):
    cfg = TrainConfig(steps=1, batch_size=2, checkpoint_every=1)
    ds = codes_dataset()
    with pytest.raises(TokWorldError, match="action space of the dataset .* does not match"):
        train_world_model(_model(gym.spaces.Discrete(5)), ds, cfg, tmp_path, progress=False)
    with pytest.raises(TokWorldError, match="expects 4 codes per frame"):
        train_world_model(_model(), codes_dataset(k=6), cfg, tmp_path, progress=False)
    bigger = codes_dataset()
    bigger = bigger.map(lambda row: {"codes": [c + CODEBOOK for c in row["codes"]]})
    with pytest.raises(TokWorldError, match="outside the world model's codebook of 32"):
        train_world_model(_model(), bigger, cfg, tmp_path, progress=False)
    train_world_model(_model(), ds, cfg, tmp_path / "run", progress=False)
    with pytest.raises(TokWorldError, match="another config") as e:
        train_world_model(
            _model(hidden_size=32), ds, cfg, tmp_path / "run", resume=True, progress=False
        )
    assert "model.hidden_size: 64 -> 32" in str(e.value) and "\n" not in str(e.value)
    # A resume whose frame tokenizer has another codebook: the vocabulary differs.
    other = TokWorldModel(TokWorldConfig.preset("tiny", Vocabulary.from_spaces(DISCRETE, 64, K)))
    with pytest.raises(TokWorldError, match="model.vocab.codebook_size: 32 -> 64"):
        train_world_model(other, ds, cfg, tmp_path / "run", resume=True, progress=False)


def _rare_lever(generator, n=16, t=8) -> dict[str, torch.Tensor]:
    """Steps where action 1 on a frame whose first code is 0 pays 1 and ends the episode:
    a 1-in-64 event, decided by what the model sees."""
    codes = torch.randint(0, 32, (n, t, 2), generator=generator)
    action = torch.randint(0, 2, (n, t), generator=generator)
    reward = ((codes[..., 0] == 0) & (action == 1)).float()
    mask = torch.ones(n, t, dtype=torch.bool)
    return {"codes": codes, "action": action, "reward": reward, "terminated": reward.bool(),
            "mask": mask}  # fmt: skip


def _reward_recall(balance: float) -> tuple[float, float]:
    """(recall, precision) of the argmax reward token on held-out rare-lever steps after 50
    training steps with `event_balance=balance`."""
    vocab = Vocabulary.from_spaces(gym.spaces.Discrete(2), 32, 2, reward_codec="sign")
    torch.manual_seed(0)
    model = TokWorldModel(TokWorldConfig.preset("tiny", vocab, event_balance=balance))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        loss, _ = model.compute_loss(_rare_lever(generator))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    tokens = model.tokens_of(_rare_lever(torch.Generator().manual_seed(1), n=256))
    with torch.no_grad():
        predicted = model.eval()(tokens[:, :-1]).logits.argmax(-1)
    reward = vocab.kinds(tokens.shape[1])[1:] == int(Kind.REWARD)
    hit = vocab.is_event(predicted) & reward
    real = vocab.is_event(tokens[:, 1:]) & reward
    return float((hit & real).sum() / real.sum()), float(
        (hit & real).sum() / hit.sum().clamp(min=1)
    )


def test_rare_rewards_are_predicted_above_their_base_rate():
    recall, precision = _reward_recall(TokWorldConfig().event_balance)
    assert recall > 0.9 and precision > 0.3  # the base rate is 1/64
    assert _reward_recall(0.0)[0] < 0.1  # the plain mean over all steps has not learned them yet
