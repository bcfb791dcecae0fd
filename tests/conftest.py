"""Shared fixtures: small real trajectory datasets, collected once per test session."""

from __future__ import annotations

import pytest
import torch
from hypothesis import settings

from tokworld.data.collect import collect

PONG_STEPS = 300
MINIGRID_STEPS = 300

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
