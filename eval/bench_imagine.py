"""Imagination throughput: imagined steps/s with decoded frames, transformer vs decoder share,
and the per-step time early vs late in one long rollout (flat cost means a ratio near 1).

With `iris=True` (`tokworld bench imagine --iris`), IRIS's imagination at the same model size
and batch (`eval.iris_reference`) is timed in the same process, in blocks of 20 steps taken in
turn with ours, and the report gives the speedup: a ratio both sides measured under the same
machine load, which this shared machine's absolute figures are not.
"""

from __future__ import annotations

import statistics
import time

import gymnasium as gym
import torch

from tokworld.config import TokWorldConfig
from tokworld.eval.iris_reference import (
    CODEBOOK,
    TOKENS_PER_FRAME,
    IrisDecoder,
    IrisImagination,
    IrisReference,
)
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


def _timed_steps(step, actions: torch.Tensor) -> float:
    """Seconds to take `step(action)` for every row of `actions` (T, B)."""
    start = time.perf_counter()
    for action in actions:
        step(action)
    return time.perf_counter() - start


@torch.no_grad()
def bench_imagine(
    preset: str = "base",
    batch: int = 32,
    steps: int = 40,
    long_steps: int = 400,
    context: int = 4,
    device: str = "cpu",
    compile: bool = False,
    iris: bool = False,
) -> dict:
    """Figures of imagination at `batch` rows; see the module docstring."""
    model, tokenizer = build(preset, device=device)
    decoder = _TimedDecoder(tokenizer)
    engine = ImaginationEngine(model, decoder, SamplingConfig(), seed=0, compile=compile)
    actions = torch.randint(0, model.vocab.action.sizes[0], (long_steps, batch), device=device)
    engine.start(random_context(model, batch, context))
    warmup = time.perf_counter()
    for t in range(3):
        engine.step(actions[t])
    warmup = time.perf_counter() - warmup
    runs = {"ours": engine.step}
    if iris:
        runs["iris"] = _iris_imagination(model, batch, device).step
        _timed_steps(runs["iris"], actions[:3])
    # Throughput: blocks of 20 steps, ours and IRIS's in turn, so both see the same machine.
    window = min(20, steps)
    blocks = {name: [] for name in runs}
    decoder.seconds = 0.0
    for i in range(0, steps, window):
        for name, step in runs.items():
            blocks[name].append(_timed_steps(step, actions[i : i + window]))
    decode_share = decoder.seconds / sum(blocks["ours"])
    per_s = {name: batch * steps / sum(seconds) for name, seconds in blocks.items()}
    # Flat cost: one long rollout from a fresh start, medians over `window` steps.
    engine.start(random_context(model, batch, context))
    per_step = [_timed_steps(engine.step, actions[t : t + 1]) for t in range(long_steps)]
    early = statistics.median(per_step[max(0, steps - window) : steps])
    late = statistics.median(per_step[-window:])
    result = {
        "preset": preset,
        "batch": batch,
        "device": device,
        "threads": torch.get_num_threads(),
        "compile": compile,
        "warmup_s": warmup,  # 3 steps, torch.compile's compilation included
        "imagined_steps_per_s": per_s["ours"],
        "batch_steps_per_s": per_s["ours"] / batch,
        "decoder_share": decode_share,
        "transformer_share": 1 - decode_share,
        f"step_time_s_at_{steps}": early,
        f"step_time_s_at_{long_steps}": late,
        f"ratio_{long_steps}_over_{steps}": late / early,
    }
    if iris:
        ratios = [b / a for a, b in zip(blocks["ours"], blocks["iris"], strict=True)]
        result["iris_imagined_steps_per_s"] = per_s["iris"]
        result["speedup_vs_iris"] = per_s["ours"] / per_s["iris"]
        result["speedup_vs_iris_per_block"] = ratios
    return result


def _iris_imagination(model: TokWorldModel, batch: int, device: str) -> IrisImagination:
    """IRIS's imagination at our preset's size (layers, width, heads, context), started."""
    cfg = model.config
    torch.manual_seed(0)
    world_model = IrisReference(cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads,
                                cfg.context_steps)  # fmt: skip
    iris = IrisImagination(world_model.to(device), IrisDecoder().to(device))
    iris.start(torch.randint(0, CODEBOOK, (batch, TOKENS_PER_FRAME), device=device))
    return iris
