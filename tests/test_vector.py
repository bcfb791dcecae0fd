"""Vector observations: the codec, the vocabulary's per-position code ranges, the vector policy,
and vector runs through pretraining, the online loop and fine-tuning."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch

from tokworld.config import ModelChoices
from tokworld.data.collect import collect
from tokworld.data.mixture import load_mixture
from tokworld.errors import TokWorldError
from tokworld.model import TokWorldModel
from tokworld.policy import Agent, build_policy
from tokworld.run import load_policy, load_run
from tokworld.tokenizer.codecs import ActionCodec, RewardCodec
from tokworld.tokenizer.observation import load_observation_tokenizer
from tokworld.tokenizer.vector import VectorCodec, VectorCodecConfig
from tokworld.tokenizer.vocab import Kind, Vocabulary
from tokworld.training.finetune import finetune
from tokworld.training.imagination import ImaginationConfig
from tokworld.training.online_config import OnlineConfig
from tokworld.training.pretrain import PretrainConfig, pretrain


def _data(n=2000, seed=0):
    """Observations with a wide tail in dimension 0, a narrow range in 1, a constant in 2."""
    rng = np.random.default_rng(seed)
    return np.stack(
        [rng.standard_cauchy(n).clip(-50, 50), rng.uniform(-0.1, 0.1, n), np.full(n, 3.0)], 1
    ).astype(np.float32)


@pytest.mark.parametrize("binning", ["quantile", "uniform"])
def test_codec_round_trips_within_half_a_bin(binning):
    x = _data()
    codec = VectorCodec.fit(x, VectorCodecConfig(dims=3, bins=16, binning=binning))
    codes = codec.encode(x)
    error = (codec.decode(codes) - torch.from_numpy(x)).abs()
    assert (error <= codec.bin_width(codes) / 2 + 1e-5).all()
    assert error[:, 2].max() == 0  # a constant dimension is exact
    # Each dimension owns its code range: dimension d's codes lie in [16 d, 16 (d + 1)).
    assert ((codes // 16) == torch.arange(3)).all()


def test_quantile_bins_hold_equal_shares_and_uniform_bins_use_finite_bounds():
    x = _data()
    quantile = VectorCodec.fit(x, VectorCodecConfig(dims=3, bins=8))
    counts = torch.bincount(quantile.encode(x)[:, 0], minlength=8).float()
    assert counts.min() > 0.8 * len(x) / 8  # the Cauchy tail does not empty the middle bins
    low, high = np.array([-100, -np.inf, 0]), np.array([100, np.inf, 5])
    uniform = VectorCodec.fit(x, VectorCodecConfig(dims=3, bins=8, binning="uniform"), low, high)
    edges = uniform.edges.double()
    assert edges[0, 0] == -100 and edges[0, -1] == 100  # finite bounds
    assert edges[1, 0] == pytest.approx(float(x[:, 1].min()))  # infinite: the data's range
    assert edges[2].tolist() == pytest.approx(np.linspace(0, 5, 9).tolist())


def test_codec_saves_as_safetensors_and_reloads_bit_exactly(tmp_path):
    x = _data()
    codec = VectorCodec.fit(x, VectorCodecConfig(dims=3, bins=32))
    codec.save_pretrained(tmp_path / "codec")
    assert sorted(p.name for p in (tmp_path / "codec").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    loaded = load_observation_tokenizer(tmp_path / "codec")
    assert isinstance(loaded, VectorCodec) and loaded.observation == "vector"
    assert torch.equal(loaded.edges, codec.edges)
    assert torch.equal(loaded.encode(x), codec.encode(x))


def test_codec_refuses_bad_observations_and_codes():
    codec = VectorCodec.fit(_data(), VectorCodecConfig(dims=3, bins=4))
    with pytest.raises(TokWorldError, match=r"row 1, dimension 2 is not finite"):
        codec.encode(np.array([[0, 0, 0], [0, 0, np.nan]], np.float32))
    with pytest.raises(TokWorldError, match=r"shape \(B, 3\)"):
        codec.encode(np.zeros((2, 4), np.float32))
    with pytest.raises(TokWorldError, match="out of their dimension's range"):
        codec.decode(torch.tensor([[0, 0, 8]]))  # dimension 1's code 0 belongs to dimension 0
    with pytest.raises(TokWorldError, match=">= 2 bins"):
        VectorCodecConfig(dims=3, bins=1)


def _vector_vocab(dims=3, bins=4) -> Vocabulary:
    action = ActionCodec.from_space(gym.spaces.Discrete(2))
    return Vocabulary(dims * bins, dims, action, RewardCodec("sign"), per_position_codes=True)


def test_masks_keep_each_observation_token_in_its_dimensions_slice():
    vocab = _vector_vocab()
    frame = vocab.id_slice(Kind.FRAME)
    mask = vocab.allowed_mask(vocab.block_size)
    for j, position in enumerate(range(*vocab.segment(Kind.FRAME).indices(vocab.block_size))):
        allowed = mask[position].nonzero()[:, 0]
        assert allowed.tolist() == list(range(frame.start + 4 * j, frame.start + 4 * j + 4))
    assert Vocabulary.from_dict(vocab.to_dict()) == vocab
    with pytest.raises(TokWorldError, match="outside its position's code range"):
        vocab.ids(Kind.FRAME, torch.tensor([[0, 0, 8]]))
    # The model's logits obey the same masks: at every observation position, only that
    # dimension's codes have a finite logit.
    from tokworld.config import TokWorldConfig

    model = TokWorldModel(TokWorldConfig.preset("tiny", vocab)).eval()
    blocks = vocab.encode(torch.tensor([[[1, 5, 10]] * 3]), torch.zeros(1, 3), torch.zeros(1, 3),
                          torch.zeros(1, 3, dtype=torch.bool))  # fmt: skip
    tokens = blocks.flatten(1)
    with torch.no_grad():
        logits = model(tokens).logits[0]
    finite = torch.isfinite(logits)
    expected = model.vocab.allowed_mask(tokens.shape[1], start=1)
    assert torch.equal(finite, expected)


def test_vector_policy_reads_ranks_and_an_agent_acts_on_one_vector():
    codec = VectorCodec.fit(_data(), VectorCodecConfig(dims=3, bins=8))
    policy = build_policy("tiny", ActionCodec.from_space(gym.spaces.Discrete(2)), codec)
    assert policy.config.policy_input == "vector"
    assert policy.encoder.net[0].in_features == 3  # one rank per dimension
    agent = Agent(policy, codec, seed=0)
    action = agent(np.zeros(3, np.float32))
    assert np.ndim(action) == 0 and int(action) in (0, 1)
    agent.reset()
    assert agent(np.zeros((5, 3), np.float32)).shape == (5,)
    with pytest.raises(TokWorldError, match="cannot read vector observations"):
        build_policy("tiny", ActionCodec.from_space(gym.spaces.Discrete(2)), codec, "frames")


@pytest.fixture(scope="module")
def pendulum(tmp_path_factory):
    out = tmp_path_factory.mktemp("vector") / "pendulum"
    collect("Pendulum-v1", 400, out, seed=0, progress=False)
    return out


@pytest.fixture(scope="module")
def vector_run(pendulum, tmp_path_factory):
    run = tmp_path_factory.mktemp("vector") / "run"
    cfg = PretrainConfig(dataset=(str(pendulum),), preset="tiny", world_model_steps=20,
                         batch_size=8, checkpoint_every=20, eval_every=20)  # fmt: skip
    pretrain(cfg, run, progress=False)
    return run


def test_pretraining_on_vectors_fits_a_codec_and_a_world_model_with_per_position_codes(
    vector_run,
):
    world_model, codec = load_run(vector_run)
    assert isinstance(codec, VectorCodec) and codec.config.dims == 3
    vocab = world_model.vocab
    assert vocab.per_position_codes and vocab.tokens_per_frame == 3
    assert vocab.codebook_size == 3 * codec.config.bins


def test_frames_and_vectors_do_not_mix(pendulum, minigrid_dataset, tiny_run, tmp_path):
    with pytest.raises(TokWorldError, match="mix frame and vector observations"):
        load_mixture([str(pendulum), str(minigrid_dataset)])
    cfg = PretrainConfig(dataset=(str(pendulum),), preset="tiny", tokenizer=str(tiny_run /
                         "tokenizer"), world_model_steps=2)  # fmt: skip
    with pytest.raises(TokWorldError, match="reads frames, the data has vector observations"):
        pretrain(cfg, tmp_path / "mixed", progress=False)


MICRO = dict(
    env_steps=60, initial_steps=40, steps_per_epoch=20, preset="tiny", world_model_steps=3,
    world_model_batch_size=4, eval_episodes=2,
    imagination=ImaginationConfig(steps=2, batch_size=4, horizon=3, context_steps=2),
)  # fmt: skip


def test_online_loop_on_vectors_keeps_the_codec_it_fitted_first(tmp_path):
    cfg = OnlineConfig("CartPole-v1", critic="separate", value_bins=63, **MICRO)
    metrics = finetune(cfg, tmp_path / "run", progress=False)
    assert len(metrics["learning_curve"]) == 2
    assert metrics["history"][0]["tokenizer"]["kind"] == "vector_codec"
    assert "tokenizer" not in metrics["history"][1]  # fitted once, then kept
    world_model, codec = load_run(tmp_path / "run")
    first = load_observation_tokenizer(tmp_path / "run" / "tokenizer")
    assert torch.equal(codec.edges, first.edges) and world_model.vocab.per_position_codes
    policy = load_policy(tmp_path / "run").config
    assert (policy.critic, policy.value_bins) == ("separate", 63)  # as configured


def test_action_bins_set_the_box_action_slice_and_the_policys_choices(tmp_path):
    cfg = OnlineConfig("Pendulum-v1", model=ModelChoices(action_bins=5), **MICRO)
    finetune(cfg, tmp_path / "run", progress=False)
    world_model, codec = load_run(tmp_path / "run")
    assert world_model.vocab.action.sizes == (5,)
    agent = Agent(load_policy(tmp_path / "run"), codec, seed=0)
    rows = np.random.default_rng(0).uniform(-1, 1, (64, 3)).astype(np.float32)
    torques = np.asarray(agent(rows)).reshape(-1, 1)
    centres = np.array([-1.6, -0.8, 0.0, 0.8, 1.6])  # the 5 bin centres over [-2, 2]
    assert np.abs(torques - centres).min(1).max() < 1e-6
    with pytest.raises(TokWorldError, match="at least 2 bins, got 1"):
        ModelChoices(action_bins=1)  # refused before anything runs


def test_finetuning_a_vector_run_checks_the_new_envs_observations(vector_run, tiny_run, tmp_path):
    metrics = finetune(OnlineConfig("Pendulum-v1", **MICRO), tmp_path / "ok", str(vector_run),
                       progress=False)  # fmt: skip
    _, codec = load_run(tmp_path / "ok")
    assert torch.equal(codec.edges, load_run(vector_run)[1].edges)  # the pretrained codec
    assert metrics["final_eval"]["episodes"] == 2
    with pytest.raises(TokWorldError, match="reads 3-dimensional vector observations"):
        finetune(OnlineConfig("CartPole-v1", **MICRO), tmp_path / "dims", str(vector_run))
    with pytest.raises(TokWorldError, match="reads frames observations, not vector"):
        cfg = OnlineConfig("CartPole-v1", observation="vector", **MICRO)
        finetune(cfg, tmp_path / "kind", str(tiny_run))


def test_bench_codec_error_shrinks_with_more_bins_and_covers_both_binnings(pendulum, capsys):
    from tokworld.eval.bench_codec import main

    [result] = main(["--dataset", str(pendulum), "--bins", "8", "32"])
    assert result["dims"] == 3 and len(result["step_scale"]) == 3
    by = {(r["binning"], r["bins"]): r for r in result["results"]}
    assert set(by) == {("quantile", 8), ("quantile", 32), ("uniform", 8), ("uniform", 32)}
    for binning in ("quantile", "uniform"):
        assert by[binning, 32]["mean_ratio"] < by[binning, 8]["mean_ratio"]
        assert 0 < by[binning, 32]["nmse"] < by[binning, 8]["nmse"]
    assert json.loads(capsys.readouterr().out) == [result]


def test_the_dream_of_a_vector_run_observes_vectors_and_refuses_frames(
    vector_run, pendulum, minigrid_dataset, tiny_run
):
    from tokworld.dream import DreamVectorEnv

    env = DreamVectorEnv(str(vector_run), str(pendulum), num_envs=3, context_steps=2)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (3, 3) and obs.dtype == np.float32
    assert env.single_observation_space.shape == (3,)
    _, codec = load_run(vector_run)
    centres = codec.centres.numpy()  # every imagined value is one of its dimension's centres
    obs, *_ = env.step(env.action_space.sample())
    for d in range(3):
        assert np.isin(obs[:, d], centres[d]).all()
    with pytest.raises(TokWorldError, match="reads vector observations but the dataset has"):
        DreamVectorEnv(str(vector_run), str(minigrid_dataset))
    with pytest.raises(TokWorldError, match="reads frames observations but the dataset has"):
        DreamVectorEnv(str(tiny_run), str(pendulum))
