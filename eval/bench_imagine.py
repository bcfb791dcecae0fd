"""Imagination throughput: imagined steps/s with decoded frames, transformer vs decoder share,
and the per-step time early vs late in one long rollout (flat cost means a ratio near 1)."""

from __future__ import annotations

import statistics
import time

import gymnasium as gym
import torch

from tokworld.config import TokWorldConfig
from tokworld.imagine import ImaginationEngine, SamplingConfig
from tokworld.model import TokWorldModel
from tokworld.tokenizer.frame import FrameTokenizer, FrameTokenizerConfig
from tokworld.tokenizer.vocab import Vocabulary


class _TimedDecoder:
    """Wraps `tokenizer.decode`, adding up the seconds spent in it."""

    def __init__(self, tokenizer: FrameTokenizer):
        self.tokenizer, self.seconds = tokenizer, 0.0

    def __call__(self, codes: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        frames = self.tokenizer.decode(codes)
        self.seconds += time.perf_counter() - start
        return frames


def build(preset: str, num_actions: int = 4, device: str = "cpu"):
    """Randomly initialised tokenizer and world model of a preset (speed does not need weights)."""
    torch.manual_seed(0)
    tokenizer = FrameTokenizer(FrameTokenizerConfig.preset(preset)).to(device).eval()
    vocab = Vocabulary.from_spaces(
        gym.spaces.Discrete(num_actions), tokenizer.codebook_size, tokenizer.tokens_per_frame
    )
    model = TokWorldModel(TokWorldConfig.preset(preset, vocab)).to(device).eval()
    return model, tokenizer


def random_context(model: TokWorldModel, batch: int, steps: int) -> dict[str, torch.Tensor]:
    """Context of `steps` random steps (the content does not change the cost)."""
    vocab = model.vocab
    return {
        "codes": torch.randint(0, vocab.codebook_size, (batch, steps, vocab.tokens_per_frame)),
        "action": torch.randint(0, vocab.action.sizes[0], (batch, steps)),
        "reward": torch.zeros(batch, steps),
        "terminated": torch.zeros(batch, steps, dtype=torch.bool),
    }


@torch.no_grad()
def bench_imagine(
    preset: str = "base",
    batch: int = 32,
    steps: int = 40,
    long_steps: int = 400,
    context: int = 4,
    device: str = "cpu",
    compile: bool = False,
) -> dict:
    """Figures of imagination at `batch` rows; see the module docstring."""
    model, tokenizer = build(preset, device=device)
    decoder = _TimedDecoder(tokenizer)
    engine = ImaginationEngine(model, decoder, SamplingConfig(), seed=0, compile=compile)
    actions = torch.randint(0, model.vocab.action.sizes[0], (long_steps, batch))
    engine.start(random_context(model, batch, context))
    warmup = time.perf_counter()
    for t in range(3):
        engine.step(actions[t])
    warmup = time.perf_counter() - warmup
    engine.start(random_context(model, batch, context))
    decoder.seconds = 0.0
    per_step = []
    for t in range(long_steps):
        start = time.perf_counter()
        engine.step(actions[t])
        per_step.append(time.perf_counter() - start)
    first = per_step[:steps]
    decode_share = decoder.seconds / sum(per_step)
    window = min(20, steps)  # medians over 20 steps: single steps jitter by +-15% here
    early = statistics.median(per_step[max(0, steps - window) : steps])
    late = statistics.median(per_step[-window:])
    return {
        "preset": preset,
        "batch": batch,
        "device": device,
        "threads": torch.get_num_threads(),
        "compile": compile,
        "warmup_s": warmup,  # 3 steps, torch.compile's compilation included
        "imagined_steps_per_s": batch * len(first) / sum(first),
        "batch_steps_per_s": len(first) / sum(first),
        "decoder_share": decode_share,
        "transformer_share": 1 - decode_share,
        f"step_time_s_at_{steps}": early,
        f"step_time_s_at_{long_steps}": late,
        f"ratio_{long_steps}_over_{steps}": late / early,
    }
