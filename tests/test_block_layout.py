"""A block order other than the default: the vocabulary, the model's masks and losses, the
imagination engine and fine-tuning surgery all follow `Vocabulary.order`, nothing else."""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from tokworld.adapt import ROWS, adapt_world_model
from tokworld.config import TokWorldConfig
from tokworld.imagine import ImaginationEngine
from tokworld.model import TokWorldModel
from tokworld.sampling import SamplingConfig
from tokworld.tokenizer import Kind, RewardCodec, Vocabulary

ORDER = (Kind.FRAME, Kind.ACTION, Kind.END, Kind.REWARD)
K = 4


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    space = gym.spaces.MultiDiscrete([3, 2])
    return Vocabulary.from_spaces(space, 16, K, reward_codec="sign", order=ORDER)


@pytest.fixture(scope="module")
def model(vocab) -> TokWorldModel:
    torch.manual_seed(0)
    # event_balance 0: each kind's loss is the plain mean the test recomputes by position
    return TokWorldModel(TokWorldConfig.preset("tiny", vocab, event_balance=0.0)).eval()


def _steps(vocab: Vocabulary, b: int, t: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "codes": torch.randint(0, vocab.codebook_size, (b, t, K), generator=g),
        "action": torch.stack([torch.randint(0, n, (b, t), generator=g) for n in (3, 2)], -1),
        "reward": torch.randint(-1, 2, (b, t), generator=g).float(),
        "terminated": torch.rand(b, t, generator=g) < 0.3,
        "mask": torch.ones(b, t, dtype=torch.bool),
    }


def _encode(vocab: Vocabulary, steps: dict[str, torch.Tensor]) -> torch.Tensor:
    blocks = vocab.encode(steps["codes"], steps["action"], steps["reward"], steps["terminated"])
    return rearrange(blocks, "b t n -> b (t n)")


def test_the_id_space_starts_at_frame_codes_with_no_special_ids(vocab):
    assert [k.name for k in Kind] == ["FRAME", "ACTION", "REWARD", "END"]
    assert vocab.id_slice(Kind.FRAME) == slice(0, 16)
    assert vocab.id_slice(Kind.REWARD) == slice(16, 19)
    assert vocab.id_slice(Kind.END) == slice(19, 21)
    assert vocab.id_slice(Kind.ACTION) == slice(21, 26) and vocab.size == 26  # actions last


def test_block_layout_encode_decode_and_masks_follow_the_order(vocab):
    assert vocab.order == ORDER
    assert vocab.block_kinds == (Kind.FRAME,) * K + (Kind.ACTION,) * 2 + (Kind.END, Kind.REWARD)
    assert (vocab.segment(Kind.END), vocab.segment(Kind.REWARD)) == (slice(6, 7), slice(7, 8))
    assert vocab.step_segments == (Kind.ACTION, Kind.END, Kind.REWARD, Kind.FRAME)
    steps = _steps(vocab, 5, 3)
    blocks = vocab.encode(steps["codes"], steps["action"], steps["reward"], steps["terminated"])
    end, reward = vocab.id_slice(Kind.END), vocab.id_slice(Kind.REWARD)
    assert torch.equal(blocks[..., 6] - end.start, steps["terminated"].long())
    assert torch.equal(blocks[..., 7] - reward.start, steps["reward"].long() + 1)
    decoded = vocab.decode(blocks)
    for name, value in zip(decoded._fields, decoded, strict=True):
        assert torch.equal(value, steps[name]), name
    stream = rearrange(blocks, "b t n -> b (t n)")
    mask = vocab.allowed_mask(stream.shape[1])
    assert mask[torch.arange(stream.shape[1]), stream].all()
    assert mask[6, end].all() and not mask[6, reward].any()
    assert mask[7, reward].all() and not mask[7, end].any()
    assert vocab.kinds(4, start=6).tolist() == [Kind.END, Kind.REWARD, Kind.FRAME, Kind.FRAME]
    again = Vocabulary.from_dict(vocab.to_dict())
    assert again == vocab and again.order == ORDER


def test_model_masks_and_losses_follow_the_order(vocab, model):
    steps = _steps(vocab, 2, 3)
    tokens = _encode(vocab, steps)
    with torch.no_grad():
        logits = model(tokens[:, :-1]).logits
        _, metrics = model.compute_loss(steps)
    for p in range(tokens.shape[1] - 1):
        lo, hi = vocab.block_ranges[(p + 1) % vocab.block_size]
        assert torch.isfinite(logits[:, p, lo:hi]).all()
        assert torch.isinf(logits[:, p, :lo]).all() and torch.isinf(logits[:, p, hi:]).all()
    block = vocab.block_size
    for kind in (Kind.END, Kind.REWARD):  # each loss reads its own kind's positions
        at = [p for p in range(1, tokens.shape[1]) if p % block == vocab.segment(kind).start]
        before = logits[:, [p - 1 for p in at]]
        expected = F.cross_entropy(before.flatten(0, 1), tokens[:, at].flatten())
        assert torch.allclose(metrics[f"{kind.name.lower()}_loss"], expected)


def test_imagination_walks_the_blocks_in_order(vocab, model):
    context = _steps(vocab, 2, 3, seed=1)
    engine = ImaginationEngine(model, sampling=SamplingConfig(temperature=2.0), seed=3)
    fed: dict[int, torch.Tensor] = {}
    forwards = []
    feed = engine._feed

    def record(tokens):
        for i in range(tokens.shape[1]):
            fed[engine.pos - engine.origin + i] = tokens[:, i]  # at its index in the stream
        forwards.append(tokens.shape[1])
        return feed(tokens)

    engine._feed = record
    engine.start(context)
    first = engine.pos - engine.origin
    assert first == 2 * vocab.block_size + K - 1  # the pending token: the last frame's last code
    actions = torch.tensor([[[0, 1], [2, 0]], [[1, 1], [2, 1]], [[0, 0], [1, 0]]])
    out = []
    for action in actions:
        before = len(forwards)
        out.append(engine.step(action))
        assert len(forwards) - before == K + 2
    last = engine.pos - engine.origin
    fed[last] = engine.pending[:, 0]
    assert sorted(fed) == list(range(first, last + 1))
    stream = torch.stack([fed[p] for p in sorted(fed)], 1)
    for p, ids in zip(sorted(fed), stream.T, strict=True):
        lo, hi = vocab.block_ranges[p % vocab.block_size]
        assert ((ids >= lo) & (ids < hi)).all(), p
    # The stream the engine fed is the vocabulary's encoding of what it reports.
    imagined = {
        "codes": torch.cat([context["codes"]] + [s.codes[:, None] for s in out], 1),
        "action": torch.cat([context["action"][:, :-1], rearrange(actions, "n b d -> b n d"),
                             torch.zeros(2, 1, 2, dtype=torch.long)], 1),
        "reward": torch.cat([context["reward"][:, :-1]] + [s.reward[:, None] for s in out]
                            + [torch.zeros(2, 1)], 1),
        "terminated": torch.cat([context["terminated"][:, :-1]]
                                + [s.terminated[:, None] for s in out]
                                + [torch.zeros(2, 1, dtype=torch.bool)], 1),
    }  # fmt: skip
    expected = _encode(vocab, imagined)
    assert torch.equal(expected[:, first : last + 1], stream)
    assert torch.equal(expected[:, : first + 1], engine._context_tokens(context))


def test_fine_tuning_copies_exactly_the_shared_rows(vocab, model):
    adapted = adapt_world_model(model, gym.spaces.Discrete(5), seed=7)
    new = adapted.vocab
    assert new.order == ORDER and new.id_slice(Kind.ACTION) == slice(21, 26)
    old_ids, new_ids = vocab.shared_ids(new)
    assert torch.equal(old_ids, torch.arange(21)) and torch.equal(new_ids, torch.arange(21))
    torch.manual_seed(7)
    fresh = TokWorldModel(adapted.config).state_dict()
    fresh_rows = torch.ones(new.size, dtype=torch.bool)
    fresh_rows[new_ids] = False
    for name in ROWS:
        ours, theirs = adapted.state_dict()[name], model.state_dict()[name]
        assert torch.equal(ours[new_ids], theirs[old_ids])
        assert torch.equal(ours[fresh_rows], fresh[name][fresh_rows])


def test_shared_ids_leave_out_every_kind_whose_codec_changed(vocab):
    other = dataclasses.replace(vocab, codebook_size=8, reward=RewardCodec("symlog", 5, 1.0))
    ours, theirs = vocab.shared_ids(other)
    assert torch.equal(ours, torch.arange(19, 26))  # ends and actions
    assert torch.equal(theirs, torch.arange(13, 20))
    assert torch.equal(vocab.shared_ids(vocab)[0], torch.arange(vocab.size))
