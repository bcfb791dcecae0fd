"""Shared fixtures, built once per test session: small real trajectory datasets and one tiny
pretrained run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import settings

from tokworld.cli import main
from tokworld.data.collect import collect

PONG_STEPS = 300
MINIGRID_STEPS = 300
# `tokworld pretrain` options of the shared tiny run: the tokenizer trains 8 steps, the world
# model 12 (checkpoints every 4), and 1 of the dataset's 4 episodes is held out.
TINY_RUN_OPTIONS = dict(preset="tiny", tokenizer_steps=8, tokenizer_batch_size=16,
                        world_model_steps=12, batch_size=4, checkpoint_every=4, eval_every=0,
                        eval_fraction=0.25)  # fmt: skip

# Property tests: no per-example deadline (2 shared CPU cores jitter), 50 examples per test.
settings.register_profile("tokworld", max_examples=50, deadline=None)
settings.load_profile("tokworld")


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads; on 2 shared cores a second thread mostly waits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def pong_dataset(tmp_path_factory) -> str:
    """Path (str) of a saved dataset: 300 random-policy steps of ALE/Pong-v5, seed 0."""
    out = tmp_path_factory.mktemp("datasets") / "pong"
    collect("ALE/Pong-v5", PONG_STEPS, out, seed=0, progress=False)
    return str(out)


@pytest.fixture(scope="session")
def minigrid_dataset(tmp_path_factory) -> str:
    """Path (str) of a saved dataset: 300 random-policy steps of MiniGrid-Empty-5x5-v0, seed 0."""
    out = tmp_path_factory.mktemp("datasets") / "minigrid"
    collect("MiniGrid-Empty-5x5-v0", MINIGRID_STEPS, out, seed=0, progress=False)
    return str(out)


@pytest.fixture(scope="session")
def tiny_run_options() -> dict:
    """The `tokworld pretrain` options (flag name with `_` -> value) `tiny_run` was made with."""
    return dict(TINY_RUN_OPTIONS)


@pytest.fixture(scope="session")
def pretrain_argv():
    """A builder of `tokworld pretrain` command lines: (dataset, out, **changes) -> argv with
    `tiny_run_options`, changed by `changes`."""

    def build(dataset: str, out, **changes) -> list[str]:
        argv = ["pretrain", "--dataset", dataset, "--out", str(out)]
        for key, value in {**TINY_RUN_OPTIONS, **changes}.items():
            argv += [f"--{key.replace('_', '-')}", str(value)]
        return argv

    return build


@pytest.fixture(scope="session")
def tiny_run(minigrid_dataset, pretrain_argv, tmp_path_factory) -> Path:
    """A run directory made by `tokworld pretrain` on `minigrid_dataset` with `tiny_run_options`:
    tokenizer/, codes/, world_model/, metrics.json, train_state/. Shared by every test module
    that reads a run: never write into it (copy it first)."""
    out = tmp_path_factory.mktemp("tiny_run") / "run"
    assert main(pretrain_argv(minigrid_dataset, out)) == 0
    return out


PENDULUM_STEPS = 400  # two 200-step episodes of Pendulum-v1


@pytest.fixture(scope="session")
def pendulum_dataset(tmp_path_factory) -> str:
    """Path (str) of a saved dataset of vector observations: 400 random-policy steps of
    Pendulum-v1 (observations (3,), two episodes), seed 0."""
    out = tmp_path_factory.mktemp("datasets") / "pendulum"
    collect("Pendulum-v1", PENDULUM_STEPS, out, seed=0, progress=False)
    return str(out)


@pytest.fixture(scope="session")
def tiny_vector_run(pendulum_dataset, tmp_path_factory) -> Path:
    """A run directory pretrained on `pendulum_dataset` (vector codec + tiny world model, 30
    steps; one of the two episodes held out). Shared: never write into it."""
    from tokworld.training.pretrain import PretrainConfig, pretrain

    out = tmp_path_factory.mktemp("tiny_vector_run") / "run"
    cfg = PretrainConfig(dataset=(pendulum_dataset,), preset="tiny", world_model_steps=30,
                         batch_size=8, checkpoint_every=30, eval_every=30)  # fmt: skip
    pretrain(cfg, out, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_vector_online_run(tmp_path_factory) -> Path:
    """An online run on Pendulum-v1 (vector codec, world model and policy; 400 real steps, tiny
    stages). Shared: never write into it."""
    from tokworld.training.imagination import ImaginationConfig
    from tokworld.training.online import train_online
    from tokworld.training.online_config import OnlineConfig

    out = tmp_path_factory.mktemp("tiny_vector_online_run") / "run"
    imagination = ImaginationConfig(steps=3, batch_size=4, horizon=5, context_steps=2)
    cfg = OnlineConfig(env_id="Pendulum-v1", env_steps=400, initial_steps=200,
                       steps_per_epoch=200, preset="tiny", world_model_steps=10,
                       world_model_batch_size=8, imagination=imagination,
                       eval_episodes=2)  # fmt: skip
    train_online(cfg, out, progress=False)
    return out
