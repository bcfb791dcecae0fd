"""Block decoding (block teacher forcing): a step's reward, end and K frame codes are each read
off the output at their slot a block before, which sees its group (the previous reward and end,
the frame, the action) and the groups before; the layout, the mask, the loss and the cached
imagination against one forward over the stream. What every one-forward mode shares (one
forward a step, restarts, snapshots, compile, the command line) is in test_parallel_frames.py."""

from __future__ import annotations

import gymnasium as gym
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from one_forward import DEFAULT, SWAPPED, K, greedy_rollout, model_of, steps_of, stream_of, vocab_of

from tokworld.config import TokWorldConfig
from tokworld.errors import TokWorldError
from tokworld.model import TokWorldModel
from tokworld.tokenizer import Kind, Vocabulary


def _stream_logits(model: TokWorldModel, stream: torch.Tensor, window: int | None = None):
    """One forward over a block stream (B, L) from its origin, under the group mask (and
    a sliding `window` that ends at each token's group end): logits (B, L, V)."""
    positions = torch.arange(stream.shape[1]) + model.origin
    mask = model.group_mask(positions)
    if window is not None:
        mask &= positions[None, :] > model.vocab.group_last(positions)[:, None] - window
    with torch.no_grad():
        return model(stream, position_ids=positions[None], attention_mask=mask[None, None]).logits


def _lead(vocab: Vocabulary, tokens: torch.Tensor) -> torch.Tensor:
    """`tokens` (B, L) with a block stream's lead in front."""
    return torch.cat([vocab.lead_ids().expand(len(tokens), -1), tokens], 1)


@pytest.mark.parametrize("order", [DEFAULT, SWAPPED])
def test_block_groups_end_at_each_action_and_the_lead_is_no_reward_and_no_end(order):
    vocab = vocab_of(order)
    block = vocab.block_size  # K + 1 + 2
    assert vocab.predicted_kinds == tuple(k for k in order[2:]) + (Kind.FRAME,) * K
    assert vocab.block_origin == K + 1  # the lead fills block 0's slots after the action
    no_event = vocab.encode(torch.zeros(K), 0, 0.0, False)  # a step with no reward, no end
    assert torch.equal(vocab.lead_ids(), no_event[K + 1 :])
    positions = torch.arange(3 * block) + vocab.block_origin
    last = vocab.group_last(positions)
    # [r d](block 0) [o o o o a](block 1) | [r d](block 1) [o o o o a](block 2) | ...
    assert last.tolist() == [block + K] * block + [2 * block + K] * block + [3 * block + K] * block
    assert (vocab.kinds(len(last), 0)[last % block] == Kind.ACTION).all()


def test_block_tokens_see_their_group_and_the_groups_before():
    vocab = vocab_of()
    model = model_of(vocab, "block")
    block = vocab.block_size
    mask = model.group_mask(torch.arange(3 * block) + model.origin)
    group = torch.arange(3 * block) // block  # a block stream from its origin
    assert torch.equal(mask, group[None, :] <= group[:, None])


@pytest.mark.parametrize("order", [DEFAULT, SWAPPED])
def test_block_logits_stay_in_the_kind_of_the_slot_a_block_later(order):
    vocab = vocab_of(order, gym.spaces.MultiDiscrete([3, 2]))
    model = model_of(vocab, "block")
    tokens = rearrange(vocab.encode(*list(steps_of(vocab, 2, 3).values())[:4]), "b t n -> b (t n)")
    stream = _lead(vocab, tokens)
    logits = _stream_logits(model, stream)
    for i, row in enumerate(logits[0]):
        lo, hi = vocab.block_ranges[(i + model.origin) % vocab.block_size]
        assert torch.isfinite(row[lo:hi]).all()
        assert torch.isinf(row[:lo]).all() and torch.isinf(row[hi:]).all()


def test_the_block_loss_reads_each_kind_a_block_before_and_skips_padding():
    vocab = vocab_of()
    model = model_of(vocab, "block")
    batch = steps_of(vocab, 2, 3)
    batch["mask"][1, 2] = False  # the second row's last step is padding
    tokens = model.tokens_of(batch)
    stream = _lead(vocab, tokens)
    logits = _stream_logits(model, stream[:, : tokens.shape[1]])
    with torch.no_grad():
        _, metrics = model.compute_loss(batch)
    block, length = vocab.block_size, tokens.shape[1]
    kinds = vocab.kinds(stream.shape[1], model.origin)
    for kind in (Kind.REWARD, Kind.END, Kind.FRAME):
        # every token of the kind in the window but the first frame, from the slot before it
        at = [i for i in range(block, stream.shape[1]) if kinds[i] == kind]
        rows = [(b, i) for b in range(2) for i in at if batch["mask"][b, (i - 2) // block]]
        picked = torch.stack([logits[b, i - block] for b, i in rows])
        target = torch.stack([stream[b, i] for b, i in rows])
        expected = F.cross_entropy(picked, target)
        torch.testing.assert_close(metrics[f"{kind.name.lower()}_loss"], expected)
    assert stream.shape[1] - length == 2  # the window's last reward and end: read, never fed
    assert "action_loss" not in metrics  # actions are given, not predicted


@pytest.mark.parametrize("order", [DEFAULT, SWAPPED])
@pytest.mark.parametrize("steps", [3, 9])  # within the 4-step window, and well beyond it
def test_cached_block_imagination_equals_one_forward_over_the_window(order, steps):
    vocab = vocab_of(order, gym.spaces.MultiDiscrete([3, 2]))
    model = model_of(vocab, "block")
    seen, context_and_steps = greedy_rollout(model, steps)
    stream = _lead(vocab, stream_of(vocab, *context_and_steps))
    window = model.config.window_tokens  # beyond it, a sliding window over stream positions
    logits = _stream_logits(model, stream, window)
    # Step s reads the outputs of the group it writes: the last context frame's, then each
    # imagined frame's, with the reward and end before it.
    block, waiting = vocab.block_size, len(vocab.predicted_kinds)
    at = torch.cat([torch.arange(waiting) + (1 + s) * block for s in range(steps)])
    torch.testing.assert_close(torch.cat(seen, 1), logits[:, at], atol=1e-5, rtol=1e-5)
    assert torch.equal(logits[:, at].argmax(-1), stream[:, at + block])  # greedy: its tokens


def test_block_decoding_saves_and_refuses_an_action_loss(tmp_path):
    vocab = vocab_of()
    model = model_of(vocab, "block")
    model.save_pretrained(tmp_path)
    loaded = TokWorldModel.from_pretrained(tmp_path)
    assert loaded.decoding == "block" and not hasattr(loaded, "queries")
    tokens = _lead(vocab, model.tokens_of(steps_of(vocab, 1, 2)))
    assert torch.equal(_stream_logits(loaded, tokens), _stream_logits(model, tokens))
    with pytest.raises(TokWorldError, match="action_loss_weight needs frame_decoding"):
        TokWorldConfig.preset("tiny", vocab, frame_decoding="block", action_loss_weight=1.0)
