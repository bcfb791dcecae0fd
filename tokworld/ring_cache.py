"""A fixed-size KV cache for imagination: a ring of slots per layer, written in place.

transformers' `DynamicCache` concatenates the whole cache on every new token, which makes a
token cost O(window) in copies; with a ring, a new token overwrites the oldest slot and nothing
moves. Keys carry their rotary (RoPE) phase from the moment they were written and attention is
order-free over keys, so slot order does not matter: `prepare(positions)` tells each new token
which slots it may see (written, not in its future, inside its window, of its row's context).

The ring holds `window + spare` slots: a forward of up to `spare + 1` tokens then never
overwrites a slot that its earliest token still sees, so every token sees exactly the `window`
positions up to the last it may see.
Parallel decoding's queries are written like any token, at the positions of the tokens they
predict (later in the stream than every real token of their forward, so no real token sees
them), and `release`d after the forward. Block decoding's tokens see their whole group, written
in the same forward (`prepare(positions, sees)`).
"""

from __future__ import annotations

import torch
from einops import rearrange
from transformers import AttentionInterface
from transformers.cache_utils import Cache, DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward

ATTENTION = "tokworld_ring"


class Slots:
    """The ring's slot count and the slots the next forward writes, shared by the ring and its
    layers. The layers hold this, not the ring: a ring and its layers then form no reference
    cycle, so a dropped cache frees its buffers at once. (Through a cycle they waited for
    Python's cyclic collector, which runs on object counts, not memory: a planner starting
    imagination at every real step grew to 8 GB.)"""

    def __init__(self, count: int, device: torch.device):
        self.count = count
        self.write = torch.zeros(0, dtype=torch.long, device=device)


class RingLayer(DynamicLayer):
    """One layer's keys and values in the ring's preallocated slots."""

    def __init__(self, slots: Slots):
        super().__init__()
        self.slots = slots

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Write (B, H, q, D) states at the ring's current slots; return all slots."""
        if not self.is_initialized:
            b, h, _, d = key_states.shape
            shape = (b, h, self.slots.count, d)
            self.keys = key_states.new_zeros(shape)
            self.values = value_states.new_zeros(shape)
            self.device, self.is_initialized = key_states.device, True
        slots = self.slots.write
        self.keys.index_copy_(2, slots, key_states)
        self.values.index_copy_(2, slots, value_states)
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.slots.count

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.slots.count, 0


class RingCache(Cache):
    """KV cache of `window + spare` slots; stream position p lives in slot p % slots.

    A token sees the `window` positions up to the last it may see. Row r's context starts at
    stream position `first[r]` (a row restarted from fresh context starts where its context
    does): what the row holds before it is hidden from the row, though each token always sees
    itself.
    """

    def __init__(
        self, num_layers: int, batch: int, window: int, device: torch.device, spare: int = 0
    ):
        self.window = window
        self.shared = Slots(window + spare, device)
        super().__init__(layers=[RingLayer(self.shared) for _ in range(num_layers)])
        self.slot_position = torch.full((self.slots,), -1, dtype=torch.long, device=device)
        self.first = torch.zeros(batch, 1, 1, dtype=torch.long, device=device)

    @property
    def slots(self) -> int:
        """Slots per layer: `window + spare`."""
        return self.shared.count

    @property
    def batch(self) -> int:
        """Rows of the batch the ring holds."""
        return self.first.shape[0]

    def reset(self) -> None:
        """Forget every token, in place (buffers stay where they are, for CUDA graphs): every
        token then sees only what is written after, as in a new ring of the same dtype."""
        self.slot_position.fill_(-1)
        self.first.zero_()

    def prepare(self, positions: torch.Tensor, sees: torch.Tensor | None = None) -> torch.Tensor:
        """Claim the slots of stream `positions` (q,) for the next forward; return its mask.

        `sees` (q,): the last position each token may see (default its own), where the
        `window` it sees ends. The mask (B, 1, q, slots) is additive: 0 where token i may
        attend to a slot, -inf where not. Built once per forward, it serves every layer.
        """
        sees = positions if sees is None else sees
        self.shared.write = positions % self.slots
        self.slot_position[self.shared.write] = positions
        held = self.slot_position.unsqueeze(0)  # (1, slots)
        query = positions.unsqueeze(1)  # (q, 1)
        last = sees.unsqueeze(1)  # (q, 1)
        visible = (held >= 0) & (held <= last) & (held > last - self.window)  # (q, slots)
        mine = (held >= self.first) | (held == query)  # (B, q, slots)
        return additive((visible & mine).unsqueeze(1))

    def release(self, positions: torch.Tensor) -> None:
        """Forget the tokens at stream `positions` (parallel decoding's queries): no later token
        sees their slots until a real token is written there."""
        self.slot_position.index_fill_(0, positions % self.slots, -1)  # no host scalar copy

    def copy_rows(self, rows: torch.Tensor, other: RingCache) -> None:
        """Take rows `rows` wholesale from `other` (a cache of len(rows) rows, same slots),
        with the positions `other` wrote: their context may reach back before the first
        position the other rows hold, which those rows never see (it is before their `first`)."""
        for mine, theirs in zip(self.layers, other.layers, strict=True):
            if theirs.is_initialized:
                mine.keys[rows] = theirs.keys
                mine.values[rows] = theirs.values
        self.first[rows] = other.first
        torch.maximum(self.slot_position, other.slot_position, out=self.slot_position)


def additive(allowed: torch.Tensor) -> torch.Tensor:
    """Boolean mask (True: may attend) -> float mask of 0 and -inf, to add to the scores."""
    return torch.zeros(allowed.shape, device=allowed.device).masked_fill_(~allowed, float("-inf"))


def ring_attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
    """Attention over ring slots: masked, and grouped-query without copying keys per head.

    query (B, H, q, D); key, value (B, Hkv, S, D); attention_mask (B, 1, q, S), additive as
    `RingCache.prepare` makes it, or boolean (True: may attend). Without a mask (training: plain
    causal) it is SDPA. Returns (B, q, H, D) as transformers expects.
    """
    if attention_mask is None:
        return sdpa_attention_forward(module, query, key, value, None, scaling=scaling, **kwargs)
    if attention_mask.dtype == torch.bool:
        attention_mask = additive(attention_mask)
    groups = query.shape[1] // key.shape[1]
    q = rearrange(query, "b (k g) q d -> b k (g q) d", g=groups)
    scores = torch.matmul(q, key.transpose(-1, -2)) * scaling  # (B, Hkv, g*q, S)
    mask = attention_mask.unsqueeze(2).to(scores.dtype)  # float32 would promote bf16 scores
    scores = rearrange(scores, "b k (g q) s -> b k g q s", g=groups) + mask
    probs = rearrange(scores.softmax(-1), "b k g q s -> b k (g q) s")
    out = torch.matmul(probs, value)  # (B, Hkv, g*q, D)
    return rearrange(out, "b k (g q) d -> b q (k g) d", g=groups), None


AttentionInterface.register(ATTENTION, ring_attention)
