"""The actor-critic and its training in imagination: returns, gradients, heads, save/load, and
the imagined return rising as the policy learns."""

from __future__ import annotations

import datasets
import gymnasium as gym
import numpy as np
import pytest
import torch

from tokworld.config import TokWorldConfig
from tokworld.data.windows import RealContext
from tokworld.errors import TokWorldError
from tokworld.imagine import ImaginationEngine
from tokworld.model import TokWorldModel
from tokworld.policy import ActorCritic, Agent, PolicyConfig, build_policy
from tokworld.run import load_run
from tokworld.tokenizer.codecs import ActionCodec
from tokworld.tokenizer.vocab import Vocabulary
from tokworld.training.imagination import (
    ImaginationConfig,
    ImaginationLoss,
    lambda_returns,
    train_policy,
)


def test_lambda_returns_match_a_hand_computed_case():
    rewards = torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 1.0, 2.0], [1.0, 1.0, 1.0]])  # of the state after each action
    continues = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    # Row 0: R2 = 2 + .9 * 2 = 3.8; step 1 ended: R1 = 0; R0 = 1 + .9 * (.5 * .5 + .5 * 0).
    # Row 1: R2 = 1 + .9 = 1.9; R1 = .9 * (.5 + .5 * 1.9) = 1.305; R0 = .9 * (.5 + .5 * 1.305).
    expected = torch.tensor([[1.225, 0.0, 3.8], [1.03725, 1.305, 1.9]])
    got = lambda_returns(rewards, values, continues, gamma=0.9, lam=0.5)
    torch.testing.assert_close(got, expected)


def test_lambda_returns_limits():
    """lam = 0: one-step TD targets; lam = 1: discounted rewards plus the last value."""
    torch.manual_seed(0)
    r, v = torch.rand(4, 6), torch.rand(4, 6)
    c = torch.ones(4, 6)
    torch.testing.assert_close(lambda_returns(r, v, c, 0.9, 0.0), r + 0.9 * v)
    discount = 0.9 ** torch.arange(6.0)
    mc = (r * discount).sum(1) + 0.9**6 * v[:, -1]
    torch.testing.assert_close(lambda_returns(r, v, c, 0.9, 1.0)[:, 0], mc)


@pytest.fixture(scope="module")
def tiny(tiny_run):
    """The shared tiny MiniGrid run's tokenizer and world model, and its dataset's codes."""
    world_model, tokenizer = load_run(tiny_run)
    codes = datasets.load_from_disk(str(tiny_run / "codes"))
    return tokenizer.eval(), world_model.eval(), codes


def _params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("policy_input", ["frames", "tokens"])
def test_actor_gradient_never_reaches_the_world_model(tiny, tmp_path, policy_input):
    tokenizer, world_model, codes = tiny
    policy = build_policy("tiny", world_model.vocab.action, tokenizer, policy_input)
    before_wm, before_tok, before_pi = _params(world_model), _params(tokenizer), _params(policy)
    cfg = ImaginationConfig(steps=2, batch_size=3, horizon=4, context_steps=2, log_every=1)
    metrics = train_policy(policy, world_model, tokenizer, codes, cfg, tmp_path, progress=False)
    assert all(p.grad is None for p in world_model.parameters())
    assert all(p.grad is None for p in tokenizer.parameters())
    for name, value in _params(world_model).items():
        assert torch.equal(value, before_wm[name]), name
    for name, value in _params(tokenizer).items():
        assert torch.equal(value, before_tok[name]), name
    changed = [k for k, v in _params(policy).items() if not torch.equal(v, before_pi[k])]
    assert "actor.weight" in changed and "critic.weight" in changed
    assert metrics["steps"] == 2 and metrics["entropy"] > 0
    assert (tmp_path / "train_state" / "model.safetensors").exists()


def test_imagination_loss_backward_touches_only_the_policy(tiny):
    tokenizer, world_model, codes = tiny
    from tokworld.data.windows import RealContext
    from tokworld.imagine import ImaginationEngine

    policy = build_policy("tiny", world_model.vocab.action, tokenizer, "frames")
    module = ImaginationLoss(policy, ImaginationConfig(horizon=3, context_steps=2))
    module.engine = ImaginationEngine(world_model, tokenizer.decode)
    loss, metrics = module(RealContext(codes, 2, seed=0).sample(4))
    loss.backward()
    assert all(p.grad is None for p in world_model.parameters())
    assert all(p.grad is None for p in module.target.parameters())
    assert policy.actor.weight.grad is not None and policy.encoder.net[0].weight.grad is not None
    assert metrics["return_scale"] > 0  # the scale (from 0) followed the returns' spread


def test_train_policy_rejects_a_policy_for_other_actions(tiny, tmp_path):
    tokenizer, world_model, codes = tiny
    policy = build_policy("tiny", ActionCodec.from_space(gym.spaces.Discrete(3)), tokenizer)
    with pytest.raises(TokWorldError, match="acts in Discrete"):
        train_policy(policy, world_model, tokenizer, codes, ImaginationConfig(steps=1), tmp_path)


SPACES = [
    gym.spaces.Discrete(5),
    gym.spaces.MultiDiscrete([3, 4]),
    gym.spaces.Box(-2.0, 1.0, (3,), dtype=float),
]


@pytest.mark.parametrize("space", SPACES, ids=["Discrete", "MultiDiscrete", "Box"])
def test_action_heads_give_actions_the_world_model_reads_exactly(space):
    codec = ActionCodec.from_space(space, bins=8)
    policy = ActorCritic(PolicyConfig.preset("tiny", codec, "tokens", codebook_size=64))
    codes = torch.randint(0, 64, (5, 16))
    action, state = policy.act(codes)
    greedy, _ = policy.act(codes, state, greedy=True)
    assert state[0].shape == (1, 5, 64)
    for a in (action, greedy):
        assert space.contains(a[0].numpy().astype(space.dtype))
        assert torch.equal(codec.decode(codec.encode(a)), a)  # a bin centre / valid code
    entropy = policy.distribution(policy.step(codes).logits).entropy()
    most = sum(torch.log(torch.tensor(float(n))) for n in codec.sizes)  # uniform in every part
    assert entropy.shape == (5,) and (entropy > 0).all() and (entropy <= most + 1e-5).all()


def test_policy_save_load_is_bit_exact(tmp_path):
    codec = ActionCodec.from_space(gym.spaces.Discrete(4))
    policy = ActorCritic(PolicyConfig.preset("tiny", codec))
    policy.save_pretrained(tmp_path / "policy")
    loaded = ActorCritic.from_pretrained(tmp_path / "policy")
    assert loaded.config == policy.config
    for (k, a), b in zip(policy.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    frames = torch.rand(2, 3, 3, 64, 64)
    torch.testing.assert_close(policy(frames).logits, loaded(frames).logits, rtol=0, atol=0)


def test_a_separate_critic_keeps_the_value_loss_out_of_the_actor():
    """`critic="separate"`: the value's gradient reaches only the critic's own encoder and LSTM,
    the logits' only the actor's; the state carries both LSTMs; save/load is exact."""
    codec = ActionCodec.from_space(gym.spaces.Discrete(3))
    cfg = PolicyConfig.preset("tiny", codec, "tokens", codebook_size=64, critic="separate")
    policy = ActorCritic(cfg)
    codes = torch.randint(0, 64, (2, 5, 16))
    out = policy(codes)
    assert len(out.state) == 4 and all(s.shape == (1, 2, 64) for s in out.state)
    out.value.sum().backward()
    touched = {n.split(".")[0] for n, p in policy.named_parameters() if p.grad is not None}
    assert touched == {"critic", "critic_encoder", "critic_lstm"}
    policy.zero_grad(set_to_none=True)
    policy(codes).logits.sum().backward()
    touched = {n.split(".")[0] for n, p in policy.named_parameters() if p.grad is not None}
    assert touched == {"actor", "encoder", "lstm"}
    stepped = policy(codes[:, 2:], policy(codes[:, :2]).state)  # the state carries both LSTMs
    torch.testing.assert_close(stepped.value, out.value[:, 2:])
    torch.testing.assert_close(stepped.logits, out.logits[:, 2:])
    shared = ActorCritic(PolicyConfig.preset("tiny", codec, "tokens", codebook_size=64))
    shared(codes).value.sum().backward()
    assert shared.encoder.embed.weight.grad is not None  # shared: the value shapes the encoder


@pytest.mark.parametrize("value_bins", [0, 255])
def test_separate_critic_policy_trains_saves_and_acts(tiny, tmp_path, value_bins):
    tokenizer, world_model, codes = tiny
    action = world_model.vocab.action
    policy = build_policy("tiny", action, tokenizer, "tokens", "separate", value_bins)
    before = _params(policy)["critic.weight"]
    cfg = ImaginationConfig(steps=2, batch_size=3, horizon=3, context_steps=2, log_every=1)
    result = train_policy(
        policy, world_model, tokenizer, codes, cfg, tmp_path / "pi", progress=False
    )
    assert result["value_loss"] > 0 and not torch.equal(before, policy.critic.weight)
    policy.save_pretrained(tmp_path / "policy")
    loaded = ActorCritic.from_pretrained(tmp_path / "policy")
    assert (loaded.config.critic, loaded.config.value_bins) == ("separate", value_bins)
    obs = codes[:4]["codes"]
    obs = torch.as_tensor(np.asarray(obs)).unsqueeze(1)
    torch.testing.assert_close(policy(obs).value, loaded(obs).value, rtol=0, atol=0)
    agent = Agent(loaded, tokenizer, greedy=True)
    agent(torch.zeros(3, 64, 64, 3, dtype=torch.uint8))
    agent.reset([1])
    assert all(s[:, 1].abs().sum() == 0 and s[:, 0].abs().sum() > 0 for s in agent.state)


def test_agent_resets_rows_and_explores(tiny):
    tokenizer, world_model, _ = tiny
    policy = build_policy("tiny", world_model.vocab.action, tokenizer, "tokens")
    agent = Agent(policy, tokenizer, greedy=True, epsilon=1.0, seed=0)
    frames = torch.zeros(6, 64, 64, 3, dtype=torch.uint8)
    actions = agent(frames)
    assert actions.shape == (6,) and len(set(actions.tolist())) > 1  # epsilon = 1: random
    agent.reset([1, 2])
    assert agent.state[0][:, 1:3].abs().sum() == 0 and agent.state[0][:, 0].abs().sum() > 0
    single = Agent(policy, tokenizer, greedy=True)(frames[0].numpy())
    assert single.shape == () and 0 <= int(single) < 7


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda c: PolicyConfig.preset("tiny", c, "pixels"), "policy_input must be one of"),
        (lambda c: PolicyConfig.preset("huge", c), "unknown policy preset"),
        (lambda c: PolicyConfig.preset("tiny", c, critic="own"), "critic must be one of"),
        (lambda c: PolicyConfig.preset("tiny", c, value_bins=1), "value_bins must be 0 or"),
        (lambda c: PolicyConfig.preset("tiny", c, depth=3), "unknown policy config field"),
        (lambda c: ImaginationConfig(horizon=0), "horizon must be >= 1"),
        (
            lambda c: ActorCritic(PolicyConfig.preset("tiny", c))(torch.rand(2, 3, 32, 32)),
            "the frames policy reads",
        ),  # fmt: skip
        (lambda c: ActorCritic.from_pretrained("/nonexistent/policy"), "is not a policy"),
    ],
)
def test_bad_inputs_give_one_line_errors(make, message):
    codec = ActionCodec.from_space(gym.spaces.Discrete(3))
    with pytest.raises(TokWorldError, match=message) as err:
        make(codec)
    assert "\n" not in str(err.value)


# ---- learning: in a world whose reward the world model knows, the imagined return rises ------

LEVER = gym.spaces.Discrete(2)  # action 1 pays 1, action 0 pays 0; the frame never changes
LEVER_CODES, LEVER_K, HORIZON = 8, 4, 5


def _lever_world_model() -> TokWorldModel:
    """A tiny world model trained on random lever pulls until it predicts every reward."""
    torch.manual_seed(0)
    vocab = Vocabulary.from_spaces(LEVER, LEVER_CODES, LEVER_K)
    model = TokWorldModel(TokWorldConfig.preset("tiny", vocab))
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(60):
        action = torch.randint(0, 2, (8, 8), generator=generator)  # (B, T)
        batch = {
            "codes": torch.zeros(8, 8, LEVER_K, dtype=torch.long),
            "action": action,
            "reward": action.float(),
            "terminated": torch.zeros(8, 8, dtype=torch.bool),
            "mask": torch.ones(8, 8, dtype=torch.bool),
        }
        loss, metrics = model.compute_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert metrics["reward_acc"] == 1.0
    return model.eval()


def _lever_codes(episodes: int = 4, length: int = 16) -> datasets.Dataset:
    """A codes dataset of random lever pulls to take real context from."""
    n = episodes * length
    action = np.random.default_rng(0).integers(0, 2, n)
    return datasets.Dataset.from_dict(
        {
            "episode_index": np.arange(n) // length,
            "frame_index": np.arange(n) % length,
            "codes": np.zeros((n, LEVER_K), np.int64),
            "action": action,
            "reward": action.astype(np.float32),
            "terminated": np.zeros(n, bool),
            "truncated": np.arange(n) % length == length - 1,
        }
    )


@torch.no_grad()
def _imagined_return(world_model, context, policy=None) -> float:
    """Mean reward summed over HORIZON imagined steps from `context`, acting with `policy`
    (sampled) or, without one, uniformly at random."""
    n = len(context["codes"])
    engine = ImaginationEngine(world_model, seed=1)
    generator = torch.Generator().manual_seed(1)
    step, state, total = engine.start(context), None, torch.zeros(n)
    for _ in range(HORIZON):
        if policy is None:
            action = torch.randint(0, 2, (n,), generator=generator)
        else:
            action, state = policy.act(step.codes, state, generator=generator)
        step = engine.step(action)
        total += step.reward
    return float(total.mean())


def test_the_imagined_return_rises_as_the_policy_trains(tmp_path):
    world_model, codes = _lever_world_model(), _lever_codes()
    context = RealContext(codes, 2, seed=1).sample(32)
    torch.manual_seed(0)
    codec = world_model.vocab.action
    sizes = dict(codebook_size=LEVER_CODES, tokens_per_frame=LEVER_K)
    policy = ActorCritic(PolicyConfig.preset("tiny", codec, "tokens", **sizes))
    random = _imagined_return(world_model, context)
    before = _imagined_return(world_model, context, policy)
    cfg = ImaginationConfig(steps=20, batch_size=16, horizon=HORIZON, context_steps=2, lr=3e-3)
    # The policy reads codes and the dataset holds them: no frame is ever encoded or decoded,
    # so an empty module stands in for the tokenizer.
    train_policy(policy, world_model, torch.nn.Identity(), codes, cfg, tmp_path, progress=False)
    after = _imagined_return(world_model, context, policy)
    assert after > 0.8 * HORIZON  # nearly always pulls the lever that pays
    assert after > before + 1.5 and after > random + 1.5, (random, before, after)
