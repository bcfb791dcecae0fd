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
has for the same environment steps. Other processes on the machine slow every timing; compare
the ratios of one run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import datasets
import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from tokworld.config import TokWorldConfig
from tokworld.data import TrajectoryMeta
from tokworld.model import TokWorldModel
from tokworld.tokenizer.codecs import space_to_dict
from tokworld.tokenizer.vocab import Vocabulary
from tokworld.training.loop import TrainConfig
from tokworld.training.world_model import train_world_model

CODEBOOK, TOKENS_PER_FRAME, ACTIONS = 512, 16, 4
IRIS_TOKENS_PER_STEP = TOKENS_PER_FRAME + 1


class IrisBlock(nn.Module):
    """One GPT block as IRIS writes it: explicit causal attention, GELU MLP, dropout 0.1."""

    def __init__(self, width: int, heads: int, max_tokens: int, dropout: float = 0.1):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.query, self.key, self.value = (nn.Linear(width, width) for _ in range(3))
        self.proj = nn.Linear(width, width)
        self.attn_drop, self.resid_drop = nn.Dropout(dropout), nn.Dropout(dropout)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width), nn.Dropout(dropout)
        )
        self.register_buffer("mask", torch.tril(torch.ones(max_tokens, max_tokens)))

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        length = x.shape[1]
        q, k, v = (
            rearrange(f(x), "b t (h e) -> b h t e", h=self.heads)
            for f in (self.query, self.key, self.value)
        )
        att = (q @ k.transpose(-2, -1)) / math.sqrt(k.shape[-1])  # (B, H, T, T)
        att = att.masked_fill(self.mask[:length, :length] == 0, float("-inf"))
        y = self.attn_drop(F.softmax(att, dim=-1)) @ v
        return self.resid_drop(self.proj(rearrange(y, "b h t e -> b t (h e)")))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class IrisReference(nn.Module):
    """IRIS's world model for timing: embeddings, GPT blocks, frame/reward/end heads, losses."""

    def __init__(self, layers: int, width: int, heads: int, steps: int):
        super().__init__()
        k, n = TOKENS_PER_FRAME, IRIS_TOKENS_PER_STEP
        self.obs_emb, self.act_emb = nn.Embedding(CODEBOOK, width), nn.Embedding(ACTIONS, width)
        self.pos_emb = nn.Embedding(steps * n, width)
        self.drop = nn.Dropout(0.1)
        self.blocks = nn.Sequential(*(IrisBlock(width, heads, steps * n) for _ in range(layers)))
        self.ln = nn.LayerNorm(width)

        def head(out: int) -> nn.Module:
            return nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, out))

        self.head_obs, self.head_rewards, self.head_ends = head(CODEBOOK), head(3), head(2)
        position = torch.arange(n)
        self.register_buffer("is_action", position == k)
        self.register_buffer("predicts_obs", position != k - 1)

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        codes, action = batch["codes"], batch["action"]  # (B, T, K), (B, T)
        b, t, k = codes.shape
        mask = rearrange(self.is_action, "n -> 1 1 n")
        emb = torch.where(
            rearrange(mask, "1 1 n -> 1 1 n 1"),
            rearrange(self.act_emb(action), "b t e -> b t 1 e"),
            F.pad(self.obs_emb(codes), (0, 0, 0, 1)),
        )  # (B, T, K + 1, E)
        x = rearrange(emb, "b t n e -> b (t n) e")
        x = self.ln(self.blocks(self.drop(x + self.pos_emb.weight[: x.shape[1]])))
        x = rearrange(x, "b (t n) e -> b t n e", t=t)
        obs = rearrange(x[:, :, self.predicts_obs], "b t n e -> b (t n) e")[:, :-1]
        labels = rearrange(codes, "b t k -> b (t k)")[:, 1:]
        act = x[:, :, k]  # (B, T, E)
        rewards, ends = (batch["reward"].sign() + 1).long(), batch["terminated"].long()
        return (
            F.cross_entropy(rearrange(self.head_obs(obs), "b l v -> (b l) v"), labels.reshape(-1))
            + F.cross_entropy(self.head_rewards(act).flatten(0, 1), rewards.flatten())
            + F.cross_entropy(self.head_ends(act).flatten(0, 1), ends.flatten())
        )


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
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    vocab = Vocabulary.from_spaces(gym.spaces.Discrete(ACTIONS), CODEBOOK, TOKENS_PER_FRAME)
    torch.manual_seed(0)
    model = TokWorldModel(TokWorldConfig.preset(args.preset, vocab))
    cfg = model.config
    steps = cfg.context_steps
    ours = {"tokens_per_s": args.batch * steps * vocab.block_size,
            "iris_comparable_tokens_per_s": args.batch * steps * IRIS_TOKENS_PER_STEP}  # fmt: skip
    report: dict = {
        "preset": args.preset,
        "batch": args.batch,
        "context_steps": steps,
        "tokens_per_step": vocab.block_size,
        "iris_tokens_per_step": IRIS_TOKENS_PER_STEP,
        "parameters": sum(p.numel() for p in model.parameters()),
        "torch_threads": torch.get_num_threads(),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
    }
    batch = fixed_batch(args.batch, steps)
    runs = {"bare": _step_fn(model, batch)}
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
    report["bare"] = _summary(timings["bare"], **ours)
    if not args.no_iris:
        iris_tokens = ours["iris_comparable_tokens_per_s"]
        report["iris_reference"] = _summary(timings["iris_reference"], tokens_per_s=iris_tokens)
        ratio = report["iris_reference"]["seconds_median"] / report["bare"]["seconds_median"]
        report["speedup_vs_iris_reference"] = round(ratio, 3)
    if not args.no_loop:
        torch.manual_seed(0)
        looped = TokWorldModel(TokWorldConfig.preset(args.preset, vocab))
        report["loop"] = _summary(time_loop(looped, args.batch, args.warmup, args.repeats), **ours)
    report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    return report


if __name__ == "__main__":
    main()
