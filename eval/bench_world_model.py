"""World-model training throughput: tokens/s of one optimizer step, bare and through the loop.

    python -m tokworld.eval.bench_world_model --preset base --batch 8 --json OUT

Atari-like vocabulary (16 codes of 512 per frame, Discrete(4) actions: 19 tokens per step),
windows of the preset's context. Three timings, each the median of `--repeats` steps after
`--warmup` steps:

- `bare`: `compute_loss` + backward + AdamW on one fixed batch;
- `iris_reference`: the same step of a re-implementation of IRIS's world model (GPT blocks with
  LayerNorm, explicit attention matrices, GELU MLP, dropout 0.1; 17 tokens per step; heads for
  frame codes, rewards and ends), timed interleaved with `bare` so both see the same machine;
- `loop`: `training.world_model.train_world_model` on a synthetic codes dataset, from one
  training batch to the next (data loading, step, scheduler, logging).

Tokens/s count our 19 tokens per step, and `iris_comparable_tokens_per_s` the 17 an IRIS step
has for the same environment steps. With `--frame-decoding token parallel block` the modes' bare
steps are timed interleaved (`bare_by_mode`; a parallel forward also carries one query per
predicted token, a block forward is as long as a token one, under its group mask; all are counted
by the same 19 tokens of the same environment steps). Other processes on the machine slow every
timing; compare the ratios of one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import datasets
import gymnasium as gym
import numpy as np
import torch
from torch import nn

from tokworld.config import FRAME_DECODINGS, TokWorldConfig
from tokworld.data.format import TrajectoryMeta
from tokworld.eval.iris_reference import (
    ACTIONS,
    CODEBOOK,
    IRIS_TOKENS_PER_STEP,
    TOKENS_PER_FRAME,
    IrisReference,
)
from tokworld.folders import report_json
from tokworld.model import TokWorldModel
from tokworld.tokenizer.codecs import space_to_dict
from tokworld.tokenizer.vocab import Vocabulary
from tokworld.training.loop import TrainConfig
from tokworld.training.world_model import train_world_model


def synthetic_codes(steps: int, episode_len: int = 200, seed: int = 0) -> datasets.Dataset:
    """A codes dataset of random steps with the metadata of an Atari-like trajectory dataset."""
    rng = np.random.default_rng(seed)
    episode = np.arange(steps) // episode_len
    frame = np.arange(steps) % episode_len
    last = (frame == episode_len - 1) | (np.arange(steps) == steps - 1)
    meta = TrajectoryMeta("synthetic", space_to_dict(gym.spaces.Discrete(ACTIONS)), 64)
    columns = {
        "episode_index": episode,
        "frame_index": frame,
        "codes": list(rng.integers(0, CODEBOOK, (steps, TOKENS_PER_FRAME), dtype=np.int16)),
        "action": rng.integers(0, ACTIONS, steps),
        "reward": rng.choice([-1.0, 0.0, 1.0], steps, p=[0.05, 0.9, 0.05]).astype(np.float32),
        "terminated": last,
        "truncated": np.zeros(steps, dtype=bool),
    }
    info = datasets.DatasetInfo(description=meta.to_json())
    return datasets.Dataset.from_dict(columns, info=info)


def fixed_batch(batch: int, steps: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "codes": torch.randint(0, CODEBOOK, (batch, steps, TOKENS_PER_FRAME), generator=g),
        "action": torch.randint(0, ACTIONS, (batch, steps), generator=g),
        "reward": torch.randint(-1, 2, (batch, steps), generator=g).float(),
        "terminated": torch.rand(batch, steps, generator=g) < 0.01,
        "mask": torch.ones(batch, steps, dtype=torch.bool),
    }


def _step_fn(model: nn.Module, batch: dict[str, torch.Tensor]):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)

    def step() -> float:
        start = time.perf_counter()
        loss = model.compute_loss(batch)
        loss = loss[0] if isinstance(loss, tuple) else loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    return step


def time_loop(model: TokWorldModel, batch: int, warmup: int, repeats: int) -> list[float]:
    """Seconds from one training batch to the next inside `train_world_model`."""
    stamps: list[float] = []
    compute_loss = model.compute_loss

    def stamped(b):
        if model.training:
            stamps.append(time.perf_counter())
        return compute_loss(b)

    model.compute_loss = stamped
    cfg = TrainConfig(steps=warmup + repeats + 1, batch_size=batch, warmup_steps=1,
                      checkpoint_every=10**9, log_every=1)  # fmt: skip
    ds = synthetic_codes(max(4000, 4 * batch * model.config.context_steps))
    with tempfile.TemporaryDirectory(prefix="bench-wm-") as tmp:
        train_world_model(model, ds, cfg, Path(tmp), progress=False)
    del model.compute_loss
    return list(np.diff(stamps)[warmup:])


def _summary(seconds: list[float], **tokens: int) -> dict:
    """Median seconds and, per name, `tokens[name] / median`."""
    median = statistics.median(seconds)
    rates = {name: round(count / median, 1) for name, count in tokens.items()}
    return {"seconds_median": round(median, 4), "seconds": [round(s, 4) for s in seconds], **rates}


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; print and return the JSON report (also written to `--json`)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="base", choices=("tiny", "small", "base"))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-iris", action="store_true", help="skip the IRIS reference")
    parser.add_argument("--no-loop", action="store_true", help="skip the timing through the loop")
    parser.add_argument(
        "--frame-decoding",
        nargs="+",
        choices=FRAME_DECODINGS,
        default=["token"],
        help="the modes whose bare step is timed, interleaved (the first one also through the "
        "loop and as `bare`)",
    )
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    vocab = Vocabulary.from_spaces(gym.spaces.Discrete(ACTIONS), CODEBOOK, TOKENS_PER_FRAME)
    modes = list(dict.fromkeys(args.frame_decoding))
    models = {}
    for mode in modes:
        torch.manual_seed(0)
        models[mode] = TokWorldModel(TokWorldConfig.preset(args.preset, vocab, frame_decoding=mode))
    model = models[modes[0]]
    cfg = model.config
    steps = cfg.context_steps
    ours = {"tokens_per_s": args.batch * steps * vocab.block_size,
            "iris_comparable_tokens_per_s": args.batch * steps * IRIS_TOKENS_PER_STEP}  # fmt: skip
    report: dict = {
        "preset": args.preset,
        "frame_decoding": modes[0],
        "batch": args.batch,
        "context_steps": steps,
        "tokens_per_step": vocab.block_size,
        "iris_tokens_per_step": IRIS_TOKENS_PER_STEP,
        "parameters": sum(p.numel() for p in model.parameters()),
        "torch_threads": torch.get_num_threads(),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
    }
    batch = fixed_batch(args.batch, steps)
    runs = {mode: _step_fn(models[mode], batch) for mode in modes}
    if not args.no_iris:
        torch.manual_seed(0)
        iris = IrisReference(cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, steps)
        report["iris_reference_parameters"] = sum(p.numel() for p in iris.parameters())
        runs["iris_reference"] = _step_fn(iris, batch)
    timings: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(args.warmup + args.repeats):  # interleaved: all see the same machine load
        for name, step in runs.items():
            seconds = step()
            if i >= args.warmup:
                timings[name].append(seconds)
    report["bare"] = _summary(timings[modes[0]], **ours)
    if len(modes) > 1:
        report["bare_by_mode"] = {mode: _summary(timings[mode], **ours) for mode in modes}
        for mode in [m for m in modes if m != "token" and "token" in modes]:
            ratio = statistics.median(timings[mode]) / statistics.median(timings["token"])
            report[f"{mode}_step_time_over_token"] = round(ratio, 3)
    if not args.no_iris:
        iris_tokens = ours["iris_comparable_tokens_per_s"]
        report["iris_reference"] = _summary(timings["iris_reference"], tokens_per_s=iris_tokens)
        ratio = report["iris_reference"]["seconds_median"] / report["bare"]["seconds_median"]
        report["speedup_vs_iris_reference"] = round(ratio, 3)
    if not args.no_loop:
        torch.manual_seed(0)
        looped = TokWorldModel(TokWorldConfig.preset(args.preset, vocab, frame_decoding=modes[0]))
        report["loop"] = _summary(time_loop(looped, args.batch, args.warmup, args.repeats), **ours)
    report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    return report_json(report, args.json)


if __name__ == "__main__":
    main()
