"""`tokworld collect`: the summary it prints, one clear line on bad input, no half datasets."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import datasets
import numpy as np
import pytest

from tokworld.cli import main
from tokworld.data.collect import collect
from tokworld.data.validate import validate_trajectories


def run_cli(capfd, *args: str) -> tuple[int, str, str]:
    """Exit code, stdout and stderr (file descriptors: native libraries' prints included)."""
    code = main(["collect", *args])
    out, err = capfd.readouterr()
    return code, out, err


def test_collect_prints_a_summary_of_the_dataset_it_wrote(capfd, tmp_path):
    out = tmp_path / "grid"
    code, stdout, _ = run_cli(
        capfd, "--env", "MiniGrid-Empty-5x5-v0", "--steps", "120", "--out", str(out), "--seed", "3"
    )
    assert code == 0
    summary = json.loads(stdout)
    ds = datasets.load_from_disk(str(out))
    validate_trajectories(ds)
    c = ds.with_format("numpy", dtype=None)[:]
    ends = np.flatnonzero(c["terminated"] | c["truncated"])
    returns = np.add.reduceat(c["reward"], np.r_[0, ends[:-1] + 1])
    # Every episode is complete but the last, which collection cut short unless it terminated.
    completed = returns if c["terminated"][-1] else returns[:-1]
    assert summary["out"] == str(out)
    assert summary["steps"] == len(ds) == 120
    assert summary["episodes"] == len(ends) == c["episode_index"][-1] + 1
    assert summary["completed_episodes"] == len(completed)
    expected = completed.mean() if len(completed) else returns.mean()
    assert summary["mean_return"] == pytest.approx(float(expected), rel=1e-5)


def test_collect_with_a_small_frame_size(tmp_path):
    summary = collect(
        "CartPole-v1", 30, tmp_path / "cp", frame_size=32, progress=False, observation="frames"
    )
    ds = datasets.load_from_disk(summary.out)
    validate_trajectories(ds)
    assert ds.features["observation"].shape == (32, 32, 3)


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (("--env", "NoSuchEnv-v0", "--steps", "10"), "unknown or unusable env id 'NoSuchEnv-v0'"),
        (("--env", "ALE/NoSuchGame-v5", "--steps", "10"), "'ALE/NoSuchGame-v5'"),
        (("--env", "MiniGrid-Empty-5x5-v0", "--steps", "0"), "--steps must be a positive"),
        (("--env", "MiniGrid-Empty-5x5-v0", "--steps", "-5"), "--steps must be a positive"),
        (("--env", "ALE/Pong-v5", "--steps", "5", "--policy", "greedy"), "unknown policy 'greedy'"),
    ],
)
def test_bad_arguments_give_one_error_line(capfd, tmp_path, args, problem):
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(capfd, *args, "--out", str(out))
    assert code == 2
    assert stdout == ""
    assert stderr.count("\n") == 1 and stderr.startswith("tokworld collect: error: ")
    assert problem in stderr
    assert not out.exists()


def test_unwritable_out_gives_one_error_line(capfd, tmp_path):
    regular_file = tmp_path / "file"
    regular_file.write_text("not a directory")
    nonempty = tmp_path / "nonempty"
    nonempty.mkdir()
    (nonempty / "keep").write_text("x")
    cases = {
        regular_file / "sub" / "out": f"{regular_file} is a file, not a directory",
        regular_file: "exists and is not a directory",
        nonempty: "already exists and is not empty",
    }
    for out, problem in cases.items():
        code, _, stderr = run_cli(capfd, "--env", "ALE/Pong-v5", "--steps", "5", "--out", str(out))
        assert code == 2
        assert stderr.count("\n") == 1 and problem in stderr
    assert regular_file.read_text() == "not a directory"
    assert [p.name for p in nonempty.iterdir()] == ["keep"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "nonempty"]


@pytest.mark.slow  # a fresh interpreter imports everything, ~5 s
def test_the_installed_command_prints_one_line_and_no_traceback(tmp_path):
    cmd = [sys.executable, "-m", "tokworld", "collect", "--env", "NoSuchEnv-v0", "--steps", "5"]
    proc = subprocess.run([*cmd, "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert "NoSuchEnv-v0" in proc.stderr and "Traceback" not in proc.stderr


def failing_policy(after: int, error: type[BaseException]):
    steps = iter(range(after))

    def policy(_frame):
        if next(steps, None) is None:
            raise error("the policy broke")
        return 0

    return policy


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_an_interrupted_collection_leaves_no_dataset(tmp_path, error):
    out = tmp_path / "data" / "pong"
    with pytest.raises(error):
        collect("ALE/Pong-v5", 2000, out, policy=failing_policy(50, error), progress=False)
    assert not out.exists()
    assert list((tmp_path / "data").iterdir()) == []  # no `.pong.partial-*` left behind


def test_ctrl_c_on_the_command_line_exits_130_and_leaves_no_dataset(capfd, tmp_path, monkeypatch):
    module = importlib.import_module("tokworld.data.collect")
    broken = failing_policy(30, KeyboardInterrupt)
    monkeypatch.setattr(module, "random_policy", lambda space, seed: broken)
    args = ("--env", "MiniGrid-Empty-5x5-v0", "--steps", "500", "--out", str(tmp_path / "grid"))
    code, _, stderr = run_cli(capfd, *args)
    assert code == 130 and stderr.splitlines()[-1] == "tokworld collect: interrupted"
    assert list(tmp_path.iterdir()) == []


def test_a_trained_policy_collects(capfd, tmp_path, tiny_vector_online_run, monkeypatch):
    from tokworld.policy import Agent

    acted = []
    act = Agent.__call__
    monkeypatch.setattr(Agent, "__call__", lambda self, obs: acted.append(obs) or act(self, obs))
    out = tmp_path / "ds"
    code, stdout, _ = run_cli(capfd, "--env", "Pendulum-v1", "--steps", "30", "--out", str(out),
                              "--policy", str(tiny_vector_online_run))  # fmt: skip
    assert code == 0 and json.loads(stdout)["steps"] == 30
    ds = datasets.load_from_disk(str(out))
    validate_trajectories(ds)
    assert len(ds) == 30 and len(acted) == 30
    assert np.asarray(ds.with_format("numpy")["observation"]).shape == (30, 3)  # its vectors


@pytest.mark.parametrize(
    ("env", "obs", "problem"),
    [
        ("Pendulum-v1", "frames", "reads vector, not --obs frames"),
        ("CartPole-v1", "auto", "acts in"),
    ],
)
def test_a_policy_that_cannot_act_in_the_env_is_refused(capfd, tmp_path, tiny_vector_online_run,
                                                        env, obs, problem):  # fmt: skip
    out, run = tmp_path / "ds", str(tiny_vector_online_run)
    code, stdout, err = run_cli(capfd, "--env", env, "--steps", "5", "--out", str(out),
                                "--obs", obs, "--policy", run)  # fmt: skip
    assert code == 2 and problem in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
