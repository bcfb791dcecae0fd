"""Planning in the world model (`tokworld.planner`, `tokworld eval --plan`): the planner plays
the first action of the best imagined sequence, stops counting at an imagined end, starts its
imagination from the real steps it saw and the actions it played, keeps its last plan as a
candidate, and plans vector and frame runs through the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tokworld.cli import main
from tokworld.errors import TokWorldError
from tokworld.imagine import ImaginedStep
from tokworld.planner import Planner, PlannerConfig
from tokworld.run import load_run

LOW, MIDDLE, HIGH = -1.9375, 0.0625, 1.9375  # Pendulum's 3 planned levels (bin centres)


class ScriptedEngine:
    """Stands in for the imagination engine: rewards and ends are a function of the action
    (the lowest torque pays 3 and ends the episode, the middle pays 1, the highest 0); records
    every start's context and every step's actions."""

    def __init__(self):
        self.contexts, self.actions = [], []

    def start(self, context):
        self.contexts.append(context)
        self.actions.append([])
        return None

    def step(self, action):
        a = torch.as_tensor(action)[:, 0]
        self.actions[-1].append(a.clone())
        reward = torch.where(a < -1, 3.0, torch.where(a < 1, 1.0, 0.0))
        codes = torch.zeros(len(a), 3, dtype=torch.long)
        return ImaginedStep(codes, reward, a < -1)


@pytest.fixture
def planner(tiny_vector_run):
    world_model, tokenizer = load_run(tiny_vector_run)
    config = PlannerConfig(candidates=64, horizon=5, hold=1, discount=1.0, context=3)
    planner = Planner(world_model, tokenizer, config, seed=0)
    planner.engine = ScriptedEngine()
    return planner


def test_the_best_first_action_is_played_and_an_imagined_end_stops_the_return(planner):
    # Counting rewards past the end, the lowest torque five times (15) would win; stopping
    # there, a sequence starting with it scores 3 and one starting with the middle up to 7.
    observations = np.zeros((2, 3), np.float32)
    assert planner(observations).tolist() == [[MIDDLE], [MIDDLE]]
    first = planner.engine.actions[0]
    assert len(first) == 5 and first[0].shape == (2 * 64,)
    assert {round(float(a), 4) for a in torch.cat(first)} == {LOW, MIDDLE, HIGH}


def test_imagination_starts_from_the_real_steps_and_the_played_actions(planner):
    obs = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, -0.5], [-1.0, 0.0, 2.0], [0.0, -1.0, 0.0]])
    played = [float(planner(o.astype(np.float32))[0]) for o in obs]
    engine = planner.engine
    last = engine.contexts[-1]  # 4 real steps seen, a context of 3: the last 3
    assert last["codes"].shape == (64, 3, 3)
    expected = planner.tokenizer.encode(torch.tensor(obs[1:], dtype=torch.float32))
    assert torch.equal(last["codes"][0], expected) and torch.equal(last["codes"][63], expected)
    assert last["action"][0, :2, 0].tolist() == played[1:3]
    # the rewards of the context are the ones imagined for the played actions
    assert last["reward"][0, :2].tolist() == [1.0, 1.0]
    assert not last["terminated"].any()
    # candidate 0 is the previous best plan shifted by the step just played
    second = torch.stack(engine.actions[1])[:, 0]
    best_first = torch.stack(engine.actions[0])  # (H, N): which candidate was best is unknown
    assert any(torch.equal(second[:-1], best_first[1:, n]) for n in range(64))


def test_a_reset_row_plans_from_its_own_shorter_context(planner):
    planner(np.zeros((2, 3), np.float32))
    planner(np.zeros((2, 3), np.float32))
    planner.reset([1])
    planner(np.zeros((2, 3), np.float32))
    lengths = sorted(c["codes"].shape[1] for c in planner.engine.contexts[-2:])
    assert lengths == [1, 3] and planner.engine.contexts[-1]["codes"].shape[0] == 64
    with pytest.raises(TokWorldError, match="holds 2 rows, got 3"):
        planner(np.zeros((3, 3), np.float32))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"levels": 1}, "levels must be 0 .all bins. or >= 2, got 1"),
        ({"candidates": 0}, "candidates must be >= 1"),
        ({"discount": 0.0}, "discount must be in"),
        ({"temperature": float("nan")}, "temperature must be >= 0"),
    ],
)
def test_a_bad_planner_setting_is_one_line(change, message):
    with pytest.raises(TokWorldError, match=message):
        PlannerConfig(**change)


def test_eval_plan_plays_a_vector_run_without_a_policy(tiny_vector_run, tmp_path, capsys):
    out = tmp_path / "plan.json"
    argv = ["eval", "--run", str(tiny_vector_run), "--env", "Pendulum-v1", "--episodes", "2",
            "--json", str(out), "--plan", "--plan-candidates", "4",
            "--plan-horizon", "3"]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads(out.read_text())
    assert summary["planner"] == {**vars(PlannerConfig()), "candidates": 4, "horizon": 3}
    assert summary["mean_length"] == 200.0 and len(summary["returns"]) == 2
    assert (tmp_path / "plan_episodes.png").exists()
    capsys.readouterr()
    assert main([*argv[:-4], "--overwrite", "--plan-levels", "1"]) == 2
    assert capsys.readouterr().err.strip() == (
        "tokworld eval: error: planner levels must be 0 (all bins) or >= 2, got 1"
    )


def test_eval_plan_plays_a_frame_run_with_discrete_actions(tiny_run, tmp_path):
    out = tmp_path / "plan.json"
    argv = ["eval", "--run", str(tiny_run), "--env", "MiniGrid-Empty-5x5-v0", "--episodes", "1",
            "--json", str(out), "--plan", "--plan-candidates", "3",
            "--plan-horizon", "2"]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads(out.read_text())
    assert summary["episodes"] == 1 and summary["mean_length"] >= 1
    assert (tmp_path / "plan_best.gif").exists()


def test_eval_plan_in_another_action_space_is_one_line(tiny_vector_run, tmp_path, capsys):
    argv = ["eval", "--run", str(tiny_vector_run), "--env", "CartPole-v1", "--episodes", "1",
            "--json", str(tmp_path / "plan.json"), "--plan"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tokworld eval: error: action space of CartPole-v1 (Discrete(2))")
    assert "\n" not in err and not (tmp_path / "plan.json").exists()
