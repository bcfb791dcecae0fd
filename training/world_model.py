"""World-model training on cached frame codes: windows, input checks, the shared loop.

The codes dataset is a trajectory dataset whose frames were replaced by a `codes` column (K frame
codes per step, from the frame tokenizer). Training samples windows of `context_steps` steps that
never cross an episode; evaluation uses held-out episodes. The optimisation itself is
`tokworld.training.loop.train`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, field
from pathlib import Path

import datasets
import numpy as np
from torch.utils.data import Subset

from tokworld.data.format import TrajectoryMeta
from tokworld.data.mixture import mixed_rows
from tokworld.data.windows import Tiling, WindowDataset, event_steps, oversample
from tokworld.errors import TokWorldError
from tokworld.model import TokWorldModel
from tokworld.tokenizer.vocab import Vocabulary
from tokworld.training.calibration import event_rates, fit_event_shift
from tokworld.training.loop import TrainConfig, train

WINDOW_COLUMNS = ("codes", "action", "reward", "terminated")


def event_share_field():
    """The `event_share` setting of `pretrain` and the online loop (see `train_world_model`)."""
    return field(
        default=0.0,
        metadata={
            "help": "world-model training: repeat the windows holding a rare event (an end, or a "
            "reward other than the usual one) until they make up this share of the samples, "
            "for sparse rewards (0: as they come)"
        },
    )


def check_event_share(share: float) -> None:
    """Raise TokWorldError unless `share` lies in [0, 1)."""
    if not 0 <= share < 1:
        raise TokWorldError(f"event_share must lie in [0, 1), got {share}")


def check_codes(vocab: Vocabulary, ds: datasets.Dataset) -> None:
    """Raise TokWorldError unless `ds` has a `codes` column the vocabulary can encode."""
    if "codes" not in ds.column_names:
        raise TokWorldError("the dataset has no 'codes' column: tokenize its frames first")
    codes = np.asarray(ds.select_columns(["codes"]).with_format("numpy")[:]["codes"])
    k = vocab.tokens_per_frame
    if codes.ndim != 2 or codes.shape[1] != k:
        raise TokWorldError(
            f"the dataset has frame codes of shape {codes.shape[1:]} per step; the world "
            f"model's frame slice expects {k} codes per frame"
        )
    if codes.size and (codes.min() < 0 or codes.max() >= vocab.codebook_size):
        raise TokWorldError(
            f"the dataset's frame codes lie in [{codes.min()}, {codes.max()}], outside the "
            f"world model's codebook of {vocab.codebook_size}"
        )


def window_dataset(model: TokWorldModel, ds: datasets.Dataset) -> WindowDataset:
    """Check a codes dataset against the model; return its windows of `context_steps` steps."""
    vocab = model.vocab
    vocab.check_action_space(TrajectoryMeta.from_dataset(ds).space)
    check_codes(vocab, ds)
    columns = WINDOW_COLUMNS + (("task",) if "task" in ds.column_names else ())
    ds = ds.select_columns(["episode_index", *columns])
    return WindowDataset(ds, model.config.context_steps, columns)


def tiled_windows(model: TokWorldModel, ds: datasets.Dataset) -> Tiling:
    """Windows of `ds` holding each of its steps once (`Tiling`): what held-out evaluation and
    the event calibration read."""
    return Tiling(window_dataset(model, ds))


def run_config(model: TokWorldModel, cfg: TrainConfig) -> dict:
    """What a checkpoint must have been trained with to be resumed: model and train configs."""
    model_cfg = model.config.to_diff_dict()
    for fitted in ("transformers_version", "event_shift"):  # not chosen: no reason to refuse
        model_cfg.pop(fitted, None)
    return json.loads(json.dumps({"model": model_cfg, "train": asdict(cfg)}))


def train_world_model(
    model: TokWorldModel,
    ds: datasets.Dataset,
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    eval_ds: datasets.Dataset | None = None,
    resume: bool = False,
    progress: bool = True,
    mix: tuple[float, ...] | None = None,
    event_share: float = 0.0,
) -> dict:
    """Train `model` on the codes dataset `ds`; return the final metrics.

    `mix` weighs the tasks of a mixture (`ds`'s `task` column): task t's windows make up the
    share `mix[t] / sum(mix)` of what training samples. `event_share` > 0 repeats the windows
    that hold a rare event (`event_steps`: an end, or a reward other than the usual one) until
    they make up that share, so that a sparse task's few rewards are in most batches
    (`event_balance` then weighs them).

    `eval_ds` (held-out episodes) is evaluated every `cfg.eval_every` steps and at the end
    (metrics prefixed `eval/`). Checkpoints go to `out_dir/train_state`; resuming one made with
    another model or train config is an error. After training, the event calibration is fitted
    on windows tiling the training episodes (`calibration.fit_event_shift`, into
    `model.config.event_shift`; `fit_steps` and `<kind>_fit_events` say on how much)
    and, with `eval_ds`, the held-out event rates are reported beside the model's mean
    predicted probabilities of an event, raw and calibrated (`calibration.event_rates`).
    """
    windows = window_dataset(model, ds)
    rows = np.arange(len(windows))
    if mix is not None:
        tasks = np.asarray(ds.select_columns(["task"]).with_format("numpy")[:]["task"])
        rows = mixed_rows(tasks[windows.starts], list(mix), cfg.seed)
    if event_share:
        rows = rows[oversample(windows.has_event(event_steps(ds))[rows], event_share, cfg.seed)]
    held_out = None if eval_ds is None else tiled_windows(model, eval_ds)
    metrics = train(
        model,
        Subset(windows, rows.tolist()),
        cfg,
        out_dir,
        name="world_model",
        resume=resume,
        eval_dataset=held_out,
        config_to_check=run_config(model, cfg),
        progress=progress,
    )
    model.config.event_shift, fit = fit_event_shift(model, Tiling(windows), seed=cfg.seed)
    reward, end = model.config.event_shift
    metrics = {**metrics, "reward_event_shift": reward, "end_event_shift": end, **fit}
    if held_out is not None:  # the rates, and how the fit carries over to unseen episodes
        metrics.update({f"eval/{k}": v for k, v in event_rates(model, held_out).items()})
    return metrics
