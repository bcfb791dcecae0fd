"""The world -> tokens -> world: frame tokenizer, action and reward codecs, the vocabulary."""

from tokworld.tokenizer.codecs import ActionCodec, RewardCodec, space_from_dict, space_to_dict
from tokworld.tokenizer.vocab import SPECIALS, Kind, Step, Vocabulary

__all__ = [
    "SPECIALS",
    "ActionCodec",
    "Kind",
    "RewardCodec",
    "Step",
    "Vocabulary",
    "space_from_dict",
    "space_to_dict",
]
