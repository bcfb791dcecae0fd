"""Model sizes by name: one table of tokenizer, world model and policy settings per preset.

`tiny` is for tests (seconds on a CPU), `small` for a CPU (minutes), `base` is IRIS-sized. Each
entry holds the fields that differ from the config dataclasses' defaults
(`FrameTokenizerConfig`, `TokWorldConfig`, `PolicyConfig`). This module imports nothing of ours
but the errors: it is pure data on the ground floor, read by every component.
"""

from __future__ import annotations

from tokworld.errors import TokWorldError

PARTS = ("tokenizer", "world_model", "policy")

PRESETS: dict[str, dict[str, dict]] = {
    "tiny": {
        "tokenizer": {
            "codebook_size": 64,
            "dim": 32,
            "enc_channels": (16, 16, 32),
            "dec_channels": (16, 32, 32),
            "dec_blocks": 1,
        },
        "world_model": {
            "num_hidden_layers": 2,
            "hidden_size": 64,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "context_steps": 8,
        },
        "policy": {"channels": (8, 8, 16, 16), "token_dim": 8, "hidden_size": 64},
    },
    "small": {
        # VQ (the default quantizer), weighted loss. On 20k Breakout frames at the CLIs' default
        # 2000 steps x 32 frames: 36.5 dB held-out PSNR, SSIM 0.98, 79% codebook usage, the ball
        # drawn 4% of the time with 36 ghost pixels per frame. `foreground_loss="symmetric"`
        # (weight 1) gives 41.5 dB, 11% and 4 ghosts on Breakout, but loses MiniGrid's agent, so
        # it is an option, not the preset's; see the README's benchmarks.
        "tokenizer": {},
        "world_model": {
            "num_hidden_layers": 4,
            "hidden_size": 128,
            "num_attention_heads": 4,
            "num_key_value_heads": 1,
            "context_steps": 16,
        },
        "policy": {"channels": (16, 16, 32, 32), "token_dim": 16, "hidden_size": 256},
    },
    "base": {
        # 7.9M parameters (IRIS-sized), computed on the 16x16 grid of 4x4 patches rather than at
        # full resolution: a full-resolution decoder of this size capped imagination at ~31
        # decoded frames/s on 2 CPU threads, this one decodes 300-450/s.
        "tokenizer": {
            "quantizer": "fsq",
            "dim": 256,
            "enc_channels": (96, 128, 192),
            "dec_channels": (96, 192, 256),
            "enc_blocks": 2,
            "dec_blocks": 2,
        },
        # Keys and values have fewer heads than queries (grouped-query attention, as in Llama
        # 2/3): imagination reads the whole KV cache for every token it samples, so a smaller
        # cache is what makes it fast on memory-bound hardware; training cost barely changes.
        # frame_decoding stays "token" (the config's default) in every preset. "block" (one
        # forward per imagined step, no query tokens) trains at token mode's cost, imagines
        # 1.7-2.2x faster with decoded frames on a 2-core CPU, is more faithful on Breakout and runs
        # the demo faster, but with decoded frames it is 5.4-6.4x IRIS's imagination there,
        # short of the 10x it must reach to be the default ("parallel", with queries: 8.2-9.2x
        # on an H200, eager); see the README.
        "world_model": {
            "num_hidden_layers": 10,
            "hidden_size": 256,
            "num_attention_heads": 4,
            "num_key_value_heads": 1,
            "context_steps": 20,
        },
        "policy": {"channels": (32, 32, 64, 64), "token_dim": 32, "hidden_size": 512},
    },
}

NAMES = tuple(PRESETS)


def check_preset(name: str, what: str = "") -> str:
    """`name`, or a TokWorldError naming the presets there are (`what`: e.g. "policy ")."""
    if name not in PRESETS:
        raise TokWorldError(f"unknown {what}preset {name!r}: choose from {', '.join(NAMES)}")
    return name


def preset_fields(name: str, part: str, known: set[str], overrides: dict) -> dict:
    """The fields of preset `name` for `part` (one of PARTS) with `overrides` applied, checked
    against the `known` field names of that part's config."""
    what = part.replace("_", " ")
    check_preset(name, f"{what} ")
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TokWorldError(f"unknown {what} config field {unknown[0]!r}")
    return {**PRESETS[name][part], **overrides}
