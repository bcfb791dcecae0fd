"""The world model's configuration: backbone sizes, context window, loss weights, vocabulary."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import MistralConfig, PreTrainedConfig

from tokworld.errors import TokWorldError
from tokworld.presets import preset_fields
from tokworld.tokenizer.frame import FrameTokenizerConfig
from tokworld.tokenizer.vector import BINNINGS
from tokworld.tokenizer.vocab import Vocabulary

FRAME_DECODINGS = ("token", "parallel", "block")


class TokWorldConfig(PreTrainedConfig):
    """Config of `TokWorldModel`, saved as `config.json` beside the weights.

    The backbone is a Llama-style decoder (RoPE, RMSNorm, SwiGLU, SDPA). Attention sees at most
    the last `context_steps` time steps: training sequences are never longer (so plain causal
    attention, SDPA's fast path; block decoding's group mask instead), and imagination keeps a
    KV cache of that many tokens, dropping the oldest (RoPE is relative, so nothing is
    re-encoded): a rollout of any length costs the same per step. `vocab` is the saved layout
    of the shared vocabulary. Use `TokWorldConfig.preset(name, vocab)`.

    `frame_decoding` is how a step's tokens are predicted. `"token"`: one at a time, each from
    the token before it (an imagined step is K + 2 forward passes). `"parallel"`: reward, end and
    all K frame codes at once, each from a learned query placed at its stream position that reads
    the real tokens up to the step's action (an imagined step is one forward pass). `"block"`:
    the same at once, each from the output at its slot a block before, which sees the previous
    step's reward and end, the frame and the action (block teacher forcing: no query tokens, so
    training costs what token decoding does; an imagined step is one forward pass; actions get
    no loss, so `action_loss_weight` must be 0).
    """

    model_type = "tokworld"

    vocab: dict | None = None
    num_hidden_layers: int = 2
    hidden_size: int = 64
    num_attention_heads: int = 4
    num_key_value_heads: int | None = None
    intermediate_size: int | None = None
    context_steps: int = 8
    attention_dropout: float = 0.0
    rope_theta: float = 10000.0
    frame_loss_weight: float = 1.0
    reward_loss_weight: float = 1.0
    end_loss_weight: float = 1.0
    action_loss_weight: float = 0.0
    frame_decoding: str = "token"
    # Rewards and ends are rare events (a sparse reward comes once in hundreds of steps): their
    # loss is (1 - event_balance) x the mean over all targets + event_balance x the mean over
    # the nonzero-reward / terminal targets of the batch, so a few events are not drowned. With
    # 0 a tiny model still predicts no reward after 50 steps of a 3%-rare one; with 0.5 it
    # predicts all of them (tests/test_world_model.py).
    event_balance: float = 0.5
    # Fitted after training, not chosen (`training.calibration`): per event kind, reward then
    # end, the log-odds by which the model's odds of an event exceed the data's (the balanced
    # loss inflates them); calibrated sampling subtracts it. None: never fitted.
    event_shift: list[float] | None = None
    # The environments (task identities) the model was trained on: a learned embedding per task
    # is added to every input, so a model pretrained on several datasets knows which one a
    # window comes from. Fine-tuning appends its env; without a task, a window is the last one's.
    tasks: list[str] | None = None
    initializer_range: float = 0.02

    @classmethod
    def preset(cls, name: str, vocab: Vocabulary, **overrides) -> TokWorldConfig:
        """`tiny` (tests), `small` (CPU), `base` (IRIS-sized: 10 layers, 256 wide, 4 heads)."""
        known = set(cls.__annotations__) - {"vocab"}
        return cls(vocab=vocab.to_dict(), **preset_fields(name, "world_model", known, overrides))

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.frame_decoding not in FRAME_DECODINGS:
            raise TokWorldError(
                f"frame_decoding must be one of {', '.join(FRAME_DECODINGS)}, "
                f"got {self.frame_decoding!r}"
            )
        if self.frame_decoding == "block" and self.action_loss_weight:
            raise TokWorldError(
                "action_loss_weight needs frame_decoding 'token' or 'parallel': block decoding "
                "predicts no actions"
            )

    @property
    def vocabulary(self) -> Vocabulary:
        return Vocabulary.from_dict(self.vocab)

    @property
    def window_tokens(self) -> int:
        """Attention window in tokens: `context_steps` whole blocks."""
        return self.context_steps * self.vocabulary.block_size

    def backbone_config(self) -> MistralConfig:
        """The transformers config of the decoder backbone."""
        width = self.hidden_size
        # SwiGLU with 8/3 width has the FLOPs of a 4x GELU MLP (as in IRIS), rounded to 16.
        inner = self.intermediate_size or 16 * round(8 * width / 3 / 16)
        return MistralConfig(
            vocab_size=self.vocabulary.size,
            hidden_size=width,
            intermediate_size=inner,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads or self.num_attention_heads,
            max_position_embeddings=self.window_tokens,
            sliding_window=None,
            attention_dropout=self.attention_dropout,
            rope_parameters={"rope_type": "default", "rope_theta": self.rope_theta},
            initializer_range=self.initializer_range,
            # No id is special: each is a frame code, reward, end or action (and a padding id
            # would be the embedding's padding_idx, whose row never learns).
            pad_token_id=None,
            bos_token_id=None,
            eos_token_id=None,
            tie_word_embeddings=False,
        )


@dataclass(frozen=True)
class ModelChoices:
    """What `pretrain` and `finetune` choose for the models they build from scratch (a loaded
    run keeps its own): the tokenizer's codebook (or, for vector observations, the codec's
    bins), the reward codec, the Box actions' bins, the rare-event balance of the loss and the
    frame decoding. None keeps the preset's or `TokWorldConfig`'s default."""

    codebook_size: int | None = field(
        default=None, metadata={"help": "codes of a tokenizer built here (the preset's)"}
    )
    vector_bins: int = field(
        default=64, metadata={"help": "vector observations: bins per dimension of the codec"}
    )
    binning: str = field(
        default="quantile",
        metadata={
            "choices": BINNINGS,
            "help": "vector observations: bins at the data's quantiles, or uniform over the bounds",
        },
    )
    reward_codec: str = field(
        default="symlog",
        metadata={
            "choices": ("symlog", "sign"),
            "help": "world model built here: rewards as symlog bins, or their sign (3 tokens, "
            "IRIS's Atari clipping: a sparse reward lands in one token)",
        },
    )
    event_balance: float | None = field(
        default=None,
        metadata={"help": "world model built here: weight of the rare reward/end events' mean "
                  "loss against the mean over all steps (default: TokWorldConfig's)"},
    )  # fmt: skip
    action_bins: int = field(
        default=32,
        metadata={"help": "world model built here: bins per dimension of Box actions (the "
                  "policy picks one bin centre per dimension; fewer bins, fewer choices)"},
    )  # fmt: skip
    frame_decoding: str | None = field(
        default=None,
        metadata={
            "choices": FRAME_DECODINGS,
            "help": "world model built here: predict a step's tokens one at a time (token) or "
            "all in one pass, from learned queries (parallel) or from the step before's slots "
            "(block: block teacher forcing, no extra tokens) (default: the preset's)",
        },
    )

    def __post_init__(self):
        if self.action_bins < 2:
            raise TokWorldError(f"Box actions need at least 2 bins, got {self.action_bins}")

    def tokenizer_config(self, preset: str) -> FrameTokenizerConfig:
        """The frame tokenizer's config at `preset`, with the chosen codebook size."""
        sizes = {} if self.codebook_size is None else {"codebook_size": self.codebook_size}
        return FrameTokenizerConfig.preset(preset, **sizes)

    def world_model_config(self, preset: str, space, tokenizer, **extra) -> TokWorldConfig:
        """The world model's config at `preset` for `space` and the frame codes of `tokenizer`."""
        vocab = Vocabulary.from_spaces(
            space, tokenizer.codebook_size, tokenizer.tokens_per_frame,
            reward_codec=self.reward_codec, per_position_codes=tokenizer.per_position_codes,
            action_bins=self.action_bins,
        )  # fmt: skip
        chosen = {"event_balance": self.event_balance, "frame_decoding": self.frame_decoding}
        given = {k: v for k, v in chosen.items() if v is not None}
        return TokWorldConfig.preset(preset, vocab, **given, **extra)
