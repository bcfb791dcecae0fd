"""The world model: a causal transformer over the shared token stream.

One embedding table and one output head over the whole vocabulary. At every position the logits
of every kind that cannot come next are masked to -inf, in training and in sampling alike.
"""

from __future__ import annotations

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


@dataclass
class TokWorldOutput(ModelOutput):
    """logits: (B, L, V), masked to the kind allowed at each next position; cache: KV cache."""

    logits: torch.Tensor | None = None
    cache: Cache | None = None


class TokWorldModel(PreTrainedModel):
    """Next-token prediction over the vocabulary's blocks, its segments in `vocab.order`."""

    config_class = TokWorldConfig
    config: TokWorldConfig
    base_model_prefix = "tokworld"
    _supports_sdpa = True

    def __init__(self, config: TokWorldConfig):
        super().__init__(config)
        self.vocab = config.vocabulary
        self.backbone = MistralModel(config.backbone_config())
        self.head = torch.nn.Linear(config.hidden_size, self.vocab.size, bias=False)
        self._next_allowed: torch.Tensor | None = None
        self.post_init()

    def next_allowed(self, device: torch.device) -> torch.Tensor:
        """(block, V) bool; row j: ids allowed after a token at block position j.

        Derived from the vocabulary, not a buffer: `from_pretrained` would leave a buffer unset.
        """
        if self._next_allowed is None or self._next_allowed.device != device:
            mask = self.vocab.allowed_mask(self.vocab.block_size, start=1)
            self._next_allowed = mask.to(device)
        return self._next_allowed

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
    ) -> TokWorldOutput:
        """input_ids (B, L) at stream positions `position_ids` (1, L) (default: after the cache).

        `attention_mask` (B, cached + L), 1 where a token may be attended to, is only needed when
        some cache slots are padding (imagination restarting a row).
        """
        if position_ids is None:
            past = cache.get_seq_length() if cache is not None else 0
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device) + past
            position_ids = position_ids.unsqueeze(0)
        out = self.backbone(
            input_ids=input_ids,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            attention_mask=attention_mask,
        )
        logits = self.head(out.last_hidden_state)
        allowed = self.next_allowed(logits.device)[position_ids % self.vocab.block_size]
        logits = logits.masked_fill(~allowed, float("-inf"))
        return TokWorldOutput(logits=logits, cache=out.cache)

    def tokens_of(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Steps of a batch (codes (B, T, K), action, reward, terminated) -> (B, T*block)."""
        blocks = self.vocab.encode(
            batch["codes"], batch["action"], batch["reward"], batch["terminated"]
        )
        return rearrange(blocks, "b t n -> b (t n)")

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        """Weighted cross-entropy per token kind; padded steps (`mask` False) give no loss.

        Returns the total and, per kind, its loss and accuracy.
        """
        tokens = self.tokens_of(batch)
        if tokens.shape[1] > self.config.window_tokens:
            raise TokWorldError(
                f"training windows of {batch['codes'].shape[1]} steps exceed the model's "
                f"context of {self.config.context_steps} steps"
            )
        block = self.vocab.block_size
        logits = self(tokens[:, :-1]).logits
        targets = tokens[:, 1:]
        valid = rearrange(batch["mask"], "b t -> b t 1").expand(-1, -1, block)
        valid = rearrange(valid, "b t n -> b (t n)")[:, 1:]
        kinds = self.vocab.kinds(tokens.shape[1], start=0)[1:].to(tokens.device)
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
        total = logits.new_zeros(())
        metrics = {}
        for kind, weight in weights.items():
            sel = valid & (kinds == int(kind))
            count = sel.sum().clamp(min=1)
            loss = (ce * sel).sum() / count
            name = kind.name.lower()
            metrics[f"{name}_loss"] = loss.detach()
            metrics[f"{name}_acc"] = ((correct & sel).sum() / count).detach()
            if weight:
                total = total + weight * loss
        return total, metrics
