"""The world -> tokens -> world: frame tokenizer, action and reward codecs, the vocabulary."""

from tokworld.tokenizer.codecs import ActionCodec, RewardCodec, space_from_dict, space_to_dict
from tokworld.tokenizer.frame import (
    FrameTokenizer,
    FrameTokenizerConfig,
    FrameTokenizerOutput,
    to_uint8,
)
from tokworld.tokenizer.vocab import Kind, Step, Vocabulary

__all__ = [
    "ActionCodec",
    "FrameTokenizer",
    "FrameTokenizerConfig",
    "FrameTokenizerOutput",
    "Kind",
    "RewardCodec",
    "Step",
    "Vocabulary",
    "space_from_dict",
    "space_to_dict",
    "to_uint8",
]
