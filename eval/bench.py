"""`tokworld bench`: how fast a preset trains and imagines on this machine, and how much memory.

One JSON (schema `SCHEMA`, keys stable; `tests/test_eval.py` pins them):

- `machine`: CPU model, cores, GPU name, torch version, threads;
- `tokenizer`: training frames/s (forward, backward, optimizer step), encode and decode frames/s;
- `world_model`: training tokens/s on windows of `context_steps` steps, bare and through the
  training loop (as `bench_world_model` times them);
- `imagination`: imagined steps/s (with decoded frames) at batch sizes 1, 8 and 32;
- each section's peak memory (`memory`), and the largest of them (`peak_memory_mib`).

Models are randomly initialised (speed does not depend on the weights) and inputs are random.
Every figure is `{"median", "min", "max", "runs"}` over `repeats` timed repetitions that follow
`warmup` untimed ones. Memory, `{"peak_mib", "increase_mib"}`: on CPU each section runs in a
fresh child process (forked from a server that has imported torch and tokworld, nothing else);
the peak is the child's resident-set high-water mark (what it allocated and the library pages
it used), the increase that minus its RSS at its start. On CUDA a section runs in process and
both are read from torch's allocator.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import gymnasium as gym
import torch

from tokworld.config import TokWorldConfig
from tokworld.eval.bench_imagine import bench_imagine
from tokworld.eval.bench_world_model import (
    ACTIONS,
    CODEBOOK,
    TOKENS_PER_FRAME,
    fixed_batch,
    time_loop,
)
from tokworld.model import TokWorldModel
from tokworld.tokenizer.frame import FrameTokenizer, FrameTokenizerConfig
from tokworld.tokenizer.vocab import Vocabulary
from tokworld.training.loop import TrainConfig, make_optimizer

SCHEMA = 1
IMAGINE_BATCHES = (1, 8, 32)


@dataclass(frozen=True)
class BenchSettings:
    """Sizes and repetitions of one suite run."""

    repeats: int = 5
    warmup: int = 2
    tokenizer_batch: int = 32
    encode_batch: int = 64
    decode_batch: int = 32
    world_model_batch: int = 8
    imagine_steps: int = 20
    imagine_batches: tuple[int, ...] = IMAGINE_BATCHES


FULL = BenchSettings()
QUICK = BenchSettings(
    repeats=2,
    warmup=1,
    tokenizer_batch=2,
    encode_batch=2,
    decode_batch=2,
    world_model_batch=1,
    imagine_steps=3,
)


def timed(fn: Callable[[], object], repeats: int, warmup: int, device: str) -> list[float]:
    """Seconds of each of `repeats` calls of `fn`, after `warmup` untimed calls."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        seconds.append(time.perf_counter() - start)
    return seconds


def rate(work: float, seconds: list[float]) -> dict:
    """`work` per second of each run, summarised: median, min, max and every run."""
    runs = [work / s for s in seconds]
    return {"median": statistics.median(runs), "min": min(runs), "max": max(runs), "runs": runs}


def _status_mib(field: str) -> float | None:
    """A `VmRSS`/`VmHWM` line of /proc/self/status in MiB (None where there is none)."""
    try:
        with open("/proc/self/status") as f:
            line = next((x for x in f if x.startswith(field + ":")), None)
    except OSError:
        return None
    return None if line is None else int(line.split()[1]) / 1024


def measured(section: Callable[..., dict], args: tuple, device: str) -> dict:
    """`section(*args)`'s figures with `memory` added (see the module docstring)."""
    if device.startswith("cuda"):
        gc.collect()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated() / 2**20
        result = section(*args)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    elif "forkserver" in multiprocessing.get_all_start_methods():
        result, start, peak = _in_child(section, args)
    else:  # no way to isolate a section: no per-section peak
        start, peak, result = None, None, section(*args)
    increase = None if peak is None or start is None else peak - start
    return {**result, "memory": {"peak_mib": peak, "increase_mib": increase}}


def _in_child(section: Callable[..., dict], args: tuple) -> tuple[dict, float, float]:
    """Run `section(*args)` in a child of a fork server: (its result, RSS at start, peak RSS).

    The server has imported this module and run nothing, so its children start alike and
    clean (a child forked from a process that has run OpenMP threads can hang in them).
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    receive, send = context.Pipe(duplex=False)
    child = context.Process(
        target=_child, args=(send, section, args, torch.get_num_threads()), daemon=True
    )
    child.start()
    send.close()
    try:
        result, start, peak, error = receive.recv()
    except EOFError:
        result, start, peak, error = None, None, None, "it died"
    child.join()
    if error is not None:
        raise RuntimeError(f"benchmark section failed (exit code {child.exitcode}): {error}")
    return result, start, peak


def _child(send, section: Callable[..., dict], args: tuple, threads: int) -> None:
    torch.set_num_threads(threads)
    start = _status_mib("VmRSS")
    try:
        send.send((section(*args), start, _status_mib("VmHWM"), None))
    except BaseException as e:  # report any failure to the parent, then exit
        send.send((None, None, None, f"{type(e).__name__}: {e}"))


def machine(device: str) -> dict:
    """What ran the benchmark: CPU, GPU, torch, threads."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    cuda = device.startswith("cuda") and torch.cuda.is_available()
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "gpu": torch.cuda.get_device_name(device) if cuda else None,
        "device": device,
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": [round(x, 2) for x in os.getloadavg()],  # others' work slows every figure
    }


def _autocast(device: str):
    """bf16 autocast on a GPU that supports it (as training uses), else nothing."""
    on = device.startswith("cuda") and torch.cuda.is_bf16_supported()
    return torch.autocast("cuda" if on else "cpu", dtype=torch.bfloat16, enabled=on)


def _train_step(model: torch.nn.Module, optimizer, batch: dict, device: str) -> Callable:
    def step():
        with _autocast(device):
            loss, _ = model.compute_loss(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def bench_tokenizer(preset: str, s: BenchSettings, device: str) -> dict:
    """Training, encode and decode frames/s of the preset's frame tokenizer."""
    torch.manual_seed(0)
    config = FrameTokenizerConfig.preset(preset)
    tokenizer = FrameTokenizer(config).to(device)
    size = config.frame_size
    frames = torch.randint(0, 256, (s.tokenizer_batch, size, size, 3), dtype=torch.uint8)
    optimizer = make_optimizer(tokenizer, TrainConfig(lr=1e-3))
    tokenizer.train()
    step = _train_step(tokenizer, optimizer, {"observation": frames.to(device)}, device)
    train = timed(step, s.repeats, s.warmup, device)
    tokenizer.eval()
    to_encode = torch.randint(0, 256, (s.encode_batch, size, size, 3), dtype=torch.uint8)
    codes = torch.randint(0, config.codebook_size, (s.decode_batch, config.tokens_per_frame))
    encode = timed(lambda: tokenizer.encode(to_encode), s.repeats, s.warmup, device)
    decode = timed(lambda: tokenizer.decode(codes), s.repeats, s.warmup, device)
    return {
        "parameters": sum(p.numel() for p in tokenizer.parameters()),
        "tokens_per_frame": config.tokens_per_frame,
        "train_batch": s.tokenizer_batch,
        "encode_batch": s.encode_batch,
        "decode_batch": s.decode_batch,
        "train_frames_per_s": rate(s.tokenizer_batch, train),
        "encode_frames_per_s": rate(s.encode_batch, encode),
        "decode_frames_per_s": rate(s.decode_batch, decode),
    }


def bench_world_model(preset: str, s: BenchSettings, device: str) -> dict:
    """Training tokens/s of the preset's world model on windows of `context_steps` steps.

    `train_tokens_per_s`: `compute_loss` + backward + AdamW on one fixed batch;
    `loop_tokens_per_s`: batch to batch inside `train_world_model` (data loading, scheduler and
    logging included). Batches and vocabulary are `bench_world_model`'s (Atari-like: 16 codes
    of 512, 4 actions).
    """
    vocab = Vocabulary.from_spaces(gym.spaces.Discrete(ACTIONS), CODEBOOK, TOKENS_PER_FRAME)
    torch.manual_seed(0)
    model = TokWorldModel(TokWorldConfig.preset(preset, vocab)).to(device).train()
    b, t = s.world_model_batch, model.config.context_steps
    batch = {k: v.to(device) for k, v in fixed_batch(b, t).items()}
    optimizer = make_optimizer(model, TrainConfig())
    seconds = timed(_train_step(model, optimizer, batch, device), s.repeats, s.warmup, device)
    torch.manual_seed(0)
    looped = TokWorldModel(TokWorldConfig.preset(preset, vocab)).to(device)
    with contextlib.redirect_stdout(sys.stderr):  # the loop announces itself on stdout
        loop_seconds = time_loop(looped, b, s.warmup, s.repeats)
    tokens = b * t * vocab.block_size
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "batch": b,
        "context_steps": t,
        "tokens_per_batch": tokens,
        "train_tokens_per_s": rate(tokens, seconds),
        "loop_tokens_per_s": rate(tokens, loop_seconds),
    }


def bench_imagination(preset: str, batch: int, s: BenchSettings, device: str) -> dict:
    """Imagined steps/s (decoded frames included) at `batch` rows, via `bench_imagine`."""
    runs = [
        bench_imagine(preset, batch, s.imagine_steps, s.imagine_steps, device=device)
        for _ in range(s.repeats)
    ]
    per_s = [r["imagined_steps_per_s"] for r in runs]
    return {
        "batch": batch,
        "steps": s.imagine_steps,
        "imagined_steps_per_s": {
            "median": statistics.median(per_s),
            "min": min(per_s),
            "max": max(per_s),
            "runs": per_s,
        },
        "decoder_share": statistics.median(r["decoder_share"] for r in runs),
    }


def run_suite(
    preset: str = "base", quick: bool = False, device: str = "cpu", threads: int | None = None
) -> dict:
    """The whole suite for `preset`; `quick` runs tiny batches twice (a smoke test).

    `threads` sets torch's intra-op threads for the run (restored afterwards).
    """
    settings = QUICK if quick else FULL
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _suite(preset, quick, device, settings)
    finally:
        torch.set_num_threads(previous)


def _suite(preset: str, quick: bool, device: str, settings: BenchSettings) -> dict:
    start = time.perf_counter()
    result = {
        "schema": SCHEMA,
        "preset": preset,
        "quick": quick,
        "machine": machine(device),
        "settings": asdict(settings),
        "tokenizer": measured(bench_tokenizer, (preset, settings, device), device),
        "world_model": measured(bench_world_model, (preset, settings, device), device),
        "imagination": {
            f"batch_{b}": measured(bench_imagination, (preset, b, settings, device), device)
            for b in settings.imagine_batches
        },
    }
    sections = [result["tokenizer"], result["world_model"], *result["imagination"].values()]
    peaks = [m["memory"]["peak_mib"] for m in sections if m["memory"]["peak_mib"] is not None]
    result["peak_memory_mib"] = max(peaks, default=None)
    result["seconds"] = time.perf_counter() - start
    return result
