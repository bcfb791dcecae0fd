"""Imagination: batched, KV-cached rollouts of the world model from real context.

The engine keeps one KV cache for the whole batch: a ring of `context_steps` blocks of slots
(`RingCache`). Every token a rollout adds attends to at most that window; the newest token
overwrites the oldest slot (RoPE is relative, so nothing is re-encoded or moved), which keeps the
cost of an imagined step flat however long the episode runs. A row of the batch can be restarted
from fresh real context while the others go on: its new context is encoded alone at the stream
positions the batch is at, and replaces that row's slots.

A step walks the vocabulary's block layout from the current frame to the next one
(`Vocabulary.step_segments`). With token decoding the action segment is given and joins the
tokens waiting to be fed, every other token is sampled from one forward of the tokens before it.
For the default order that is `K + 2` forwards of a few tokens each: [last frame code, action
tokens] -> reward, reward -> end, end -> first frame code, then one per frame code.

With parallel decoding (`frame_decoding="parallel"`) a step is one forward: [the previous step's
sampled tokens, action tokens, queries] -> every token the step predicts (reward, end, the K
frame codes), each sampled from its query's logits. The sampled tokens wait to be written into
the cache by the next step's forward, so queries are never left visible in it. With block
decoding (`"block"`) a step is one forward of one group (`TokWorldModel`): [the previous step's
sampled reward, end and frame, the action tokens] -> every token the step predicts, each read
off the output at its slot a block before; the sampled tokens wait likewise.

On a GPU a step is launch-bound; with `cuda_graphs=True` each step's forward is recorded once
per token count on the ring's buffers and replayed (`cuda_graph.CudaGraphed`): the same
samples, 4-6x more steps/s at batch 32 on an H200. Rings are therefore kept in place: a new
`start` resets the ring kept for its batch size (and precision) rather than allocating another.
With `bf16=True` the forwards and the decoder run under bfloat16 autocast (block mode: 1.6x more
steps/s on a CPU with bf16 instructions), samples close to, not equal to, float32's.
"""

from __future__ import annotations

import copy
import functools
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from einops import rearrange

from tokworld.cuda_graph import CudaGraphed, check_cuda_graphs
from tokworld.errors import TokWorldError
from tokworld.model import TokWorldModel
from tokworld.ring_cache import ATTENTION, RingCache
from tokworld.sampling import SamplingConfig, check_bf16, draw
from tokworld.tokenizer.vocab import Kind


def imagination_decoder(tokenizer, cuda_graphs: bool = False) -> Callable:
    """What imagination decodes a step's codes with: `tokenizer.decode`, or with `cuda_graphs`
    its `decode_unchecked` replayed from CUDA graphs (codes a world model samples lie in its
    frame slice, so the range check, a host sync that no graph can hold, is not needed)."""
    return CudaGraphed(tokenizer.decode_unchecked) if cuda_graphs else tokenizer.decode


def _in_precision(method: Callable) -> Callable:
    """Run an engine method under bfloat16 autocast if the engine was made with `bf16`."""

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        if not self.bf16:
            return method(self, *args, **kwargs)
        with torch.autocast(self.device.type, torch.bfloat16):
            return method(self, *args, **kwargs)

    return run


@dataclass
class ImaginedStep:
    """What one imagined step (or a start) gives, for every row of the batch.

    codes (B, K) of the frame now seen; frames (B, 3, H, W) in [0, 1] when a decoder is set;
    reward (B,) and terminated (B,) produced by the last action (zeros after a start).
    """

    codes: torch.Tensor
    reward: torch.Tensor
    terminated: torch.Tensor
    frames: torch.Tensor | None = None


class ImaginationEngine:
    """Roll a world model forward for a batch of rows, one imagined step per `step(action)`."""

    def __init__(
        self,
        world_model: TokWorldModel,
        decoder: Callable[[torch.Tensor], torch.Tensor] | None = None,
        sampling: SamplingConfig = SamplingConfig(),
        seed: int = 0,
        compile: bool = False,
        cuda_graphs: bool = False,
        bf16: bool = False,
    ):
        if cuda_graphs:
            check_cuda_graphs(world_model.device, compile)
        if bf16:
            check_bf16(world_model.device)
        # bf16: every forward and the decoder under bfloat16 autocast (the policy reading the
        # frames is not), with rings of their own. Without it the caller's autocast applies.
        self.bf16 = bf16
        self.model = world_model.eval()
        self.model.backbone.set_attn_implementation(ATTENTION)
        # torch.compile of the per-step forwards (two graphs: token decoding's 2 and 1 new
        # tokens; parallel decoding's first step and the others; block decoding's one group;
        # at the batch size of `start`):
        # on CPU the transformer's share of a step runs ~1.7x faster after a one-time warm-up
        # of about a minute.
        # Starts and row restarts, whose shapes vary, stay eager.
        self.step_model = torch.compile(self.model, dynamic=False) if compile else self.model
        # CUDA graphs replay each step's forward: per batch size, the ring and the graphs
        # recorded on it (one per token count, captured at first use). `start` reuses a ring of
        # its batch size; with graphs every size's ring is kept (a planner alternates sizes).
        self.cuda_graphs = cuda_graphs
        self.rings: dict[tuple, RingCache] = {}  # by `_ring_key`
        self.graphed: dict[tuple, tuple[RingCache, CudaGraphed]] = {}
        self.vocab = world_model.vocab
        self.decoder = decoder
        self.sampling = sampling
        if sampling.calibrated:
            world_model.event_bias()  # refuses, now, a model with no fitted calibration
        self.event_bias: torch.Tensor | None = None  # made at the first sample after a start
        self.window = world_model.config.window_tokens
        self.decoding = world_model.decoding
        self.one_forward = world_model.one_forward  # per step
        # Streams start a window after the model's first position (RoPE is relative: only
        # distances count), so that a row restarted at any step keeps its whole context.
        self.origin = world_model.origin + self.window
        predicted = len(self.vocab.predicted_kinds)
        # Parallel decoding's queries, as offsets from the step's last action token, and where
        # each kind is among a one-forward step's samples.
        self.query_offsets = torch.arange(1, 1 + predicted, device=world_model.device)
        kinds = torch.tensor(self.vocab.predicted_kinds)
        self.kind_at = {k: (kinds == k).nonzero()[:, 0].to(world_model.device)
                        for k in dict.fromkeys(self.vocab.predicted_kinds)}  # fmt: skip
        # What waits to be fed after a start: the current frame's last code, or with block
        # decoding the current group up to its action; and the logits a step samples from
        # (without queries): the last, or block decoding's of the waiting tokens.
        block = self.decoding == "block"
        self.start_waiting = predicted if block else 1
        self.outputs = slice(0, predicted) if block else -1
        # The most tokens one step's forward writes: what is pending, the action, the queries.
        pending, queries = {"token": (1, 0), "parallel": (predicted, predicted),
                            "block": (predicted, 0)}[self.decoding]  # fmt: skip
        self.most_written = pending + self.vocab.count(Kind.ACTION) + queries
        self.device = world_model.device
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.cache: RingCache | None = None
        self.task: torch.Tensor | None = None  # (B,) task identities, None: the model's last

    # ---- public API -----------------------------------------------------------------------
    @torch.no_grad()
    @_in_precision
    def start(self, context: dict[str, torch.Tensor]) -> ImaginedStep:
        """Begin rollouts from real context: codes (B, C, K), action, reward, terminated (B, C).

        The last context step's frame is the current observation; its action, reward and end
        are ignored (the policy acts there). At most `context_steps` steps are kept.
        """
        tokens = self._context_tokens(context)
        b = tokens.shape[0]
        self.task = self._task(context)
        self.event_bias = None  # made from the model's current shift at the first sample
        self._keep(self._ring(b))
        self.cache.first.fill_(self.origin)  # what lies before is a restarted row's
        fed = tokens.shape[1] - self.start_waiting
        self.pos = self.origin + fed  # stream position of the first pending token
        if fed:
            positions = torch.arange(self.origin, self.pos, device=self.device)
            self._forward(self.cache, tokens[:, :fed], positions)
        self.pending = tokens[:, fed:]
        codes = context["codes"][:, -1].to(self.device).long()
        zeros = torch.zeros(b, device=self.device)
        return ImaginedStep(codes, zeros, zeros.bool(), self._decode(codes))

    @torch.no_grad()
    @_in_precision
    def step(self, action) -> ImaginedStep:
        """Take `action` (B,) or (B, D) in every row; sample reward, end and the next frame."""
        if self.cache is None:
            raise TokWorldError("call start(context) before step(action)")
        action = torch.as_tensor(action, device=self.device)
        b = self.pending.shape[0]
        if action.shape[0] != b:
            raise TokWorldError(f"expected actions for {b} rows, got shape {tuple(action.shape)}")
        vocab = self.vocab
        action_ids = vocab.ids(Kind.ACTION, action)
        one = self.one_forward
        sampled = self._one_forward_step(action_ids) if one else self._token_step(action_ids)
        codes = vocab.values(Kind.FRAME, sampled[Kind.FRAME])
        reward = vocab.values(Kind.REWARD, sampled[Kind.REWARD])
        terminated = vocab.values(Kind.END, sampled[Kind.END])
        return ImaginedStep(codes, reward.to(self.device), terminated, self._decode(codes))

    @torch.no_grad()
    @_in_precision
    def restart_rows(self, rows: torch.Tensor, context: dict[str, torch.Tensor]) -> ImaginedStep:
        """Restart `rows` (indices) from fresh real context; the other rows are untouched.

        Returns the start step of just those rows.
        """
        tokens = self._context_tokens(context)
        # The rows' last tokens join the others' pending ones, at the same stream positions; a
        # context shorter than those is padded in front with tokens the rows never see.
        width = self.pending.shape[1]
        pad = max(0, width - tokens.shape[1])
        tokens = torch.cat([tokens[:, :1].expand(-1, pad), tokens], 1)
        # The rest goes before them; the stream started a window in, so it always fits.
        n = tokens.shape[1] - width
        fresh = self._new_cache(tokens.shape[0])
        task = self._task(context)
        if self.task is not None:
            self.task[rows] = task
        if n:
            positions = torch.arange(self.pos - n, self.pos, device=self.device)
            self._forward(fresh, tokens[:, :n], positions, task=task)
        fresh.first[:] = self.pos - n + pad
        self.cache.copy_rows(torch.as_tensor(rows, device=self.device), fresh)
        self.pending[rows] = tokens[:, n:]
        codes = context["codes"][:, -1].to(self.device).long()
        zeros = torch.zeros(len(rows), device=self.device)
        return ImaginedStep(codes, zeros, zeros.bool(), self._decode(codes))

    # ---- internals ------------------------------------------------------------------------
    def _context_tokens(self, context: dict[str, torch.Tensor]) -> torch.Tensor:
        codes = context["codes"]
        if codes.ndim != 3 or codes.shape[-1] != self.vocab.tokens_per_frame:
            raise TokWorldError(
                f"context codes must be (B, C, {self.vocab.tokens_per_frame}), "
                f"got {tuple(codes.shape)}"
            )
        c = min(codes.shape[1], self.model.config.context_steps)
        steps = {k: torch.as_tensor(context[k])[:, -c:].to(self.device) for k in
                 ("codes", "action", "reward", "terminated")}  # fmt: skip
        blocks = self.vocab.encode(
            steps["codes"], steps["action"], steps["reward"], steps["terminated"]
        )
        # The last step ends at its frame: the policy has not acted there yet.
        tokens = self.model.with_lead(rearrange(blocks, "b c n -> b (c n)"))
        after_frame = self.vocab.block_size - self.vocab.segment(Kind.FRAME).stop
        return tokens[:, : tokens.shape[1] - after_frame]

    def _task(self, context: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """The rows' task identities (B,) from the context's `task` column, if the model has
        tasks and the context names them; otherwise the model's default (its last task)."""
        if not self.model.config.tasks or "task" not in context:
            return None
        return torch.as_tensor(context["task"])[:, -1].to(self.device).long()

    def _ring_key(self, batch: int) -> tuple:
        """What a ring must match to be reused: its rows, and the precision its keys and values
        were written in (the model's dtype, autocast's state)."""
        kind = self.device.type
        autocast = torch.is_autocast_enabled(kind) and torch.get_autocast_dtype(kind)
        return batch, self.model.dtype, autocast

    def _ring(self, batch: int) -> RingCache:
        """A ring of `batch` rows, as new: the one kept for that key, reset, or a new one."""
        ring = self.rings.get(self._ring_key(batch))
        if ring is None:
            return self._new_cache(batch)
        ring.reset()
        return ring

    def _keep(self, ring: RingCache) -> None:
        """Make `ring` the current one and keep it for its key (without CUDA graphs, only it: a
        dropped ring frees its memory)."""
        if not self.cuda_graphs:
            self.rings.clear()
        self.rings[self._ring_key(ring.batch)] = self.cache = ring

    def _new_cache(self, batch: int) -> RingCache:
        layers = self.model.config.num_hidden_layers
        return RingCache(layers, batch, self.window, self.device, spare=self.most_written - 1)

    def _forward(
        self,
        cache: RingCache,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        model=None,
        queries: torch.Tensor | None = None,
        task: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run `tokens` (B, q) at stream `positions` (q,) on `cache`; return the logits a step
        samples from: the last (B, V), with parallel decoding's `queries` (Q,) positions theirs
        (B, Q, V), with block decoding the first Q (B, Q, V)."""
        written = positions if queries is None else torch.cat([positions, queries])
        out = (self.model if model is None else model)(
            tokens,
            position_ids=positions.unsqueeze(0),
            cache=cache,
            use_cache=True,
            attention_mask=cache.prepare(written, self.model.sees(written)),
            query_positions=queries,
            task=self.task if task is None else task,
        )
        if queries is None:
            return out.logits[:, self.outputs]
        cache.release(queries)
        return out.logits[:, -len(queries) :]

    def _token_step(self, action_ids: torch.Tensor) -> dict[Kind, torch.Tensor]:
        """Token decoding: the step's tokens one forward each; returns the ids of each kind."""
        pending, sampled = self.pending, {}
        for kind in self.vocab.step_segments:
            if kind == Kind.ACTION:
                pending = torch.cat([pending, action_ids], 1)
                continue
            tokens = []
            for _ in range(self.vocab.count(kind)):
                pending = self._sample(self._feed(pending))
                tokens.append(pending)
            sampled[kind] = torch.cat(tokens, 1)
        self.pending = pending
        return sampled

    def _one_forward_step(self, action_ids: torch.Tensor) -> dict[Kind, torch.Tensor]:
        """Parallel and block decoding: the pending tokens and the action in, every token the
        step predicts sampled from one forward. Returns the ids of each kind."""
        tokens = torch.cat([self.pending, action_ids], 1)  # (B, block)
        positions = torch.arange(self.pos, self.pos + tokens.shape[1], device=self.device)
        logits = self._step_logits(tokens, positions)
        self.pending = self._sample(logits)[..., 0]  # (B, Q)
        self.pos += tokens.shape[1]
        return {kind: self.pending[:, at] for kind, at in self.kind_at.items()}

    def _feed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append `tokens` (B, q) to every row's stream; return the logits after them."""
        positions = torch.arange(self.pos, self.pos + tokens.shape[1], device=self.device)
        self.pos += tokens.shape[1]
        return self._step_logits(tokens, positions)

    def _step_logits(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """A step's forward of `tokens` (B, q) at `positions` (q,) on the ring: the last logits
        (B, V), or with one forward per step the predicted tokens' (B, Q, V); replayed from a
        CUDA graph with `cuda_graphs`."""
        task = () if self.task is None else (self.task,)
        if not self.cuda_graphs:
            return self._ring_forward(tokens, positions, *task)
        key = self._ring_key(self.cache.batch)
        ring, graphed = self.graphed.get(key, (None, None))
        if ring is not self.cache:  # a new ring (a first start at this size, a restore)
            graphed = CudaGraphed(_weakly(self._ring_forward))  # no engine-graph cycle
            self.graphed[key] = (self.cache, graphed)
        return graphed(tokens, positions, *task)

    def _ring_forward(self, tokens: torch.Tensor, positions: torch.Tensor, *task: torch.Tensor):
        """`_step_logits` without the graph: it reads only its arguments and the ring."""
        queries = positions[-1] + self.query_offsets if self.decoding == "parallel" else None
        return self._forward(self.cache, tokens, positions, self.step_model, queries, *task)

    def _sample(self, logits: torch.Tensor) -> torch.Tensor:
        """(..., V) masked logits -> (..., 1) token ids, drawn as `self.sampling` says."""
        if self.sampling.calibrated and self.event_bias is None:
            self.event_bias = self.model.event_bias()
        bias = self.event_bias if self.sampling.calibrated else None
        return draw(logits, self.sampling, self.generator, bias)

    def _decode(self, codes: torch.Tensor) -> torch.Tensor | None:
        return None if self.decoder is None else self.decoder(codes)

    # ---- snapshots --------------------------------------------------------------------------
    # Everything a dream's future depends on; a new piece of rollout state joins this tuple.
    SNAPSHOT_STATE = ("cache", "pending", "pos", "generator", "task")

    def snapshot(self) -> dict:
        """A deep copy of the dream's state (KV ring cache, pending tokens, stream position,
        RNG state): `restore(state)` later continues it bit-identically."""
        if self.cache is None:
            raise TokWorldError("call start(context) before snapshot()")
        return {name: _copied(getattr(self, name)) for name in self.SNAPSHOT_STATE}

    @_in_precision
    def restore(self, state: dict) -> None:
        """Return to a `snapshot()`; the snapshot stays unchanged, so it can be restored again."""
        missing = [name for name in self.SNAPSHOT_STATE if name not in state]
        if missing:
            raise TokWorldError(f"not an imagination snapshot: it has no {missing[0]!r}")
        for name in self.SNAPSHOT_STATE:
            setattr(self, name, _copied(state[name]))
        self._keep(self.cache)  # a copy: graphs are recorded on it anew


def _weakly(method: Callable) -> Callable:
    """`method` (bound) called through a weak reference to its object."""
    ref = weakref.WeakMethod(method)
    return lambda *args: ref()(*args)


def _copied(value):
    """A deep copy; a torch.Generator (which `copy.deepcopy` refuses) is copied by its state."""
    if isinstance(value, torch.Generator):
        twin = torch.Generator(device=value.device)
        twin.set_state(value.get_state())
        return twin
    return copy.deepcopy(value)
