"""How imagination draws its tokens, and in what precision.

`SamplingConfig` says how a token is drawn from the logits (`draw`): greedy, or a softmax at a
temperature over the `top_k` best, with rewards and ends optionally at the data's odds
(`calibrated`: the world model's fitted `event_shift` undone, see `training.calibration`).
`bf16_field` and `calibrated_field` are the flags of every config that runs imagination.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tokworld.errors import TokWorldError


def check_bf16(device: torch.device | str) -> None:
    """A TokWorldError unless bfloat16 autocast can run on `device`: any CPU (fast where it
    has bf16 instructions: AVX512-BF16, AMX), a GPU that supports bf16."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise TokWorldError(f"bf16 needs a GPU with bfloat16 support; {device} has none")


BF16_HELP = (
    "imagine under bfloat16 autocast (the world model and the decoder): 1.6x more imagined "
    "steps/s in block mode, 1.2x in token mode, on a CPU with AVX512-BF16 (base preset, batch "
    "32, frames decoded)"
)
CALIBRATED_HELP = (
    "sample rewards and ends at the data's odds: undo the odds of an event that the balanced "
    "loss added (the model's fitted event_shift)"
)


def _switch(flag: str, help: str):
    """A bool config field, off by default, given as `flag` on the command line."""
    return field(default=False, metadata={"flag": flag, "help": help})


def bf16_field(flag: str = "--bf16", help: str = BF16_HELP):
    """The `bf16` field of every config that runs imagination, as `flag`."""
    return _switch(flag, help)


def calibrated_field(flag: str = "--calibrated"):
    """The `calibrated` field of every config that runs imagination, as `flag`."""
    return _switch(flag, CALIBRATED_HELP)


@dataclass(frozen=True)
class SamplingConfig:
    """How tokens are drawn: `greedy`, or softmax at `temperature` over the `top_k` best.

    `calibrated`: the event ids' logits lowered by the world model's fitted log-odds shift
    (`TokWorldModel.event_bias`), so rewards and ends come at the data's odds, not the
    balanced loss's.
    """

    temperature: float = 1.0
    top_k: int | None = None
    greedy: bool = False
    calibrated: bool = False


def draw(
    logits: torch.Tensor,
    sampling: SamplingConfig,
    generator: torch.Generator,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """(..., V) masked logits (plus `bias` (V,), if given) -> (..., 1) token ids."""
    if bias is not None:
        logits = logits + bias
    if sampling.greedy:
        return logits.argmax(-1, keepdim=True)
    logits = logits / max(sampling.temperature, 1e-6)
    if sampling.top_k is not None:
        kth = torch.topk(logits, sampling.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    # Gumbel-max: argmax(logits + Gumbel noise) is a draw from softmax(logits), in a third
    # of the time of torch.multinomial at imagination's batch sizes.
    u = torch.rand(logits.shape, generator=generator, device=logits.device)
    return (logits.float() - torch.log(-torch.log(u))).argmax(-1, keepdim=True)
