"""Planning in the world model (`tokworld.planner`, `tokworld eval --plan`): the planner plays
the first action of the best imagined sequence, stops counting at an imagined end, starts its
imagination from the real steps it saw and the actions it played, keeps its last plan as a
candidate, and plans vector and frame runs through the command line."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from tokworld.cli import main
from tokworld.errors import TokWorldError
from tokworld.imagine import ImaginedStep
from tokworld.planner import Planner, PlannerConfig
from tokworld.returns import play_episodes
from tokworld.run import load_run

LOW, MIDDLE, HIGH = -1.9375, 0.0625, 1.9375  # Pendulum's 3 planned levels (bin centres)


def scripted_reward(a: torch.Tensor) -> torch.Tensor:
    """The lowest torque pays 3 (and ends the episode), the middle 1, the highest 0."""
    return torch.where(a < -1, 3.0, torch.where(a < 1, 1.0, 0.0))


class ScriptedEngine:
    """Stands in for the imagination engine: rewards and ends are a function of the action
    (`scripted_reward`; the lowest torque ends the episode); records every start's context and
    every step's actions."""

    def __init__(self):
        self.contexts, self.actions = [], []

    def start(self, context):
        self.contexts.append(context)
        self.actions.append([])
        return None

    def step(self, action):
        a = torch.as_tensor(action)[:, 0]
        self.actions[-1].append(a.clone())
        codes = torch.zeros(len(a), 3, dtype=torch.long)
        return ImaginedStep(codes, scripted_reward(a), a < -1)


def best_first_actions(actions: list[torch.Tensor], rows: int, stop_at_end: bool) -> list:
    """From one start's recorded (H of (rows x N,)) actions: each row's first action of the
    best sequence under the scripted rewards (discount 1; the first best on ties)."""
    sequences = torch.stack(actions, 1).view(rows, -1, len(actions))  # (R, N, H)
    rewards = scripted_reward(sequences)
    if stop_at_end:  # nothing counts after the first lowest torque
        ended_before = torch.cumsum((sequences < -1).float(), -1) - (sequences < -1).float()
        rewards = rewards * (ended_before == 0)
    best = rewards.sum(-1).argmax(1)
    return sequences[torch.arange(rows), best, 0].tolist()


@pytest.fixture
def planner(tiny_vector_run):
    world_model, tokenizer = load_run(tiny_vector_run)
    config = PlannerConfig(candidates=64, horizon=5, hold=1, discount=1.0, context=3)
    planner = Planner(world_model, tokenizer, config, seed=0)
    planner.engine = ScriptedEngine()
    return planner


def test_the_best_first_action_is_played_and_an_imagined_end_stops_the_return(planner):
    played = planner(np.zeros((2, 3), np.float32))[:, 0].tolist()
    first = planner.engine.actions[0]
    assert len(first) == 5 and first[0].shape == (2 * 64,)
    assert {round(float(a), 4) for a in torch.cat(first)} == {LOW, MIDDLE, HIGH}
    assert played == best_first_actions(first, 2, stop_at_end=True)
    # counting rewards past the end, the lowest torque would have been played: the candidates
    # tell the two rules apart
    assert best_first_actions(first, 2, stop_at_end=False) == [LOW, LOW] != played


def test_imagination_starts_from_the_real_steps_and_the_played_actions(planner):
    obs = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, -0.5], [-1.0, 0.0, 2.0], [0.0, -1.0, 0.0]])
    played, plans = [], []
    for o in obs:
        played.append(float(planner(o.astype(np.float32))[0]))
        plans.append(planner.plans[0].clone())
    engine = planner.engine
    last = engine.contexts[-1]  # 4 real steps seen, a context of 3: the last 3
    assert last["codes"].shape == (64, 3, 3)
    expected = planner.tokenizer.encode(torch.tensor(obs[1:], dtype=torch.float32))
    assert torch.equal(last["codes"][0], expected) and torch.equal(last["codes"][63], expected)
    assert last["action"][0, :2, 0].tolist() == played[1:3]
    # the rewards of the context are the ones imagined for the played actions
    assert last["reward"][0, :2].tolist() == scripted_reward(torch.tensor(played[1:3])).tolist()
    assert not last["terminated"].any()
    # candidate 0 is the previous best plan shifted by the step just played, its last repeated
    for t in range(1, 4):
        shifted = torch.cat([plans[t - 1][1:], plans[t - 1][-1:]])[:, 0]
        codec = planner.codec
        expected = codec.decode((shifted + codec.offsets[0]).unsqueeze(-1))[:, 0]
        assert torch.equal(torch.stack(engine.actions[t])[:, 0], expected)


def test_every_held_sequence_is_imagined_once_when_they_fit_in_the_budget(tiny_vector_run):
    world_model, tokenizer = load_run(tiny_vector_run)
    config = PlannerConfig(candidates=64, horizon=4, hold=2, discount=1.0)
    planner = Planner(world_model, tokenizer, config, seed=0)
    planner.engine = ScriptedEngine()
    assert planner.rollouts == 10  # 3 levels, 2 segments: 9 sequences and the previous plan
    played = planner(np.zeros((2, 3), np.float32))[:, 0].tolist()
    steps = torch.stack(planner.engine.actions[0], 1).view(2, 10, 4)
    assert torch.equal(steps[0], steps[1])
    held = {tuple(round(float(a), 4) for a in s[::2]) for s in steps[0, 1:]}
    assert len(held) == 9 and {a for s in held for a in s} == {LOW, MIDDLE, HIGH}
    assert torch.equal(steps[0, :, ::2], steps[0, :, 1::2])  # each action held 2 steps
    assert played == best_first_actions(planner.engine.actions[0], 2, stop_at_end=True)
    plan = planner.plans[0]
    planner(np.zeros((2, 3), np.float32))  # candidate 0 is now the shifted plan
    codec = planner.codec
    shifted = codec.decode(torch.cat([plan[1:], plan[-1:]]) + codec.offsets[0])[:, 0]
    assert torch.equal(torch.stack(planner.engine.actions[1], 1).view(2, 10, 4)[0, 0], shifted)
    # one sequence more than the budget: random shooting with every candidate
    assert Planner(world_model, tokenizer, replace(config, candidates=9)).rollouts == 9


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
        ({"temperature": float("nan")}, "temperature must be finite and >= 0, got nan"),
    ],
)
def test_a_bad_planner_setting_is_one_line(change, message):
    with pytest.raises(TokWorldError, match=message):
        PlannerConfig(**change)


def plan_argv(run, env: str, out, candidates: int, horizon: int) -> list[str]:
    """`tokworld eval --plan` of one episode with a small planner."""
    return ["eval", "--run", str(run), "--env", env, "--episodes", "1", "--json", str(out),
            "--plan", "--plan-candidates", str(candidates),
            "--plan-horizon", str(horizon)]  # fmt: skip


def test_eval_plan_plays_a_vector_run_without_a_policy(tiny_vector_run, tmp_path, capsys):
    out = tmp_path / "plan.json"
    argv = plan_argv(tiny_vector_run, "Pendulum-v1", out, candidates=4, horizon=2)
    assert main(argv) == 0
    summary = json.loads(out.read_text())
    assert summary["planner"] == {**vars(PlannerConfig()), "candidates": 4, "horizon": 2,
                                  "task": "Pendulum-v1", "rollouts": 4}  # fmt: skip
    assert summary["mean_length"] == 200.0 and len(summary["returns"]) == 1
    assert (tmp_path / "plan_episodes.png").exists()
    capsys.readouterr()
    assert main([*argv[:-4], "--overwrite", "--plan-levels", "1"]) == 2
    assert capsys.readouterr().err.strip() == (
        "tokworld eval: error: planner levels must be 0 (all bins) or >= 2, got 1"
    )
    no_plan = [a for a in argv if a != "--plan"] + ["--overwrite"]
    assert main(no_plan) == 2
    assert (
        capsys.readouterr().err.strip().endswith("the --plan-* flags set the planner: add --plan")
    )
    assert main([*argv, "--overwrite", "--greedy"]) == 2
    assert "a planner's imagination takes --plan-temperature" in capsys.readouterr().err


def test_eval_plan_plays_a_frame_run_with_discrete_actions(tiny_run, tmp_path):
    out = tmp_path / "plan.json"
    assert main(plan_argv(tiny_run, "MiniGrid-Empty-5x5-v0", out, candidates=2, horizon=1)) == 0
    summary = json.loads(out.read_text())
    assert summary["episodes"] == 1 and summary["greedy"] is None
    assert summary["planner"]["candidates"] == summary["planner"]["rollouts"] == 2
    assert summary["planner"]["task"] == "MiniGrid-Empty-5x5-v0"
    assert (tmp_path / "plan_best.gif").exists()


def test_eval_plan_in_another_action_space_is_one_line(tiny_vector_run, tmp_path, capsys):
    argv = ["eval", "--run", str(tiny_vector_run), "--env", "CartPole-v1", "--episodes", "1",
            "--json", str(tmp_path / "plan.json"), "--plan"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tokworld eval: error: action space of CartPole-v1 (Discrete(2))")
    assert "\n" not in err and not (tmp_path / "plan.json").exists()


def test_retired_rows_are_not_planned_for_until_reset(planner):
    planner(np.zeros((3, 3), np.float32))
    planner.retire([0, 2])
    planner(np.zeros((3, 3), np.float32))
    assert planner.engine.contexts[-1]["codes"].shape[0] == 64  # row 1's candidates alone
    planner.reset([2])
    planner(np.zeros((3, 3), np.float32))
    # rows 1 and 2, planned apart (contexts of 3 and 1 steps); row 0 still retired
    assert [c["codes"].shape[:2] for c in planner.engine.contexts[-2:]] == [(64, 1), (64, 3)]


def test_play_episodes_retires_the_slots_left_without_an_episode():
    class RandomAgent:
        def __init__(self):
            self.retired = []

        def __call__(self, observations):
            return np.zeros(len(observations), dtype=np.int64)

        def retire(self, rows):
            self.retired.extend(rows)

    agent = RandomAgent()
    result = play_episodes("CartPole-v1", agent, 3, observation="vector", progress=False)
    assert len(result.returns) == 3 and sorted(agent.retired) == [0, 1, 2]


class EndRecorder:
    """Wraps an imagination engine: records whether each imagined step ended, per row."""

    def __init__(self, engine):
        self.engine, self.ends = engine, []

    def start(self, context):
        return self.engine.start(context)

    def step(self, action):
        out = self.engine.step(action)
        self.ends.append(out.terminated)
        return out


def test_calibrated_planning_imagines_with_the_models_fitted_shift(tiny_vector_run):
    world_model, tokenizer = load_run(tiny_vector_run)
    config = PlannerConfig(candidates=4, horizon=3, calibrated=True)
    world_model.config.event_shift = None
    with pytest.raises(TokWorldError, match="no fitted event calibration"):
        Planner(world_model, tokenizer, config)
    world_model.config.event_shift = [0.0, -1e4]  # an end's odds raised beyond any other id's
    ended = {}
    for calibrated in (False, True):
        planner = Planner(world_model, tokenizer, replace(config, calibrated=calibrated))
        planner.engine = recorder = EndRecorder(planner.engine)
        planner(np.zeros((2, 3), np.float32))
        ended[calibrated] = torch.cat(recorder.ends)
    assert ended[True].all() and not ended[False].all()
