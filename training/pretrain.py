"""`tokworld pretrain`: frame tokenizer -> cached codes -> world model, on offline datasets.

Each `dataset` is a local dataset, a Hub id, or a `minari:`/`hf:` spec (`tokworld.data.importers`;
Minari datasets are converted once into `$TOKWORLD_CACHE/imports`, default `~/.cache/tokworld`).
Several datasets train one tokenizer and one world model (`tokworld.data.mixture`): every window
carries its dataset's task identity, each dataset gives held-out episodes, and `mix` weighs how
often each is sampled.

A run directory::

    RUN/pretrain.json       the run's settings and datasets' fingerprints (a resume must use
                            the same ones)
    RUN/held_out.json       the datasets (with fingerprints) and the episodes held out of them
    RUN/tokenizer/          frame tokenizer: config.json + model.safetensors
    RUN/codes/              the dataset tokenized once: codes, actions, rewards, ends
    RUN/world_model/        world model: config.json + model.safetensors
    RUN/metrics.json        metrics of each finished stage (held-out ones prefixed `eval/`)
    RUN/train_state/tokenizer/, RUN/train_state/world_model/
                            checkpoints (optimizer, scheduler, RNG), logs, history.json

Each stage's output appears (atomically) only when the stage is done. With `resume`, finished
stages are skipped and the running one continues from its last checkpoint, so a killed run loses
at most the steps since that checkpoint. Under `accelerate launch` every process runs this
function; the main process alone writes files (holding the run's lock), the others wait for it.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import datasets
import numpy as np
import torch
from accelerate import PartialState
from torch.utils.data import Subset

from tokworld.config import ModelChoices
from tokworld.data.format import TrajectoryMeta, episode_bounds
from tokworld.data.mixture import held_out_episodes, load_mixture, mixed_rows, split_by_task
from tokworld.errors import TokWorldError
from tokworld.folders import atomic_dir, read_json, recover, write_json_atomic
from tokworld.model import TokWorldModel
from tokworld.presets import NAMES, check_preset
from tokworld.tokenizer.observation import load_observation_tokenizer
from tokworld.training.accel import seed_everything
from tokworld.training.checkpoint import open_run
from tokworld.training.loop import TrainConfig, evaluate
from tokworld.training.tokenizer import (
    FrameDataset,
    fit_vector_codec,
    tokenize_dataset,
    train_tokenizer,
)
from tokworld.training.world_model import (
    check_event_share,
    event_share_field,
    tiled_windows,
    train_world_model,
)


@dataclass(frozen=True)
class PretrainConfig:
    """Settings of a pretraining run; `preset` sizes both the tokenizer and the world model."""

    dataset: tuple[str, ...] = field(
        metadata={"help": "dataset directory, Hub id, minari:ID or hf:ID; repeat for several"}
    )
    mix: tuple[float, ...] | None = field(
        default=None,
        metadata={"help": "sampling weight of each --dataset, in order (default: by size)"},
    )
    preset: str = field(default="small", metadata={"choices": NAMES})
    model: ModelChoices = field(default_factory=ModelChoices)
    tokenizer: str | None = field(
        default=None, metadata={"help": "reuse this trained tokenizer directory"}
    )
    tokenizer_steps: int = 2000
    tokenizer_batch_size: int = 64
    world_model_steps: int = 2000
    batch_size: int = field(default=32, metadata={"help": "world-model batch per process"})
    lr: float = field(
        default=3e-4,
        metadata={"help": "world-model peak learning rate (the tokenizer uses its own default)"},
    )
    event_share: float = event_share_field()
    grad_accum: int = 1
    checkpoint_every: int = 250
    eval_every: int = 250
    eval_fraction: float = field(default=0.1, metadata={"help": "episodes held out"})
    tokenize_batch_size: int = field(default=256, metadata={"help": "frames per tokenizer batch"})
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.dataset, str):
            object.__setattr__(self, "dataset", (self.dataset,))
        object.__setattr__(self, "dataset", tuple(self.dataset))
        if not self.dataset:
            raise TokWorldError("pretraining needs at least one --dataset")
        if self.mix is not None:
            object.__setattr__(self, "mix", tuple(float(w) for w in self.mix))
            if len(self.mix) != len(self.dataset) or min(self.mix) <= 0:
                raise TokWorldError(
                    f"--mix needs one positive weight per --dataset ({len(self.dataset)}), "
                    f"got {list(self.mix)}"
                )
        check_preset(self.preset)
        check_event_share(self.event_share)
        positive = ("world_model_steps", "batch_size", "tokenizer_batch_size", "grad_accum",
                    "checkpoint_every", "tokenize_batch_size")  # fmt: skip
        for name in positive:
            if getattr(self, name) < 1:
                raise TokWorldError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.tokenizer is None and self.tokenizer_steps < 1:
            raise TokWorldError("tokenizer_steps must be >= 1 unless a tokenizer is reused")
        if not 0 <= self.eval_fraction < 1:
            raise TokWorldError(f"eval_fraction must lie in [0, 1), got {self.eval_fraction}")


def pretrain(cfg: PretrainConfig, out: str | Path, resume: bool = False, progress=True) -> dict:
    """Run (or with `resume`, continue) the pipeline into the run directory `out`.

    Returns the contents of `RUN/metrics.json`: per stage its final metrics and held-out
    `eval/` metrics, with the run's world size and distributed type.
    """
    out = Path(out)
    state = PartialState(cpu=not torch.cuda.is_available())
    reused = None
    if cfg.tokenizer is not None:
        reused = load_observation_tokenizer(cfg.tokenizer, device=str(state.device))
    frame_size = cfg.model.tokenizer_config(cfg.preset).frame_size
    if reused is not None and reused.observation == "frames":
        frame_size = reused.config.frame_size
    with state.main_process_first():  # a `minari:` spec is converted once, by the main process
        ds, meta, parts = load_mixture(cfg.dataset, frame_size)
    # The datasets' content too: a resume on data that changed since would train on other data.
    settings = {**asdict(cfg), "fingerprints": {p.spec: p.fingerprint for p in parts}}
    with open_run(out, state, resume, "pretrain.json", settings):  # inputs are good: write
        return _run(cfg, out, ds, meta, parts, reused, resume, state, progress)


def _run(cfg, out, ds, meta, parts, reused, resume, state, progress) -> dict:
    """The stages of `pretrain` in the opened run directory `out`."""
    metrics = _read_metrics(out)
    train_ds, eval_ds = split_by_task(ds, cfg.eval_fraction, cfg.seed)
    held = held_out_episodes(eval_ds)
    if state.is_main_process:
        record = {"datasets": [asdict(p) for p in parts], "frame_size": meta.frame_size}
        write_json_atomic(out / "held_out.json", {**record, "episodes": held})
    metrics["dataset"] = {
        "path": cfg.dataset[0] if len(cfg.dataset) == 1 else list(cfg.dataset),
        "env_id": meta.env_id,
        "steps": len(ds),
        "episodes": len(episode_bounds(ds)[0]),
        "held_out_episodes": len(held),
        "source": meta.source,  # provenance: collect settings, or the import's spec and conversion
        "datasets": [asdict(p) for p in parts],
    }

    if reused is not None and reused.observation != meta.observation:
        raise TokWorldError(
            f"--tokenizer {cfg.tokenizer} reads {reused.observation}, the data has "
            f"{meta.observation} observations"
        )
    tokenizer = _tokenizer_stage(
        cfg, out, reused, train_ds, eval_ds, resume, metrics, state, progress
    )
    codes = _codes_stage(cfg, out, tokenizer, ds, state)

    stage = out / "train_state" / "world_model"
    seed_everything(cfg.seed)
    tasks = [p.env_id for p in parts]
    model = TokWorldModel(
        cfg.model.world_model_config(cfg.preset, meta.space, tokenizer, tasks=tasks)
    )
    train_codes, eval_codes = split_by_task(codes, cfg.eval_fraction, cfg.seed)
    start = time.perf_counter()
    result = train_world_model(
        model,
        train_codes,
        _world_model_train_config(cfg),
        stage,
        eval_ds=eval_codes,
        resume=_continues(stage, resume, state),
        progress=progress,
        mix=cfg.mix,
        event_share=cfg.event_share,
    )
    metrics["world_model"] = {**result, "seconds": round(time.perf_counter() - start, 1)}
    if eval_codes is not None:
        metrics["world_model"]["eval_by_dataset"] = _eval_by_dataset(model, eval_codes, parts, cfg)
    metrics["world_size"] = result["world_size"]
    metrics["distributed_type"] = result["distributed_type"]
    if state.is_main_process:
        _save(model, out / "world_model")
        write_json_atomic(out / "metrics.json", metrics)
    state.wait_for_everyone()
    return metrics


def _eval_by_dataset(model, held: datasets.Dataset, parts, cfg: PretrainConfig) -> dict:
    """Held-out metrics (`eval/...`) of each dataset of the mixture, by its spec."""
    tasks = np.asarray(held.select_columns(["task"]).with_format("numpy")[:]["task"])
    train_cfg = _world_model_train_config(cfg)
    return {
        parts[t].spec: evaluate(
            model, tiled_windows(model, held.select(np.flatnonzero(tasks == t))), train_cfg
        )
        for t in np.unique(tasks).tolist()
    }


def _world_model_train_config(cfg: PretrainConfig) -> TrainConfig:
    return TrainConfig(
        steps=cfg.world_model_steps,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        warmup_steps=min(100, cfg.world_model_steps // 10),
        grad_accum=cfg.grad_accum,
        checkpoint_every=cfg.checkpoint_every,
        eval_every=cfg.eval_every,
        seed=cfg.seed,
    )


def _tokenizer_stage(cfg, out, reused, train_ds, eval_ds, resume, metrics, state, progress):
    """The run's observation tokenizer: already saved, `reused` (from `cfg.tokenizer`), fitted
    (vector observations) or trained (frames)."""
    final = out / "tokenizer"
    recover(final)
    if (final / "model.safetensors").exists():
        return load_observation_tokenizer(final, device=str(state.device))
    start = time.perf_counter()
    if reused is not None:
        tokenizer = reused
        metrics["tokenizer"] = {"source": cfg.tokenizer}
    elif TrajectoryMeta.from_dataset(train_ds).observation == "vector":
        tokenizer = fit_vector_codec(train_ds, cfg.model.vector_bins, cfg.model.binning)
        metrics["tokenizer"] = {"kind": "vector_codec", **tokenizer.config.to_dict()}
    else:
        stage = out / "train_state" / "tokenizer"
        tokenizer, result = train_tokenizer(
            _mixed_frames(train_ds, cfg),
            stage,
            config=cfg.model.tokenizer_config(cfg.preset),
            steps=cfg.tokenizer_steps,
            batch_size=cfg.tokenizer_batch_size,
            resume=_continues(stage, resume, state),
            eval_dataset=eval_ds,
            progress=progress,
            grad_accum=cfg.grad_accum,
            checkpoint_every=cfg.checkpoint_every,
            eval_every=cfg.eval_every,
            seed=cfg.seed,
        )
        metrics["tokenizer"] = {**result, "seconds": round(time.perf_counter() - start, 1)}
    if state.is_main_process:
        _save(tokenizer, final)
        write_json_atomic(out / "metrics.json", metrics)
    state.wait_for_everyone()
    return tokenizer.eval()


def _codes_stage(cfg, out, tokenizer, ds, state) -> datasets.Dataset:
    """The dataset tokenized once (by the main process), without its frames: `RUN/codes`."""
    final = out / "codes"
    if state.is_main_process and not final.exists():
        with atomic_dir(final) as tmp:  # the map's cache goes in its parent, removed after
            cache = str(tmp.parent / "tokenized.arrow")
            codes = tokenize_dataset(tokenizer, ds, cfg.tokenize_batch_size, cache_file_name=cache)
            codes.remove_columns("observation").save_to_disk(str(tmp))
    state.wait_for_everyone()
    return datasets.load_from_disk(str(final))


def _mixed_frames(ds: datasets.Dataset, cfg: PretrainConfig):
    """The frames the tokenizer trains on: `ds`, or with `cfg.mix` its tasks in those shares."""
    if cfg.mix is None:
        return ds
    tasks = np.asarray(ds.select_columns(["task"]).with_format("numpy")[:]["task"])
    return Subset(FrameDataset(ds), mixed_rows(tasks, list(cfg.mix), cfg.seed).tolist())


def _continues(stage: Path, resume: bool, state: PartialState) -> bool:
    """Whether a stage resumes its checkpoint in `stage`; without one, it starts over in an
    empty folder (a stage killed before its first checkpoint left only logs)."""
    recover(stage / "train_state")
    if resume and (stage / "train_state" / "state.json").exists():
        return True
    state.wait_for_everyone()  # every process has looked before the folder goes
    if state.is_main_process:
        shutil.rmtree(stage, ignore_errors=True)
    state.wait_for_everyone()
    return False


def _save(model, directory: Path) -> None:
    """`save_pretrained` into a sibling, then swap: a kill never leaves a half-written model."""
    with atomic_dir(directory, replace=True) as tmp:
        model.save_pretrained(tmp)


def _read_metrics(out: Path) -> dict:
    path = out / "metrics.json"
    return read_json(path, "run metrics") if path.exists() else {}
