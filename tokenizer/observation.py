"""Either observation tokenizer behind one name: frames (VQ-VAE) or flat vectors (binning).

Both turn a batch of observations into (B, K) codes and back, and say what they read
(`observation`: "frames" or "vector") and whether each of the K positions owns its own code
range (`per_position_codes`). A run's `tokenizer/` folder holds one of them; `model_type` in
its `config.json` says which.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokworld.errors import TokWorldError
from tokworld.tokenizer.frame import FrameTokenizer
from tokworld.tokenizer.pretrained import CONFIG_NAME
from tokworld.tokenizer.vector import VectorCodec

ObservationTokenizer = FrameTokenizer | VectorCodec
KINDS = {cls.model_type: cls for cls in (FrameTokenizer, VectorCodec)}


def load_observation_tokenizer(directory: str | Path, device: str = "cpu") -> ObservationTokenizer:
    """The frame tokenizer or vector codec saved in `directory`, in eval mode."""
    config = Path(directory) / CONFIG_NAME
    try:
        model_type = json.loads(config.read_text()).get("model_type", FrameTokenizer.model_type)
    except (OSError, ValueError, AttributeError) as e:
        raise TokWorldError(f"{directory} is not an observation tokenizer: {e}") from None
    if model_type not in KINDS:
        raise TokWorldError(
            f"{directory} holds a {model_type!r}, not a frame tokenizer or vector codec"
        )
    return KINDS[model_type].from_pretrained(directory, device=device)
