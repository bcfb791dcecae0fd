"""The work of one imagined step, as `bench imagine` reports it: floating-point operations
(what a step costs where it is compute-bound, as on a CPU) and the operations it runs (what it
costs where it is launch-bound, as a small batch on a GPU)."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode


class OperationCounter(TorchDispatchMode):
    """Counts the aten operations run under it, leaving out views, bare allocations and
    reads of a scalar to the host, which compute nothing: about the kernels an eager step
    launches on a GPU, where a step is launch-bound (one operation may launch none or several
    there, and the attention a GPU picks may differ)."""

    NO_KERNEL = frozenset({"_unsafe_view", "empty", "empty_like", "empty_strided", "new_empty",
                           "_local_scalar_dense"})  # fmt: skip

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not (func.is_view or func.__name__.split(".")[0] in self.NO_KERNEL):
            self.count += 1
        return func(*args, **(kwargs or {}))


def step_work(step, action: torch.Tensor) -> tuple[float, int]:
    """The work of one `step(action)`: its floating-point operations (GFLOP, a multiply-add
    counted as 2; matrix products and convolutions, as `torch.utils.flop_counter` counts them)
    and the operations it runs (`OperationCounter`)."""
    with FlopCounterMode(display=False) as flops, OperationCounter() as operations:
        step(action)
    return flops.get_total_flops() / 1e9, operations.count
