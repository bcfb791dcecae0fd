"""The online loop: collect real steps -> append -> tokenizer -> world model -> policy, per epoch.

Epoch e collects real steps (uniformly random actions in epoch 0, the current policy with
temperature and epsilon-greedy exploration after, or with `act="plan"` a planner in the world
model: then no policy is trained or written, and the planner is what is evaluated), appends
them to the run's dataset, updates the frame tokenizer on all frames (a vector codec is fitted
once, on epoch 0's data or by the pretrained run, and then kept: its tokens must keep their
meaning), re-tokenizes them, updates the world model on the codes and trains the policy in
imagination (`training.imagination`); every `eval_every` epochs it plays real episodes. A run
directory::

    RUN/online.json            the run's settings (a resume must use the same ones)
    RUN/data/chunk_XXX/        the real steps of epoch XXX; all chunks are the run's dataset
    RUN/tokenizer/, RUN/world_model/, RUN/policy/
                               the models after the last finished epoch
    RUN/metrics.json           one entry per epoch: real env steps so far, stage metrics, returns
    RUN/train_state/online/    checkpoint of the last finished epoch (models, policy optimizer)
    RUN/train_state/work/      scratch of the running epoch

Every epoch starts from seeds derived from (seed, epoch) and from the checkpoint of the epoch
before, so a run killed anywhere and resumed ends with the same dataset and weights as one that
never stopped: resuming drops the chunk and the work of the unfinished epoch and redoes it.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import datasets
import numpy as np

from tokworld.data.collect import collect
from tokworld.data.format import TrajectoryMeta, load_trajectories
from tokworld.data.mixture import fingerprint
from tokworld.errors import TokWorldError
from tokworld.folders import atomic_dir, read_json, recover, write_json_atomic
from tokworld.model import TokWorldModel
from tokworld.planner import Planner
from tokworld.policy import ActorCritic, Agent, build_policy
from tokworld.returns import play_episodes
from tokworld.run import default_device, load_policy, load_tokenizer, load_world_model
from tokworld.run_lock import start_run
from tokworld.tokenizer.observation import ObservationTokenizer
from tokworld.training.accel import seed_everything
from tokworld.training.imagination import train_policy
from tokworld.training.loop import TrainConfig, train
from tokworld.training.online_config import OnlineConfig
from tokworld.training.tokenizer import (
    FrameDataset,
    fit_vector_codec,
    tokenize_dataset,
    train_tokenizer,
)
from tokworld.training.world_model import train_world_model

MODELS = ("tokenizer", "world_model", "policy")


@dataclass
class Models:
    """What an epoch updates; None (only before epoch 0) means: build it from `preset`."""

    tokenizer: ObservationTokenizer | None = None
    world_model: TokWorldModel | None = None
    policy: ActorCritic | None = None


def run_chunks(run: str | Path) -> dict[int, Path]:
    """{epoch: RUN/data/chunk_XXX} of the run, in epoch order. Hidden entries (a writer's
    leftovers) are skipped; anything else in RUN/data is refused, so that nothing but the run's
    own steps is ever trained on."""
    data, chunks = Path(run) / "data", {}
    for path in sorted(data.iterdir()) if data.is_dir() else []:
        if path.name.startswith("."):
            continue
        number = path.name.removeprefix("chunk_")
        if not (path.is_dir() and path.name.startswith("chunk_") and number.isdigit()):
            raise TokWorldError(
                f"{path} is not a chunk of run {run}: its data/ holds only the chunk_XXX "
                "datasets the run collected; move it away"
            )
        chunks[int(number)] = path
    return chunks


def run_dataset(run: str | Path) -> datasets.Dataset:
    """The run's real steps: its chunks in order, episode indices renumbered to stay unique."""
    chunks = list(run_chunks(run).values())
    if not chunks:
        raise TokWorldError(f"run {run} has no data/chunk_* datasets")
    parts = [load_trajectories(str(c)) for c in chunks]
    episodes, offset = [], 0
    for part in parts:
        ep = part.select_columns(["episode_index"]).with_format("numpy")[:]["episode_index"]
        episodes.append(ep - ep.min() + offset)
        offset = int(episodes[-1].max()) + 1
    ds = datasets.concatenate_datasets(parts).remove_columns("episode_index")
    ds = ds.add_column("episode_index", np.concatenate(episodes).astype(np.int64))
    ds.info.description = parts[0].info.description
    return ds


def train_online(
    cfg: OnlineConfig,
    out: str | Path,
    models: Models | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
    source: dict | None = None,
) -> dict:
    """Run (or with `resume`, continue) the online loop in the run directory `out`.

    `models` are the starting point (e.g. a pretrained tokenizer and a world model adapted to
    this env's actions); missing ones are built from `cfg.preset` in epoch 0. `source` (JSON)
    is recorded with the settings. Returns `RUN/metrics.json`.
    """
    out = Path(out)
    settings = {"config": cfg.to_dict(), "source": source}
    with start_run(out, settings, resume, "online.json"):
        (out / "data").mkdir(exist_ok=True)
        return _run(cfg, out, models or Models(), resume, progress)


def _run(cfg: OnlineConfig, out: Path, models: Models, resume: bool, progress: bool) -> dict:
    """The epochs of `train_online` in the opened run directory `out`."""
    first, history = 0, []
    snapshot = out / "train_state" / "online"
    for folder in (snapshot, *(out / name for name in MODELS)):
        recover(folder)
    if resume and (snapshot / "state.json").exists():
        keys = {"epoch": int, "history": list, "chunks": dict}
        state = read_json(snapshot / "state.json", "online checkpoint", keys=keys)
        first, history = state["epoch"] + 1, state["history"]
        _check_chunks(out, state["chunks"])
        models = _load_models(snapshot, cfg.act)
    for epoch, chunk in run_chunks(out).items():  # the unfinished epoch's data, if any
        if epoch >= first:
            shutil.rmtree(chunk)
    metrics = _metrics(out, cfg, history)
    for epoch in range(first, cfg.epochs):
        began = time.perf_counter()
        entry = _epoch(cfg, out, epoch, models, progress)
        entry["seconds"] = round(time.perf_counter() - began, 1)
        history.append(entry)
        _commit(out, epoch, models, history)
        metrics = _metrics(out, cfg, history)
    return metrics


def _epoch(cfg: OnlineConfig, out: Path, epoch: int, models: Models, progress: bool) -> dict:
    """One epoch; updates `models` in place (or builds them); returns its history entry."""
    seed = cfg.seed * 1000 + epoch
    seed_everything(seed)
    work = out / "train_state" / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    entry: dict = {"epoch": epoch}

    chunk = out / "data" / f"chunk_{epoch:03d}"
    actor = "random" if epoch == 0 else _actor(cfg, models, seed, collecting=True)
    steps = cfg.steps_in(epoch)
    observation = cfg.observation if models.tokenizer is None else models.tokenizer.observation
    collected = collect(cfg.env_id, steps, chunk, actor, seed, cfg.frame_size, progress=progress,
                        observation=observation)  # fmt: skip
    entry["collect"] = {"steps": collected.steps, "mean_return": collected.mean_return}
    ds = run_dataset(out)
    entry["env_steps"] = len(ds)
    meta = TrajectoryMeta.from_dataset(ds)
    space = meta.space

    if models.tokenizer is None and meta.observation == "vector":
        models.tokenizer = fit_vector_codec(ds, cfg.model.vector_bins, cfg.model.binning)
        entry["tokenizer"] = {"kind": "vector_codec", **models.tokenizer.config.to_dict()}
    elif models.tokenizer is None:
        models.tokenizer, result = train_tokenizer(
            ds, work / "tokenizer", config=cfg.model.tokenizer_config(cfg.preset),
            steps=max(1, cfg.tokenizer_steps),
            batch_size=cfg.tokenizer_batch_size, progress=progress, seed=seed,
            checkpoint_every=max(1, cfg.tokenizer_steps),
        )  # fmt: skip
        entry["tokenizer"] = _short(result)
    elif cfg.tokenizer_steps and models.tokenizer.observation == "frames":
        tcfg = TrainConfig(
            steps=cfg.tokenizer_steps, batch_size=cfg.tokenizer_batch_size, lr=1e-3,
            warmup_steps=min(100, cfg.tokenizer_steps // 10), checkpoint_every=cfg.tokenizer_steps,
            seed=seed,
        )  # fmt: skip
        result = train(models.tokenizer.train(), FrameDataset(ds), tcfg, work / "tokenizer",
                       name="tokenizer", progress=progress)  # fmt: skip
        entry["tokenizer"] = _short(result)
    tokenizer = models.tokenizer.eval()
    codes = tokenize_dataset(tokenizer, ds, cache_file_name=str(work / "codes.arrow"))
    codes = codes.remove_columns("observation")

    if models.world_model is None:
        model_cfg = cfg.model.world_model_config(cfg.preset, space, tokenizer)
        models.world_model = TokWorldModel(model_cfg)
    wcfg = TrainConfig(
        steps=cfg.world_model_steps, batch_size=cfg.world_model_batch_size, lr=cfg.world_model_lr,
        warmup_steps=min(100, cfg.world_model_steps // 10),
        checkpoint_every=cfg.world_model_steps, seed=seed,
    )  # fmt: skip
    result = train_world_model(models.world_model, codes, wcfg, work / "world_model",
                               progress=progress, event_share=cfg.event_share)  # fmt: skip
    entry["world_model"] = _short(result)

    if cfg.act == "policy":
        entry["policy"] = _train_policy(cfg, out, epoch, models, codes, seed, progress)

    if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
        agent = _actor(cfg, models, seed, collecting=False)
        episodes = play_episodes(cfg.env_id, agent, cfg.eval_episodes, seed=10**6 + seed,
                            frame_size=cfg.frame_size, observation=tokenizer.observation,
                            progress=progress)  # fmt: skip
        entry["eval"] = episodes.summary()
    return entry


def _actor(cfg: OnlineConfig, models: Models, seed: int, collecting: bool) -> Agent | Planner:
    """What acts in the real env: the policy (sampling while collecting, with `epsilon` random
    actions), or a planner in the world model."""
    if cfg.act == "plan":  # on the device the loop trains on (a resumed model loads on CPU)
        models.world_model.to(default_device())
        models.tokenizer.to(default_device())
        return Planner(models.world_model, models.tokenizer, cfg.plan, seed=seed)
    if collecting:
        return Agent(models.policy, models.tokenizer, False, cfg.temperature, cfg.epsilon, seed)
    return Agent(models.policy, models.tokenizer, seed=seed)


def _train_policy(cfg: OnlineConfig, out: Path, epoch: int, models: Models,
                  codes: datasets.Dataset, seed: int, progress: bool) -> dict:  # fmt: skip
    """The epoch's policy training in imagination (the policy built at the first); returns its
    metrics."""
    tokenizer = models.tokenizer
    if models.policy is None:
        action = models.world_model.vocab.action
        models.policy = build_policy(
            cfg.preset, action, tokenizer, cfg.policy_input, cfg.critic, cfg.value_bins
        )
    work = out / "train_state" / "work"
    previous = out / "train_state" / "online" / "policy_state"
    if epoch > 0 and previous.exists():
        shutil.copytree(previous, work / "policy" / "train_state")
    icfg = replace(cfg.imagination, steps=(epoch + 1) * cfg.imagination.steps, seed=seed)
    result = train_policy(models.policy, models.world_model, tokenizer, codes, icfg,
                          work / "policy", resume=epoch > 0, progress=progress)  # fmt: skip
    return _short(result)


def _short(result: dict) -> dict:
    """Stage metrics worth keeping per epoch: numbers, not the accelerator description."""
    skip = {"world_size", "distributed_type", "device", "mixed_precision"}
    numbers = {k: v for k, v in result.items() if isinstance(v, int | float) and k not in skip}
    return {k: round(v, 5) for k, v in numbers.items()}


def _commit(out: Path, epoch: int, models: Models, history: list[dict]) -> None:
    """Checkpoint the finished epoch, then publish its models as RUN/tokenizer etc."""
    snapshot = out / "train_state" / "online"
    names = [name for name in MODELS if getattr(models, name) is not None]  # no policy: --act plan
    with atomic_dir(snapshot, replace=True) as tmp:
        for name in names:
            getattr(models, name).save_pretrained(tmp / name)
        policy_state = out / "train_state" / "work" / "policy" / "train_state"
        if models.policy is not None:
            shutil.copytree(policy_state, tmp / "policy_state")
        chunks = _chunk_fingerprints(out)
        state = {"epoch": epoch, "history": history, "chunks": chunks}
        (tmp / "state.json").write_text(json.dumps(state))
    for name in names:
        with atomic_dir(out / name, replace=True) as tmp:
            shutil.copytree(snapshot / name, tmp, dirs_exist_ok=True)


def _chunk_fingerprints(out: Path) -> dict[str, str]:
    """{chunk name: fingerprint of its steps} of the run's data."""
    return {p.name: fingerprint(load_trajectories(str(p))) for p in run_chunks(out).values()}


def _check_chunks(out: Path, recorded: dict) -> None:
    """Refuse to resume on data that changed since the checkpoint: the chunks of the finished
    epochs must hold what they held when the epochs trained on them."""
    now = _chunk_fingerprints(out)
    for name, before in recorded.items():
        after = now.get(name)
        if after != before:
            change = "is gone" if after is None else f"changed (fingerprint {before} -> {after})"
            raise TokWorldError(
                f"cannot resume {out}: {out / 'data' / name} {change} since the run trained on it"
            )


def _load_models(snapshot: Path, act: str) -> Models:
    """The models of a checkpointed epoch (no policy when a planner acts)."""
    policy = load_policy(snapshot) if act == "policy" else None
    return Models(load_tokenizer(snapshot), load_world_model(snapshot), policy)


def _metrics(out: Path, cfg: OnlineConfig, history: list[dict]) -> dict:
    """RUN/metrics.json: the per-epoch history and the learning curve (return vs env steps)."""
    curve = [
        {"env_steps": e["env_steps"], "return": e["eval"]["mean"]} for e in history if "eval" in e
    ]
    metrics = {
        "env_id": cfg.env_id,
        "epochs": len(history),
        "env_steps": history[-1]["env_steps"] if history else 0,
        "final_eval": next((e["eval"] for e in reversed(history) if "eval" in e), None),
        "learning_curve": curve,
        "history": history,
    }
    write_json_atomic(out / "metrics.json", metrics)
    return metrics
