"""The world model: a causal transformer over the shared token stream.

One embedding table and one output head over the whole vocabulary. At every position the logits
of every kind that cannot come next are masked to -inf, in training and in sampling alike.

With `frame_decoding="parallel"` the model also has one learned query embedding per token a step
predicts after its action (`Vocabulary.predicted_kinds`: reward, end, the next frame's K codes).
Queries are appended after the real tokens, each at the stream position of the token it
predicts (RoPE sees where it is), under a block-causal mask: a query reads the real tokens up to
its step's last action token and the queries of its step up to itself; real tokens never read a
query. One forward over a window predicts every step of it at once.

With `frame_decoding="block"` (block teacher forcing, Dedieu et al. 2025) there are no queries:
the stream is grouped by step, each group its step's frame and action after the previous step's
reward and end (`Vocabulary.group_last`); a token sees its whole group and the groups before,
and the output at each reward, end and frame slot predicts the token of that slot one block
later. A training forward is then no longer than the window, and an imagined step is one
forward of one group. Actions are given, never predicted (no behaviour prior in this mode). A
block stream starts with a lead (`Vocabulary.lead_ids`: no reward, no end) so that the first
step's reward and end have slots to be read from.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from transformers import MistralModel, PreTrainedModel
from transformers.cache_utils import Cache
from transformers.utils import ModelOutput

from tokworld.config import TokWorldConfig
from tokworld.errors import TokWorldError
from tokworld.tokenizer.vocab import Kind

EVENT_KINDS = (Kind.REWARD, Kind.END)  # the kinds with rare events, in `event_shift`'s order


def event_ids(vocab, kind: Kind, device=None) -> torch.Tensor:
    """(V,) True at the ids of `kind` that are rare events (`Vocabulary.is_event`)."""
    ids = torch.arange(vocab.size, device=device)
    part = vocab.id_slice(kind)
    return vocab.is_event(ids) & (ids >= part.start) & (ids < part.stop)


# The backbone's KV-cache argument and output field: `cache` in recent transformers,
# `past_key_values` before (where `cache=` would be silently ignored).
CACHE_ARGUMENT = (
    "cache" if "cache" in inspect.signature(MistralModel.forward).parameters else "past_key_values"
)


@dataclass
class TokWorldOutput(ModelOutput):
    """logits: (B, L, V), masked to the kind allowed where each predicts; cache: KV cache."""

    logits: torch.Tensor | None = None
    cache: Cache | None = None


class TokWorldModel(PreTrainedModel):
    """Prediction of the vocabulary's blocks, their segments in `vocab.order`: each token from
    the one before it (token decoding), from queries (parallel) or from its slot a block before
    (block)."""

    config_class = TokWorldConfig
    config: TokWorldConfig
    base_model_prefix = "tokworld"
    _supports_sdpa = True

    def __init__(self, config: TokWorldConfig):
        super().__init__(config)
        self.vocab = config.vocabulary
        self.backbone = MistralModel(config.backbone_config())
        self.head = torch.nn.Linear(config.hidden_size, self.vocab.size, bias=False)
        self.decoding = config.frame_decoding
        self.one_forward = self.decoding != "token"  # per imagined step
        block = self.decoding == "block"
        # Where the token an output predicts stands: the next position, or a block later.
        self.ahead = self.vocab.block_size if block else 1
        self.origin = self.vocab.block_origin if block else 0  # first stream position
        if self.decoding == "parallel":
            count = len(self.vocab.predicted_kinds)
            self.queries = torch.nn.Embedding(count, config.hidden_size)
        self.task_embedding = None
        if config.tasks:
            self.task_embedding = torch.nn.Embedding(len(config.tasks), config.hidden_size)
        self._allowed: torch.Tensor | None = None
        self.post_init()
        if self.task_embedding is not None:  # a new task starts as no change to the inputs
            torch.nn.init.zeros_(self.task_embedding.weight)

    def allowed(self, device: torch.device) -> torch.Tensor:
        """(block, V) bool; row j: ids allowed at block position j.

        Derived from the vocabulary, not a buffer: `from_pretrained` would leave a buffer unset.
        """
        if self._allowed is None or self._allowed.device != device:
            self._allowed = self.vocab.allowed_mask(self.vocab.block_size).to(device)
        return self._allowed

    def parallel_mask(self, positions: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """(L + Q, L + Q) bool, True where a token may attend: real tokens at `positions` (L,)
        read the real tokens up to themselves, queries at `queries` (Q,) the real tokens up to
        their step's last action and their step's queries up to themselves."""
        position = torch.cat([positions, queries])
        reads = torch.cat([positions, self.vocab.query_context(queries)])  # last real one read
        query = torch.cat([torch.zeros_like(positions), torch.ones_like(queries)]).bool()
        real_key = ~query[None, :] & (position[None, :] <= reads[:, None])
        same_step = query[:, None] & query[None, :] & (reads[:, None] == reads[None, :])
        return real_key | (same_step & (position[None, :] <= position[:, None]))

    def sees(self, positions: torch.Tensor) -> torch.Tensor:
        """Stream positions -> the last position each token there may see: itself, or with
        block decoding its group's last (`Vocabulary.group_last`)."""
        return self.vocab.group_last(positions) if self.decoding == "block" else positions

    def group_mask(self, positions: torch.Tensor) -> torch.Tensor:
        """(L, L) bool, block decoding's attention without a cache: True where the token at
        `positions[i]` may see the one at `positions[j]` (its group and the groups before)."""
        return positions[None, :] <= self.sees(positions)[:, None]

    def with_lead(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens (B, L) of whole steps from a stream's start -> the model's stream: with block
        decoding the lead (`Vocabulary.lead_ids`) in front, otherwise as they are."""
        if self.decoding != "block":
            return tokens
        lead = self.vocab.lead_ids().to(tokens.device)
        return torch.cat([lead.expand(len(tokens), -1), tokens], 1)

    def _init_weights(self, module: torch.nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, torch.nn.Embedding):
            torch.nn.init.normal_(module.weight, std=std)
        elif hasattr(module, "weight") and module.__class__.__name__.endswith("RMSNorm"):
            torch.nn.init.ones_(module.weight)

    def forward(
        self,
        input_ids: torch.LongTensor,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        use_cache: bool = False,
        attention_mask: torch.Tensor | None = None,
        query_positions: torch.Tensor | None = None,
        task: torch.Tensor | None = None,
    ) -> TokWorldOutput:
        """input_ids (B, L) at stream positions `position_ids` (1, L) (default: after the cache,
        or from the stream's origin).

        `query_positions` (Q,), parallel decoding only: Q queries appended after the L tokens,
        at the positions of the tokens they predict; the last Q logits are theirs. Without a
        cache their mask (`parallel_mask`) is built here.

        `attention_mask` (B, 1, L [+ Q], cached + L [+ Q]), True or 0 where a token may attend,
        is needed with a cache (imagination) and replaces the causal (block decoding: group) mask.

        `task` (B,): the rows' task identities (`config.tasks`); default the last task.
        """
        if position_ids is None:
            past = cache.get_seq_length() if cache is not None else self.origin
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device) + past
            position_ids = position_ids.unsqueeze(0)
        block = self.vocab.block_size
        embeds = self.backbone.embed_tokens(input_ids)  # (B, L, E)
        allowed = self.allowed(embeds.device)[(position_ids + self.ahead) % block]  # predicted
        if self.decoding == "block" and attention_mask is None and cache is None:
            attention_mask = self.group_mask(position_ids[0]).expand(len(embeds), 1, -1, -1)
        if query_positions is not None:
            if self.decoding != "parallel":
                raise TokWorldError("queries need a world model with frame_decoding='parallel'")
            queries = self.queries(self.vocab.query_index(query_positions))  # (Q, E)
            embeds = torch.cat([embeds, queries.expand(len(embeds), -1, -1)], 1)
            if attention_mask is None and cache is None:
                mask = self.parallel_mask(position_ids[0], query_positions)
                attention_mask = mask.expand(len(embeds), 1, -1, -1)
            position_ids = torch.cat([position_ids, query_positions.unsqueeze(0)], 1)
            at = self.allowed(embeds.device)[query_positions % block]  # the token's own
            allowed = torch.cat([allowed, at.unsqueeze(0)], 1)
        if self.task_embedding is not None:
            if task is None:
                task = torch.full((len(embeds),), len(self.config.tasks) - 1, device=embeds.device)
            embeds = embeds + self.task_embedding(task.to(embeds.device)).unsqueeze(1)
        out = self.backbone(
            inputs_embeds=embeds,
            position_ids=position_ids,
            use_cache=use_cache,
            attention_mask=attention_mask,
            **{CACHE_ARGUMENT: cache},
        )
        logits = self.head(out.last_hidden_state)
        logits = logits.masked_fill(~allowed, float("-inf"))
        return TokWorldOutput(logits=logits, cache=out[CACHE_ARGUMENT] if use_cache else None)

    def tokens_of(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Steps of a batch (codes (B, T, K), action, reward, terminated) -> (B, T*block)."""
        blocks = self.vocab.encode(
            batch["codes"], batch["action"], batch["reward"], batch["terminated"]
        )
        return rearrange(blocks, "b t n -> b (t n)")

    def _predictions(
        self, tokens: torch.Tensor, task: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, n, V) of a window's tokens (B, L) and the indices (n,) they predict.

        Token decoding: every token but the first, each from the one before. Parallel decoding:
        each action token from the one before (the behaviour prior), then every token that
        follows an action from its query. Block decoding: after the lead, every reward, end and
        frame but the first frame, each from its slot a block before (the window's last reward
        and end are read, not fed).
        """
        length = tokens.shape[1]
        positions = torch.arange(length, device=tokens.device)
        if self.decoding == "token":
            return self(tokens[:, :-1], task=task).logits, positions[1:]
        if self.decoding == "block":
            stream = self.with_lead(tokens)
            logits = self(stream[:, :length], task=task).logits
            kinds = self.vocab.kinds(length, self.origin).to(tokens.device)
            target = positions + self.ahead - (stream.shape[1] - length)  # its index in `tokens`
            read = (kinds != Kind.ACTION) & (target < length)
            return logits[:, read], target[read]
        queries = self.vocab.predicted_positions(length // self.vocab.block_size)
        queries = queries.to(tokens.device)
        logits = self(tokens, query_positions=queries, task=task).logits  # (B, L + Q, V)
        actions = positions[self.vocab.kinds(length).to(tokens.device) == Kind.ACTION]
        logits = torch.cat([logits[:, actions - 1], logits[:, length:]], 1)
        return logits, torch.cat([actions, queries])

    def window_predictions(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """What the model predicts for a batch of windows (codes, action, reward, terminated,
        mask (B, T), optional task): logits (B, n, V), their target ids (B, n), whether each
        target's step is real (B, n) and each target's kind (n,)."""
        tokens = self.tokens_of(batch)
        if tokens.shape[1] > self.config.window_tokens:
            raise TokWorldError(
                f"training windows of {batch['codes'].shape[1]} steps exceed the model's "
                f"context of {self.config.context_steps} steps"
            )
        task = batch["task"][:, 0] if "task" in batch else None  # a window is one task's
        logits, at = self._predictions(tokens, task)
        valid = batch["mask"][:, at // self.vocab.block_size]  # the target's step is real
        kinds = self.vocab.kinds(tokens.shape[1]).to(tokens.device)[at]
        return logits, tokens[:, at], valid, kinds

    def event_bias(self) -> torch.Tensor:
        """(V,) what calibrated sampling adds to the logits: minus the fitted log-odds shift of
        each event kind (`config.event_shift`, reward then end) on its event ids, else 0."""
        if self.config.event_shift is None:
            raise TokWorldError(
                "this world model has no fitted event calibration (config event_shift): it was "
                "trained before calibration existed; train it again to sample calibrated"
            )
        if len(self.config.event_shift) != len(EVENT_KINDS):
            raise TokWorldError(
                f"config event_shift must hold {len(EVENT_KINDS)} numbers (reward, end), got "
                f"{self.config.event_shift!r}"
            )
        bias = torch.zeros(self.vocab.size, device=self.device)
        for kind, shift in zip(EVENT_KINDS, self.config.event_shift, strict=True):
            bias -= shift * event_ids(self.vocab, kind, self.device)
        return bias

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        """Weighted cross-entropy per token kind; padded steps (`mask` False) give no loss.

        Returns the total and, per kind, its loss and accuracy.
        """
        logits, targets, valid, kinds = self.window_predictions(batch)
        ce = F.cross_entropy(
            rearrange(logits, "b l v -> (b l) v"), targets.reshape(-1), reduction="none"
        )
        ce = ce.view_as(targets)
        correct = logits.argmax(-1) == targets
        weights = {
            Kind.FRAME: self.config.frame_loss_weight,
            Kind.REWARD: self.config.reward_loss_weight,
            Kind.END: self.config.end_loss_weight,
            Kind.ACTION: self.config.action_loss_weight,
        }
        events = self.vocab.is_event(targets)
        total = logits.new_zeros(())
        metrics = {}
        if self.decoding == "block":
            del weights[Kind.ACTION]  # given, never predicted: no loss, no accuracy
        for kind, weight in weights.items():
            sel = valid & (kinds == int(kind))
            count = sel.sum().clamp(min=1)
            loss = (ce * sel).sum() / count
            rare = sel & events
            if kind in (Kind.REWARD, Kind.END) and rare.any():
                balance = self.config.event_balance
                loss = (1 - balance) * loss + balance * (ce * rare).sum() / rare.sum()
            name = kind.name.lower()
            metrics[f"{name}_loss"] = loss.detach()
            metrics[f"{name}_acc"] = ((correct & sel).sum() / count).detach()
            if weight:
                total = total + weight * loss
        return total, metrics
