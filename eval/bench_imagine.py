"""Imagination throughput per frame decoding mode: imagined steps/s with decoded frames and with
codes only (what a `policy_input="tokens"` policy reads), the decoder's share, and the per-step
time early vs late in one long rollout (flat cost means a ratio near 1).

Every line (a mode with frames, the same mode without the decoder, and with `iris=True` IRIS's
imagination at the same model size and batch, `eval.iris_reference`) is timed in the same
process, in blocks of 20 steps taken in turn, and speedups are ratios of lines measured under the
same machine load, which this shared machine's absolute figures are not. On a GPU every timer
waits for the device's queued work (`torch.cuda.synchronize`), so a timing covers the kernels
it launched, not just their launch.

    tokworld bench imagine --preset base --batch 32 --iris --json OUT
    python -m tokworld.eval.bench_imagine --preset base --batch 32 --iris --json OUT

The second form is the same benchmark without the command line's imports: it runs where
`datasets` is missing, e.g. a GPU image holding torch, transformers, accelerate, einops,
gymnasium and vector-quantize-pytorch, with tokworld installed by `pip install --no-deps`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import gymnasium as gym
import torch

from tokworld.config import FRAME_DECODINGS, TokWorldConfig
from tokworld.cuda_graph import check_cuda_graphs
from tokworld.errors import TokWorldError
from tokworld.eval.iris_reference import (
    CODEBOOK,
    TOKENS_PER_FRAME,
    IrisDecoder,
    IrisImagination,
    IrisReference,
)
from tokworld.eval.step_work import step_work
from tokworld.folders import claim, report_json
from tokworld.imagine import ImaginationEngine, imagination_decoder
from tokworld.model import TokWorldModel
from tokworld.run import check_device
from tokworld.sampling import SamplingConfig
from tokworld.tokenizer.frame import FrameTokenizer, FrameTokenizerConfig
from tokworld.tokenizer.vocab import Vocabulary

BLOCK = 20  # steps per timed block
TOKENS = ", tokens"  # suffix of a line without the decoder
GRAPHS = ", graphs"  # suffix of a line replayed from CUDA graphs


class _TimedDecoder:
    """Wraps a decoder (codes -> frames), adding up the seconds spent in it."""

    def __init__(self, decode: Callable[[torch.Tensor], torch.Tensor]):
        self.decode, self.seconds = decode, 0.0

    def __call__(self, codes: torch.Tensor) -> torch.Tensor:
        start = _clock(codes.device)
        frames = self.decode(codes)
        self.seconds += _clock(codes.device) - start
        return frames


def _clock(device: torch.device) -> float:
    """`time.perf_counter()` once `device` has finished its queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def build(preset: str, num_actions: int = 4, device: str = "cpu", **overrides):
    """Randomly initialised tokenizer and world model of a preset (speed does not need weights);
    `overrides` change world-model config fields (e.g. `frame_decoding`)."""
    torch.manual_seed(0)
    tokenizer = FrameTokenizer(FrameTokenizerConfig.preset(preset)).to(device).eval()
    vocab = Vocabulary.from_spaces(
        gym.spaces.Discrete(num_actions), tokenizer.codebook_size, tokenizer.tokens_per_frame
    )
    model = TokWorldModel(TokWorldConfig.preset(preset, vocab, **overrides)).to(device).eval()
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
    start = _clock(actions.device)
    for action in actions:
        step(action)
    return _clock(actions.device) - start


def _graphs_agree(model: TokWorldModel, tokenizer: FrameTokenizer, batch: int, context: int,
                  actions: torch.Tensor) -> dict:  # fmt: skip
    """Whether imagination replayed from CUDA graphs gives what eager gives, from one start with
    the same seed: sampled tokens compared exactly, frames by their largest difference, through
    a row restart halfway and a snapshot restored after it."""
    start, fresh = random_context(model, batch, context), random_context(model, 1, context)
    half, rollouts = len(actions) // 2, []
    for graphs in (False, True):
        decode = imagination_decoder(tokenizer, graphs)
        engine = ImaginationEngine(model, decode, SamplingConfig(), seed=0, cuda_graphs=graphs)
        engine.start(start)
        steps = [engine.step(action) for action in actions[:half]]
        engine.restart_rows(torch.tensor([0]), fresh)
        state = engine.snapshot()
        steps += [engine.step(action) for action in actions[half:]]
        engine.restore(state)
        rollouts.append(steps + [engine.step(action) for action in actions[half:]])
    pairs = list(zip(*rollouts, strict=True))
    same = all(torch.equal(getattr(a, k), getattr(b, k)) for a, b in pairs
               for k in ("codes", "reward", "terminated"))  # fmt: skip
    diff = max((a.frames - b.frames).abs().max().item() for a, b in pairs)
    return {"steps": len(pairs), "tokens_equal": same, "frames_max_abs_diff": diff}


def _flatness(engine: ImaginationEngine, context: dict, actions: torch.Tensor, steps: int) -> dict:
    """Per-step time at `steps` and at the end of one rollout of len(actions) steps (medians
    over `BLOCK` steps), from a fresh start."""
    engine.start(context)
    per_step = [_timed_steps(engine.step, actions[t : t + 1]) for t in range(len(actions))]
    early = statistics.median(per_step[max(0, steps - BLOCK) : steps])
    late = statistics.median(per_step[-BLOCK:])
    n = len(actions)
    return {f"step_time_s_at_{steps}": early, f"step_time_s_at_{n}": late,
            f"ratio_{n}_over_{steps}": late / early}  # fmt: skip


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
    modes: tuple[str, ...] | None = None,
    bf16: bool = False,
    cuda_graphs: bool = False,
) -> dict:
    """Figures of imagination at `batch` rows for each frame decoding mode in `modes` (default:
    the preset's), every line under `torch.autocast` to bfloat16 if `bf16`; with `cuda_graphs`
    each mode also replayed from CUDA graphs (its step forward and its decoder), after a check
    that the replay gives what eager gives; see the module docstring and `_measure`."""
    with torch.autocast(torch.device(device).type, torch.bfloat16, enabled=bf16):
        result = _measure(preset, batch, steps, long_steps, context, device, compile, iris,
                          modes, cuda_graphs)  # fmt: skip
    return {**result, "bf16": bf16}


def _measure(
    preset: str,
    batch: int,
    steps: int,
    long_steps: int,
    context: int,
    device: str,
    compile: bool,
    iris: bool,
    modes: tuple[str, ...] | None,
    cuda_graphs: bool,
) -> dict:
    """The figures of `bench_imagine`.

    `lines` holds, per line (each mode, with `", graphs"` if `cuda_graphs`,
    and each of those with `", tokens"`: no decoder), its imagined steps/s, decoder share,
    warm-up, speedup over IRIS and, eager and not compiled, the GFLOP of one batch step, the
    GFLOP/s it ran at and the operations it runs (IRIS's: `iris_gflop_per_batch_step`,
    `iris_operations_per_batch_step`); the flat-cost
    figures are measured on the lines without the decoder (the transformer and its cache
    alone). The top-level figures repeat the first mode's, `<mode>_over_token` compares each
    eager mode with token's and `graphs_over_eager` each mode's replay with its eager run.
    """
    actions = torch.randint(0, 4, (long_steps, batch), device=device)
    runs, engines, decoders, warmup, agreement = {}, {}, {}, {}, {}
    variants = (("", False), (GRAPHS, True)) if cuda_graphs else (("", False),)
    for mode in modes or (None,):
        overrides = {"frame_decoding": mode} if mode else {}  # default: the preset's
        model, tokenizer = build(preset, device=device, **overrides)
        mode = model.config.frame_decoding
        if cuda_graphs:
            agreement[mode] = _graphs_agree(model, tokenizer, batch, context, actions[:BLOCK])
        for suffix, graphs in variants:
            line = mode + suffix
            decoders[line] = _TimedDecoder(imagination_decoder(tokenizer, graphs))
            for name, decoder in ((line, decoders[line]), (line + TOKENS, None)):
                engine = ImaginationEngine(model, decoder, SamplingConfig(), seed=0,
                                           compile=compile, cuda_graphs=graphs)  # fmt: skip
                engine.start(random_context(model, batch, context))
                warmup[name] = _timed_steps(engine.step, actions[:3])  # compile, captures
                runs[name], engines[name] = engine.step, engine
    if iris:
        runs["iris"] = _iris_imagination(model, batch, device).step
        _timed_steps(runs["iris"], actions[:3])
    # Work per step, where the ops are seen (eager): what a line would cost if compute-bound,
    # and how many operations it launches, what it costs if launch-bound.
    work = {} if compile else {name: step_work(step, actions[0]) for name, step in runs.items()
                               if GRAPHS not in name}  # fmt: skip
    # Throughput: blocks of BLOCK steps, every line in turn, so all see the same machine.
    blocks = {name: [] for name in runs}
    for decoder in decoders.values():
        decoder.seconds = 0.0
    for i in range(0, steps, BLOCK):
        for name, step in runs.items():
            blocks[name].append(_timed_steps(step, actions[i : i + BLOCK]))
    lines = {}
    for name, seconds in blocks.items():
        line = {"imagined_steps_per_s": batch * steps / sum(seconds)}
        if name in decoders:
            line["decoder_share"] = decoders[name].seconds / sum(seconds)
        if name in work:
            gflop, line["operations_per_batch_step"] = work[name]
            line["gflop_per_batch_step"] = gflop
            line["gflop_per_s"] = gflop * steps / sum(seconds)
        if name != "iris":
            line["warmup_s"] = warmup[name]  # 3 steps
        if iris and name != "iris":
            line["speedup_vs_iris"] = sum(blocks["iris"]) / sum(seconds)
            line["speedup_vs_iris_per_block"] = _ratios(blocks["iris"], seconds)
            line["speedup_vs_iris_median"] = statistics.median(line["speedup_vs_iris_per_block"])
        lines[name] = line
    # Flat cost: one long rollout per mode from a fresh start, without the decoder.
    modes = tuple(decoders)
    for mode in modes:
        model = engines[mode + TOKENS].model
        flat = _flatness(engines[mode + TOKENS], random_context(model, batch, context),
                         actions, steps)  # fmt: skip
        lines[mode + TOKENS].update(flat)
    first = modes[0]
    result = {
        "preset": preset,
        "batch": batch,
        "context": context,
        "device": device,
        "threads": torch.get_num_threads(),
        "compile": compile,
        "frame_decoding": first,
        "imagined_steps_per_s": lines[first]["imagined_steps_per_s"],
        "batch_steps_per_s": lines[first]["imagined_steps_per_s"] / batch,
        "decoder_share": lines[first]["decoder_share"],
        "transformer_share": 1 - lines[first]["decoder_share"],
        **{k: v for k, v in lines[first + TOKENS].items() if k.startswith(("step_", "ratio_"))},
    }
    if iris:
        iris_line = lines.pop("iris")
        result["iris_imagined_steps_per_s"] = iris_line["imagined_steps_per_s"]
        result["iris_gflop_per_batch_step"] = iris_line.get("gflop_per_batch_step")
        result["iris_operations_per_batch_step"] = iris_line.get("operations_per_batch_step")
        result["speedup_vs_iris"] = lines[first]["speedup_vs_iris"]
        result["speedup_vs_iris_per_block"] = lines[first]["speedup_vs_iris_per_block"]
    if cuda_graphs:
        result["graphs_over_eager"] = {
            mode: {what: _speedup(blocks[mode + suffix], blocks[mode + GRAPHS + suffix])
                   for what, suffix in (("frames", ""), ("tokens", TOKENS))}
            for mode in modes if not mode.endswith(GRAPHS)
        }  # fmt: skip
        result["graphs_agree_with_eager"] = agreement
    for mode in FRAME_DECODINGS[1:]:
        if {"token", mode} <= set(modes):
            result[f"{mode}_over_token"] = {
                what: _speedup(blocks["token" + suffix], blocks[mode + suffix])
                for what, suffix in (("frames", ""), ("tokens", TOKENS))
            }
    result["lines"] = lines
    return result


def _ratios(slow: list[float], fast: list[float]) -> list[float]:
    """Per block: how many times faster `fast` ran than `slow`."""
    return [s / f for s, f in zip(slow, fast, strict=True)]


def _speedup(slow: list[float], fast: list[float]) -> dict:
    """How many times faster `fast` ran than `slow`: over all blocks, per block, its median
    (a block another job slowed down moves the median least)."""
    per_block = _ratios(slow, fast)
    return {"speedup": sum(slow) / sum(fast), "per_block": per_block,
            "median": statistics.median(per_block)}  # fmt: skip


def _iris_imagination(model: TokWorldModel, batch: int, device: str) -> IrisImagination:
    """IRIS's imagination at our preset's size (layers, width, heads, context), started."""
    cfg = model.config
    torch.manual_seed(0)
    world_model = IrisReference(cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads,
                                cfg.context_steps)  # fmt: skip
    iris = IrisImagination(world_model.to(device), IrisDecoder().to(device))
    iris.start(torch.randint(0, CODEBOOK, (batch, TOKENS_PER_FRAME), device=device))
    return iris


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's flags, shared by `tokworld bench imagine` and `main`."""
    parser.add_argument("--preset", default="base", choices=("tiny", "small", "base"))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=40, help="steps timed for the throughput")
    parser.add_argument(
        "--long-steps", type=int, default=400, help="rollout length for the flatness"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the step forwards")
    parser.add_argument(
        "--bf16",
        action="store_true",
        help="every line under torch.autocast to bfloat16 (GPU, or a CPU with AVX512-BF16)",
    )
    parser.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="also time each mode replayed from CUDA graphs (GPU), interleaved with eager",
    )
    parser.add_argument(
        "--iris",
        action="store_true",
        help="also time IRIS's imagination at the same size, interleaved with ours",
    )
    parser.add_argument(
        "--frame-decoding",
        nargs="+",
        choices=FRAME_DECODINGS,
        default=list(FRAME_DECODINGS),
        help="the modes timed, each with frames and without the decoder (default: both)",
    )


def run(args: argparse.Namespace) -> dict:
    """`bench_imagine` with the flags of `add_arguments`."""
    if min(args.batch, args.steps) < 1 or args.long_steps < args.steps:
        raise TokWorldError("--batch and --steps must be positive and --long-steps >= --steps")
    check_device(args.device)
    if args.cuda_graphs:
        check_cuda_graphs(args.device, args.compile)
    return bench_imagine(args.preset, args.batch, args.steps, args.long_steps, device=args.device,
                         compile=args.compile, iris=args.iris, bf16=args.bf16,
                         modes=tuple(dict.fromkeys(args.frame_decoding)),
                         cuda_graphs=args.cuda_graphs)  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    """`python -m tokworld.eval.bench_imagine`: print the JSON report (also to `--json`); bad
    input is one line, before any work."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--json", help="also write the JSON here")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --json")
    args = parser.parse_args(argv)
    try:
        if args.threads is not None:
            if args.threads < 1:
                raise TokWorldError(f"--threads must be >= 1, got {args.threads}")
            torch.set_num_threads(args.threads)
        claim([args.json], args.overwrite)
        return report_json(run(args), args.json)
    except TokWorldError as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
