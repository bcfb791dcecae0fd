"""One way to build the `Accelerator`, right for one CPU, N CPU processes, N GPUs or N nodes."""

from __future__ import annotations

import importlib.util
import random

import numpy as np
import torch
from accelerate import Accelerator


def make_accelerator(
    mixed_precision: str = "auto",
    gradient_accumulation_steps: int = 1,
    project_dir: str | None = None,
) -> Accelerator:
    """An Accelerator that synchronises processes whether or not there is a GPU.

    Without a GPU, `accelerate launch --multi_gpu --num_processes N` starts N processes that only
    form a (gloo) process group when the Accelerator is built with `cpu=True`; a plain
    `Accelerator()` would silently train N unsynchronised copies. `mixed_precision="auto"` picks
    bf16 on GPUs that support it and full precision on CPU.
    """
    cpu = not torch.cuda.is_available()
    if mixed_precision == "auto":
        mixed_precision = "no" if cpu or not torch.cuda.is_bf16_supported() else "bf16"
    log_with = "tensorboard" if project_dir and importlib.util.find_spec("tensorboard") else None
    return Accelerator(
        cpu=cpu,
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=gradient_accumulation_steps,
        log_with=log_with,
        project_dir=project_dir,
    )


def describe(accelerator: Accelerator) -> dict:
    """World size, distributed type, device and precision of a run, for its logs."""
    return {
        "world_size": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type.value),
        "device": str(accelerator.device),
        "mixed_precision": str(accelerator.mixed_precision),
    }


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
