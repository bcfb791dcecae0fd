"""CUDA graphs: a fixed-shape GPU computation captured once and replayed without Python.

An imagined step at batch 32 is launch-bound on a GPU: the transformer's forward launches a few
hundred small kernels and spends most of its time in Python between them (8 ms a step on an
H200, where the arithmetic takes a fraction of that). `CudaGraphed` records the kernels of one
call into a `torch.cuda.CUDAGraph` and later replays them in one launch, reading its inputs from
fixed buffers the new values are copied into.

What a graphed function may do: take tensors and return one tensor; read other state (weights, a
KV ring written in place) from buffers that stay where they are between calls; launch no host
synchronisation (no `.item()`, no data-dependent Python branch, no host-to-device copy). Every
kernel it records is replayed as recorded, so any state it mutates is mutated again by each
replay: a function is graphable when running it twice on the same inputs leaves the same state
as running it once (writing keys and values at fixed slots does; appending to a list does not).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from tokworld.errors import TokWorldError


class CudaGraphed:
    """`fn(*tensors) -> tensor` replayed from one CUDA graph per input signature (shapes and
    dtypes), each captured at its first call.

    The capture runs `fn` `warmup` times on a side stream first (lazy initialisation such as
    cuBLAS workspaces must happen outside a capture), so a first call runs `fn` `warmup` times
    on its inputs before the replay that gives its result. The result is a copy: the graph's
    own output buffer is overwritten by the next replay.
    """

    def __init__(self, fn: Callable[..., torch.Tensor], warmup: int = 2):
        self.fn, self.warmup = fn, warmup
        self.graphs: dict[tuple, tuple[list[torch.Tensor], torch.cuda.CUDAGraph, torch.Tensor]] = {}

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        # A graph replays the precision it was captured under: autocast's state is in the key.
        autocast = torch.is_autocast_enabled("cuda") and torch.get_autocast_dtype("cuda")
        key = (autocast, *((tuple(x.shape), x.dtype, x.device) for x in inputs))
        if key not in self.graphs:
            self.graphs[key] = self._capture(inputs)
        buffers, graph, output = self.graphs[key]
        with torch.cuda.device(buffers[0].device):  # the inputs' GPU, not the current one
            for buffer, value in zip(buffers, inputs, strict=True):
                buffer.copy_(value)
            graph.replay()
            return output.clone()

    def _capture(self, inputs: tuple[torch.Tensor, ...]):
        if not inputs or any(x.device.type != "cuda" for x in inputs):
            raise TokWorldError("CUDA graphs need inputs on a CUDA device")
        with torch.cuda.device(inputs[0].device):
            buffers = [x.clone() for x in inputs]
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(self.warmup):
                    self.fn(*buffers)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph), _uncached_autocast():
                output = self.fn(*buffers)
        return buffers, graph, output


def _uncached_autocast():
    """The current autocast without its cache of cast weights, which is freed when the
    autocast region ends, under a graph that would still read it; a no-op outside autocast."""
    enabled = torch.is_autocast_enabled("cuda")
    dtype = torch.get_autocast_dtype("cuda")
    return torch.autocast("cuda", dtype=dtype, enabled=enabled, cache_enabled=False)


def check_cuda_graphs(device: torch.device | str, compile: bool = False) -> None:
    """A TokWorldError unless CUDA graphs can run on `device` (and `torch.compile` is not asked
    for too)."""
    if compile:
        raise TokWorldError("choose torch.compile or CUDA graphs for imagination, not both")
    if torch.device(device).type != "cuda":
        raise TokWorldError(f"CUDA graphs need a CUDA device; the model is on {device}")
