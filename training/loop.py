"""The one training loop every stage uses: batches in, `compute_loss` out, under accelerate.

A model trained here has `compute_loss(batch) -> (loss, metrics)`; the loop only sums and logs.
Batches come from a map-style dataset through `ResumableSampler`, whose batch b is a pure
function of (seed, b, rank), so a resumed run sees exactly the batches an uninterrupted run
would, and each rank sees its own shard.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import gather_object
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from tokworld.errors import TokWorldError
from tokworld.folders import first_change, recover, write_json_atomic
from tokworld.training.accel import describe, make_accelerator
from tokworld.training.checkpoint import (
    load_train_state,
    read_state,
    rng_state,
    save_train_state,
)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and bookkeeping of one training stage."""

    steps: int = 1000
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.99)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    grad_accum: int = 1
    checkpoint_every: int = 500
    eval_every: int = 0
    eval_batches: int = 8
    log_every: int = 10
    seed: int = 0
    mixed_precision: str = "auto"


class ResumableSampler:
    """Infinite batch sampler: epoch-wise permutations, sharded by rank, resumable by index.

    Batch b of rank r is a pure function of (seed, b, r). Epoch e uses permutation(seed, e), of
    which rank r takes every world_size-th index. Datasets smaller than one global batch are
    sampled with replacement.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, rank=0, world_size=1, start=0):
        if num_items < 1:
            raise TokWorldError("nothing to train on: the dataset has no samples")
        self.n, self.batch_size, self.seed = num_items, batch_size, seed
        self.rank, self.world_size, self.start = rank, world_size, start
        self.per_epoch = num_items // world_size // batch_size

    def batch(self, b: int) -> list[int]:
        if self.per_epoch == 0:
            rng = np.random.default_rng([self.seed, b, self.rank])
            return rng.integers(0, self.n, self.batch_size).tolist()
        epoch, i = divmod(b, self.per_epoch)
        perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        shard = perm[self.rank :: self.world_size]
        return shard[i * self.batch_size : (i + 1) * self.batch_size].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        b = self.start
        while True:
            yield self.batch(b)
            b += 1


class _LossModule(torch.nn.Module):
    """Makes `compute_loss` the forward, so DDP syncs gradients and autocast applies."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict]:
        return self.model.compute_loss(batch)


def lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    """Linear warmup then cosine decay to `min_lr_ratio`."""

    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices only (not on norms and biases)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def _to_float(metrics: dict) -> dict[str, float]:
    return {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in metrics.items()}


def train(
    model: torch.nn.Module,
    dataset: Dataset,
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    name: str,
    resume: bool = False,
    eval_dataset: Dataset | None = None,
    config_to_check: dict | None = None,
    progress: bool = True,
) -> dict:
    """Train `model` on `dataset` for `cfg.steps` optimizer steps; return final metrics.

    `out_dir/train_state` holds the checkpoint (every `checkpoint_every` steps and at the end);
    `out_dir/logs` the tracker logs; `out_dir/history.json` the logged metrics. With `resume`,
    training continues from the checkpoint exactly. `config_to_check` (`resume_config`: the model
    and training configs) is stored with the checkpoint, and resuming with another is an error.
    """
    out_dir = Path(out_dir)
    state_dir = out_dir / "train_state"
    accelerator = make_accelerator(cfg.mixed_precision, cfg.grad_accum, str(out_dir / "logs"))
    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    start, history = 0, []
    if resume:
        check_resume_config(state_dir, config_to_check)
        start, extra = load_train_state(
            state_dir, model, optimizer, scheduler, rank=accelerator.process_index
        )
        history = extra.get("history", [])
    wrapped, optimizer = accelerator.prepare(_LossModule(model), optimizer)
    sampler = ResumableSampler(
        len(dataset),
        cfg.batch_size,
        cfg.seed,
        accelerator.process_index,
        accelerator.num_processes,
        start=start * cfg.grad_accum,
    )
    # Its own generator: creating the iterator must not draw from the global RNG.
    batches = iter(DataLoader(dataset, batch_sampler=sampler, generator=torch.Generator()))
    if accelerator.is_main_process:
        accelerator.init_trackers(name, config={**asdict(cfg), "betas": str(cfg.betas)})
        print(json.dumps({"stage": name, **describe(accelerator)}))
    bar = tqdm(
        range(start, cfg.steps),
        initial=start,
        total=cfg.steps,
        desc=name,
        disable=not (progress and accelerator.is_main_process),
    )
    metrics: dict[str, float] = {}
    for step in bar:
        wrapped.train()
        for _ in range(cfg.grad_accum):
            batch = {k: v.to(accelerator.device) for k, v in next(batches).items()}
            with accelerator.accumulate(wrapped):
                loss, metrics = wrapped(batch)
                require_finite(accelerator, loss, "loss", name, step + 1)
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.grad_clip > 0:
                    norm = accelerator.clip_grad_norm_(wrapped.parameters(), cfg.grad_clip)
                    if accelerator.scaler is None:  # fp16's scaler skips inf gradients itself
                        require_finite(accelerator, norm, "gradient norm", name, step + 1)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        metrics = {"loss": float(loss.detach()), **_to_float(metrics)}
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            metrics["lr"] = scheduler.get_last_lr()[0]
            bar.set_postfix({k: f"{v:.4g}" for k, v in list(metrics.items())[:4]})
            accelerator.log(metrics, step=step + 1)
            history.append({"step": step + 1, **metrics})
        if eval_dataset is not None and cfg.eval_every and (step + 1) % cfg.eval_every == 0:
            ev = evaluate(accelerator.unwrap_model(wrapped).model, eval_dataset, cfg, accelerator)
            require_finite(accelerator, ev["eval/loss"], "held-out loss", name, step + 1)
            accelerator.log(ev, step=step + 1)
            history.append({"step": step + 1, **ev})
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            _checkpoint(accelerator, model, optimizer, scheduler, step + 1, state_dir, history,
                        config_to_check)  # fmt: skip
    for tracker in accelerator.trackers:  # not `end_training`: it ends the process group too,
        tracker.finish()  # which the stages that follow in the same processes still need
    if eval_dataset is not None:
        metrics.update(evaluate(model, eval_dataset, cfg, accelerator))
        require_finite(accelerator, metrics["eval/loss"], "held-out loss", name, cfg.steps)
    if accelerator.is_main_process:
        write_json_atomic(out_dir / "history.json", history, indent=1)
    return {**metrics, **describe(accelerator), "steps": cfg.steps}


def require_finite(accelerator, value, what: str, name: str, step: int) -> None:
    """Stop the stage `name` with a TokWorldError when `value` (a loss) is not finite in any
    process, before it reaches the weights: the last checkpoint stays the last good one.

    Every process calls this at the same points (it gathers), so all of them stop together.
    """
    value = torch.as_tensor(value, dtype=torch.float32, device=accelerator.device).detach()
    finite = accelerator.gather(torch.isfinite(value).float().reshape(1))
    if not bool(finite.all()):
        raise TokWorldError(
            f"{name} stopped at step {step}: the {what} is {float(value):g} in process "
            f"{accelerator.process_index}, not a finite number; the last checkpoint is kept"
        )


def check_resume_config(state_dir: Path, config: dict | None) -> None:
    """Before loading anything: the checkpoint in `state_dir` (if any) made with another config
    than `config` (None: any) cannot be resumed; the one-line error names the first change."""
    recover(state_dir)
    if config is None or not (state_dir / "state.json").exists():
        return
    saved = read_state(state_dir)["extra"].get("config")
    change = first_change(saved, config)
    if change is not None:
        key, old, new = change
        raise TokWorldError(
            f"cannot resume {state_dir}: it was trained with another config "
            f"({key or 'config'}: {json.dumps(old)} -> {json.dumps(new)})"
        )


def resume_config(model_config: dict, train_config) -> dict:
    """What a checkpoint must have been trained with to be resumed, as JSON: the model's
    config and the stage's whole training config (a dataclass: lr, batch size, seed, steps...)."""
    return json.loads(json.dumps({"model": model_config, "train": asdict(train_config)}))


def _checkpoint(accelerator, model, optimizer, scheduler, step, state_dir, history, config):
    states = gather_object([rng_state()])
    if accelerator.is_main_process:
        extra = {"history": history, "config": config}
        save_train_state(state_dir, model, optimizer, scheduler, step, states, extra)
    accelerator.wait_for_everyone()


@torch.no_grad()
def evaluate(model, dataset: Dataset, cfg: TrainConfig, accelerator=None) -> dict[str, float]:
    """Mean `compute_loss` metrics over `eval_batches` fixed batches, prefixed `eval/`.

    Uses its own RNG-free batch order, so evaluating never perturbs training randomness.
    """
    was_training = model.training
    model.eval()
    device = accelerator.device if accelerator is not None else torch.device("cpu")
    sums: dict[str, float] = {}
    n = min(cfg.eval_batches, max(1, len(dataset) // cfg.batch_size))
    for b in range(n):
        idx = list(range(b * cfg.batch_size, min(len(dataset), (b + 1) * cfg.batch_size)))
        batch = torch.utils.data.default_collate([dataset[i] for i in idx])
        loss, metrics = model.compute_loss({k: v.to(device) for k, v in batch.items()})
        for k, v in {"loss": loss, **metrics}.items():
            sums[k] = sums.get(k, 0.0) + float(v) / n
    model.train(was_training)
    return {f"eval/{k}": v for k, v in sums.items()}
