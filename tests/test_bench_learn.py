"""`tokworld bench learn`: every arm runs end to end on a micro budget, its JSON is its plot."""

from __future__ import annotations

import json

import pytest

from tokworld.cli import main
from tokworld.eval.bench_learn import checkpoints
from tokworld.training.online import OnlineConfig

MICRO = ["--env", "MiniGrid-Empty-5x5-v0", "--env-steps", "60", "--initial-steps", "40"]
MICRO += ["--steps-per-epoch", "20", "--preset", "tiny", "--tokenizer-steps", "2"]
MICRO += ["--world-model-steps", "2", "--policy-steps", "2", "--batch-size", "4"]
MICRO += ["--horizon", "3", "--context", "1", "--eval-episodes", "2", "--seeds", "2"]


def test_checkpoints_are_the_online_loops_epoch_ends():
    cfg = OnlineConfig("MiniGrid-Empty-5x5-v0", env_steps=7000, initial_steps=2000,
                       steps_per_epoch=2000)  # fmt: skip
    assert checkpoints(cfg) == [2000, 4000, 6000, 7000]


def test_only_an_arm_the_benchmark_has(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "learn", *MICRO, "--only", "pretrained", "--out", str(out)]) == 2
    assert "--only pretrained: not an arm of this benchmark (scratch)" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_every_arm_runs_and_results_json_holds_the_plotted_curves(tiny_run, tmp_path, capsys):
    pytest.importorskip("stable_baselines3")
    out = tmp_path / "bench"
    argv = ["bench", "learn", *MICRO, "--from", str(tiny_run), "--ppo", "--out", str(out)]
    # An arm alone (as when arms run side by side) runs its seeds and gathers nothing.
    assert main([*argv, "--only", "pretrained"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["pretrained"]
    capsys.readouterr()
    assert main(argv) == 0
    text = capsys.readouterr().out  # the stages' own JSON lines, then the result
    printed = json.loads(text[text.rindex("\n{\n") + 1 :])
    results = json.loads((out / "results.json").read_text())
    assert printed["arms"] == results["arms"] and (out / "curves.png").stat().st_size > 0
    assert set(results["arms"]) == {"scratch", "pretrained", "ppo"}
    for arm in results["arms"].values():
        assert len(arm["seeds"]) == 2
        assert len(arm["mean"]) == len(arm["std"]) == len(results["checkpoints"]) == 2
        for seed in arm["seeds"]:
            # every arm is evaluated at the same real-step checkpoints (PPO may overshoot by
            # less than one step of its 8 envs)
            gaps = [a - b for a, b in zip(seed["env_steps"], results["checkpoints"], strict=True)]
            assert all(0 <= g < 8 for g in gaps)
            assert seed["wall_time_s"] > 0
        means = [sum(s["returns"][i] for s in arm["seeds"]) / 2 for i in range(2)]
        assert arm["mean"] == pytest.approx(means)
    assert results["pretraining"]["run"] == str(tiny_run)
    # A second call reads every finished arm back instead of running it again.
    assert main(argv) == 0
    assert json.loads((out / "results.json").read_text())["arms"] == results["arms"]
