"""`tokworld bench learn`: every arm runs end to end on a micro budget, its JSON is its plot."""

from __future__ import annotations

import json

import pytest

from tokworld.cli import main
from tokworld.eval.bench_learn import checkpoints
from tokworld.training.online_config import OnlineConfig

MICRO = ["--env", "MiniGrid-Empty-5x5-v0", "--env-steps", "60", "--initial-steps", "40"]
MICRO += ["--steps-per-epoch", "20", "--preset", "tiny", "--tokenizer-steps", "2"]
MICRO += ["--world-model-steps", "2", "--policy-steps", "2", "--batch-size", "4"]
MICRO += ["--horizon", "3", "--context", "1", "--eval-episodes", "2", "--seeds", "2"]


def test_checkpoints_are_the_online_loops_epoch_ends():
    cfg = OnlineConfig("MiniGrid-Empty-5x5-v0", env_steps=7000, initial_steps=2000,
                       steps_per_epoch=2000)  # fmt: skip
    assert checkpoints(cfg) == [2000, 4000, 6000, 7000]


@pytest.mark.parametrize(
    "only, error",
    [
        ("pretrained", "--only pretrained: pretrained is not an arm of this benchmark (scratch)"),
        ("bogus:0", "--only bogus:0: bogus is not an arm of this benchmark (scratch)"),
        ("scratch:2", "--only scratch:2: the seed must be one of 0 to 1"),
        ("scratch:x", "--only scratch:x: the seed must be one of 0 to 1"),
    ],
)
def test_only_an_arm_the_benchmark_has_and_one_of_its_seeds(tmp_path, capsys, only, error):
    out = tmp_path / "bench"
    argv = ["bench", "learn", *MICRO, "--only", only, "--out", str(out)]
    assert main(argv) == 2
    assert error in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_every_arm_runs_and_results_json_holds_the_plotted_curves(tiny_run, tmp_path, capsys):
    pytest.importorskip("stable_baselines3")
    out = tmp_path / "bench"
    argv = ["bench", "learn", *MICRO, "--from", str(tiny_run), "--ppo", "--out", str(out)]
    # One seed of an arm alone (as when seeds run side by side) runs and gathers nothing.
    assert main([*argv, "--only", "pretrained:1"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["pretrained"]
    assert sorted(p.name for p in (out / "pretrained").iterdir()) == ["seed_1"]
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
