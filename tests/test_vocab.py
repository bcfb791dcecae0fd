"""The shared vocabulary and its codecs: round trips, id-space layout, masks, serialisation."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tokworld.errors import TokWorldError
from tokworld.tokenizer import ActionCodec, Kind, RewardCodec, Vocabulary

finite = {"allow_nan": False, "allow_infinity": False}
ORDERS = [
    (Kind.FRAME, Kind.ACTION, Kind.REWARD, Kind.END),
    (Kind.FRAME, Kind.ACTION, Kind.END, Kind.REWARD),
]


@st.composite
def discrete_spaces(draw):
    return gym.spaces.Discrete(draw(st.integers(1, 20)), start=draw(st.integers(-5, 5)))


@st.composite
def multi_discrete_spaces(draw):
    return gym.spaces.MultiDiscrete(draw(st.lists(st.integers(1, 12), min_size=1, max_size=5)))


@st.composite
def box_spaces(draw):
    dims = draw(st.integers(1, 4))
    low = np.array(draw(st.lists(st.floats(-100, 100, **finite), min_size=dims, max_size=dims)))
    width = draw(st.lists(st.floats(0.01, 200, **finite), min_size=dims, max_size=dims))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    low = low.astype(dtype)
    return gym.spaces.Box(low, (low + np.array(width)).astype(dtype), dtype=dtype)


action_spaces = st.one_of(discrete_spaces(), multi_discrete_spaces(), box_spaces())


@st.composite
def vocabularies(draw, spaces=action_spaces):
    space = draw(spaces)
    reward_codec = draw(st.sampled_from(["sign", "symlog"]))
    return Vocabulary.from_spaces(
        space,
        codebook_size=draw(st.integers(1, 64)),
        tokens_per_frame=draw(st.integers(1, 8)),
        reward_codec=reward_codec,
        reward_bins=draw(st.integers(2, 65)),
        reward_bound=draw(st.floats(1, 1000, **finite)),
        action_bins=draw(st.integers(2, 64)),
        order=draw(st.sampled_from(ORDERS)),
    )


def box_actions(space: gym.spaces.Box, batch: int, seed: int) -> np.ndarray:
    """(batch, D) actions inside the box, its corners included."""
    rng = np.random.default_rng(seed)
    low, high = space.low.astype(np.float64), space.high.astype(np.float64)
    actions = low + rng.random((batch, low.size)) * (high - low)
    actions[0], actions[-1] = low, high
    return actions


def sample_actions(space: gym.Space, batch: int, seed: int) -> np.ndarray:
    if isinstance(space, gym.spaces.Box):
        return box_actions(space, batch, seed)
    space.seed(seed)
    return np.stack([space.sample() for _ in range(batch)])


def random_steps(vocab: Vocabulary, space: gym.Space, batch: int, seed: int):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, vocab.codebook_size, (batch, vocab.tokens_per_frame))
    rewards = rng.normal(0, 3, batch)
    terminated = rng.random(batch) < 0.5
    return codes, sample_actions(space, batch, seed), rewards, terminated


# ---- actions -------------------------------------------------------------------------------


@given(discrete_spaces(), st.integers(0, 2**31))
def test_discrete_actions_round_trip_exactly(space, seed):
    vocab = Vocabulary.from_spaces(space, codebook_size=16, tokens_per_frame=4)
    codes, actions, rewards, ends = random_steps(vocab, space, 32, seed)
    step = vocab.decode(vocab.encode(codes, actions, rewards, ends))
    assert torch.equal(step.action, torch.as_tensor(actions))
    assert torch.equal(step.codes, torch.as_tensor(codes))


@given(multi_discrete_spaces(), st.integers(0, 2**31))
def test_multi_discrete_actions_round_trip_exactly(space, seed):
    vocab = Vocabulary.from_spaces(space, codebook_size=16, tokens_per_frame=4)
    codes, actions, rewards, ends = random_steps(vocab, space, 32, seed)
    step = vocab.decode(vocab.encode(codes, actions, rewards, ends))
    assert step.action.shape == (32, len(space.nvec))
    assert torch.equal(step.action, torch.as_tensor(actions))


@given(box_spaces(), st.integers(2, 64), st.integers(0, 2**31))
def test_box_actions_round_trip_within_half_a_bin(space, bins, seed):
    codec = ActionCodec.from_space(space, bins=bins)
    actions = box_actions(space, 64, seed)
    decoded = codec.decode(codec.encode(actions)).double().numpy()
    half_bin = (space.high.astype(np.float64) - space.low.astype(np.float64)) / bins / 2
    slack = 1e-6 * (1 + np.maximum(np.abs(space.low), np.abs(space.high)))
    assert np.all(np.abs(decoded - actions) <= half_bin + slack)
    # A decoded action is a bin centre: it encodes back to its own token.
    assert torch.equal(codec.encode(decoded), codec.encode(actions))


@given(box_spaces(), st.integers(2, 64))
def test_box_bounds_land_in_the_edge_bins_and_actions_beyond_them_are_refused(space, bins):
    codec = ActionCodec.from_space(space, bins=bins)
    offsets = torch.tensor(codec.offsets)
    assert torch.equal(
        codec.encode(space.low) - offsets, torch.zeros(space.shape, dtype=torch.long)
    )
    assert torch.equal(codec.encode(space.high) - offsets, torch.full(space.shape, bins - 1))
    for beyond in (space.low.astype(np.float64) - 1, space.high.astype(np.float64) + 1):
        with pytest.raises(TokWorldError, match="cannot encode action"):
            codec.encode(beyond)


def test_unbounded_box_is_an_error_unless_bounds_are_given():
    space = gym.spaces.Box(-np.inf, np.inf, (2,), dtype=np.float32)
    with pytest.raises(TokWorldError, match="unbounded"):
        Vocabulary.from_spaces(space, codebook_size=8)
    half_open = gym.spaces.Box(np.array([0.0, -np.inf]), np.array([1.0, np.inf]), dtype=np.float64)
    with pytest.raises(TokWorldError, match="unbounded"):
        ActionCodec.from_space(half_open)
    codec = ActionCodec.from_space(half_open, bins=4, bounds=(-2.0, 2.0))
    assert codec.low == (0.0, -2.0) and codec.high == (1.0, 2.0)
    decoded = codec.decode(codec.encode([[0.1, 1.9]]))
    assert torch.allclose(decoded, torch.tensor([[0.125, 1.5]]))


def test_unsupported_action_space_is_an_error():
    with pytest.raises(TokWorldError, match="unsupported action space"):
        Vocabulary.from_spaces(gym.spaces.MultiBinary(3), codebook_size=8)


# ---- rewards and ends ----------------------------------------------------------------------


@given(st.integers(2, 101), st.floats(0.5, 1000, **finite), st.data())
def test_symlog_rewards_round_trip_within_half_a_bin_in_symlog_space(bins, bound, data):
    codec = RewardCodec("symlog", bins, bound)
    rewards = np.array(data.draw(st.lists(st.floats(-bound, bound, **finite), min_size=1)))
    decoded = codec.decode(codec.encode(rewards)).double()
    r = torch.as_tensor(rewards)
    symlog = lambda x: torch.sign(x) * torch.log1p(torch.abs(x))  # noqa: E731
    assert torch.all(torch.abs(symlog(decoded) - symlog(r)) <= codec.bin_width / 2 + 1e-5)
    assert torch.equal(codec.encode(decoded.numpy()), codec.encode(rewards))


def test_symlog_rewards_beyond_the_bound_land_in_the_edge_bins():
    codec = RewardCodec("symlog", 33, 10.0)
    assert codec.encode([-1e9, 1e9]).tolist() == [0, 32]
    assert codec.decode(codec.encode(0.0)).item() == 0.0  # an odd bin count centres a bin on 0


@given(st.lists(st.floats(-1e30, 1e30, **finite), min_size=1))
def test_sign_rewards_decode_to_their_sign(rewards):
    codec = RewardCodec("sign")
    decoded = codec.decode(codec.encode(rewards))
    assert codec.num_tokens == 3
    assert torch.equal(decoded, torch.sign(torch.tensor(rewards, dtype=torch.float64)).float())


def test_unknown_reward_codec_is_an_error():
    with pytest.raises(TokWorldError, match="reward codec"):
        RewardCodec("clip")


@given(vocabularies(), st.integers(0, 2**31))
def test_ends_and_frame_codes_round_trip_exactly(vocab, seed):
    space = _space_of(vocab)
    codes, actions, rewards, ends = random_steps(vocab, space, 16, seed)
    step = vocab.decode(vocab.encode(codes, actions, rewards, ends))
    assert torch.equal(step.terminated, torch.as_tensor(ends))
    assert torch.equal(step.codes, torch.as_tensor(codes))
    assert step.reward.shape == (16,)


# ---- id space and block layout -------------------------------------------------------------


def _space_of(vocab: Vocabulary) -> gym.Space:
    from tokworld.tokenizer.codecs import space_from_dict

    a = vocab.action
    if a.kind == "Discrete":
        return space_from_dict({"type": "Discrete", "n": a.sizes[0], "start": a.start})
    if a.kind == "MultiDiscrete":
        return space_from_dict({"type": "MultiDiscrete", "nvec": list(a.sizes)})
    return space_from_dict({"type": "Box", "low": list(a.low), "high": list(a.high)})


def _kind_slices(vocab: Vocabulary) -> dict[Kind, slice]:
    return {kind: vocab.id_slice(kind) for kind in Kind}


@given(vocabularies())
def test_slices_are_disjoint_and_cover_the_id_space_with_actions_last(vocab):
    slices = sorted(_kind_slices(vocab).values(), key=lambda s: s.start)
    frame, reward, action = (vocab.id_slice(k) for k in (Kind.FRAME, Kind.REWARD, Kind.ACTION))
    assert slices[0] == frame and frame.start == 0  # no special ids
    for before, after in zip(slices, slices[1:], strict=False):
        assert before.stop == after.start  # contiguous, no gap, no overlap
    assert slices[-1] == action and action.stop == vocab.size
    assert all(s.stop > s.start for s in slices)
    assert reward.stop - reward.start == vocab.reward.num_tokens
    assert frame.stop - frame.start == vocab.codebook_size


@given(vocabularies(), st.integers(1, 80), st.integers(0, 200))
def test_allowed_mask_allows_exactly_the_block_ranges_and_agrees_with_kinds(vocab, length, start):
    mask = vocab.allowed_mask(length, start=start)
    kinds = vocab.kinds(length, start=start)
    slices = _kind_slices(vocab)
    assert mask.shape == (length, vocab.size)
    for i in range(length):
        lo, hi = vocab.block_ranges[(start + i) % vocab.block_size]
        expected = torch.zeros(vocab.size, dtype=torch.bool)
        expected[lo:hi] = True
        assert torch.equal(mask[i], expected)
        kind_slice = slices[Kind(int(kinds[i]))]
        assert kind_slice.start <= lo < hi <= kind_slice.stop


@given(vocabularies(), st.integers(0, 2**31))
def test_encoded_steps_obey_the_mask(vocab, seed):
    space = _space_of(vocab)
    tokens = vocab.encode(*random_steps(vocab, space, 8, seed))  # (8, block)
    stream = tokens.reshape(-1)
    mask = vocab.allowed_mask(len(stream))
    assert tokens.shape == (8, vocab.block_size)
    assert bool(mask[torch.arange(len(stream)), stream].all())


def test_block_layout_is_frame_action_reward_end():
    vocab = Vocabulary.from_spaces(gym.spaces.MultiDiscrete([3, 4]), 10, tokens_per_frame=3)
    assert vocab.block_kinds == (Kind.FRAME,) * 3 + (Kind.ACTION,) * 2 + (Kind.REWARD, Kind.END)
    assert vocab.kinds(7, start=5).tolist() == [2, 3, 0, 0, 0, 1, 1]
    action = vocab.id_slice(Kind.ACTION)
    assert vocab.block_ranges[3] == (action.start, action.start + 3)
    assert vocab.block_ranges[4] == (action.start + 3, action.stop)


@pytest.mark.parametrize(
    "order, message",
    [
        (("frame", "action", "reward"), "once"),
        (("frame", "action", "reward", "reward"), "once"),
        (("action", "frame", "reward", "end"), "start with the frame"),
        (("frame", "reward", "action", "end"), "action before"),
        (("frame", "action", "end", "done"), "unknown token kind 'done'"),
    ],
)
def test_invalid_block_orders_are_one_error(order, message):
    with pytest.raises(TokWorldError, match=message):
        Vocabulary.from_spaces(gym.spaces.Discrete(3), 8, order=order)


def test_a_vocabulary_saved_without_an_order_gets_the_default():
    vocab = Vocabulary.from_spaces(gym.spaces.Discrete(3), 8, tokens_per_frame=2)
    saved = vocab.to_dict()
    assert saved.pop("order") == ["frame", "action", "reward", "end"]
    assert Vocabulary.from_dict(saved) == vocab


@given(vocabularies(), st.integers(0, 2**31))
def test_each_kind_round_trips_through_its_own_ids_and_segment(vocab, seed):
    space = _space_of(vocab)
    codes, actions, rewards, ends = random_steps(vocab, space, 8, seed)
    tokens = vocab.encode(codes, actions, rewards, ends)
    for kind, values in zip(Kind, (codes, actions, rewards, ends), strict=True):
        ids = vocab.ids(kind, values)
        assert ids.shape == (8, vocab.count(kind))
        assert torch.equal(tokens[:, vocab.segment(kind)], ids)
        ids_slice = vocab.id_slice(kind)
        assert ((ids >= ids_slice.start) & (ids < ids_slice.stop)).all()
    step = vocab.decode(tokens)
    assert torch.equal(vocab.values(Kind.END, vocab.ids(Kind.END, ends)), torch.as_tensor(ends))
    assert torch.equal(vocab.values(Kind.ACTION, vocab.ids(Kind.ACTION, actions)), step.action)


def test_encode_rejects_bad_frame_codes():
    vocab = Vocabulary.from_spaces(gym.spaces.Discrete(3), codebook_size=8, tokens_per_frame=2)
    with pytest.raises(TokWorldError, match="frame codes"):
        vocab.encode([1, 2, 3], 0, 0.0, False)
    with pytest.raises(TokWorldError, match="frame codes"):
        vocab.encode([1, 8], 0, 0.0, False)


def test_frames_must_be_hxwx3():
    space = gym.spaces.Box(0, 255, (64, 64), dtype=np.uint8)
    with pytest.raises(TokWorldError, match="HxWx3"):
        Vocabulary.from_spaces(gym.spaces.Discrete(3), 8, observation_space=space)


# ---- serialisation and new action spaces ---------------------------------------------------


@given(vocabularies())
def test_json_round_trip_is_exact(vocab):
    again = Vocabulary.from_dict(json.loads(json.dumps(vocab.to_dict())))
    assert again == vocab
    assert again.to_dict() == vocab.to_dict()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vocab.json"
        vocab.save(path)
        assert Vocabulary.load(path) == vocab


def test_loading_a_broken_vocabulary_is_an_error(tmp_path):
    path = tmp_path / "vocab.json"
    path.write_text("{not json")
    with pytest.raises(TokWorldError, match="cannot read vocabulary"):
        Vocabulary.load(path)
    with pytest.raises(TokWorldError, match="cannot read vocabulary"):
        Vocabulary.load(tmp_path / "missing.json")


@given(vocabularies(), action_spaces, st.integers(0, 2**31))
def test_with_action_space_only_moves_the_action_tail(vocab, space, seed):
    new = vocab.with_action_space(space)
    assert new.id_slice(Kind.FRAME) == vocab.id_slice(Kind.FRAME)
    assert new.id_slice(Kind.REWARD) == vocab.id_slice(Kind.REWARD)
    assert new.id_slice(Kind.END) == vocab.id_slice(Kind.END)
    assert new.id_slice(Kind.ACTION).start == vocab.id_slice(Kind.ACTION).start
    assert new.size == vocab.size - vocab.action.num_tokens + new.action.num_tokens
    assert new.reward == vocab.reward
    # The same frame, reward and end give the same ids under both vocabularies.
    codes, _, rewards, ends = random_steps(vocab, space, 4, seed)
    old_tokens = vocab.encode(codes, sample_actions(_space_of(vocab), 4, seed), rewards, ends)
    new_tokens = new.encode(codes, sample_actions(space, 4, seed), rewards, ends)
    k = vocab.tokens_per_frame
    assert torch.equal(old_tokens[:, :k], new_tokens[:, :k])
    assert torch.equal(old_tokens[:, -2:], new_tokens[:, -2:])
    assert math.isclose(new.reward.bin_width, vocab.reward.bin_width)
