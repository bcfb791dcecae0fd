"""Nothing a user feeds in silently corrupts a run: bad actions, rewards, frames and losses are
refused in one line (exit 2) before anything that looks finished is written, JSON outputs stay
valid JSON, and names shown in the report stay text."""

from __future__ import annotations

import json
import math
import re
import shutil
from html.parser import HTMLParser

import datasets
import gymnasium as gym
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tokworld.cli import main
from tokworld.data.format import TrajectoryMeta, features_for, trajectory_row, write_trajectories
from tokworld.data.validate import validate_trajectories
from tokworld.errors import TokWorldError
from tokworld.model import TokWorldModel
from tokworld.policy import build_policy
from tokworld.run import load_run
from tokworld.tokenizer.codecs import BOX_SLACK, ActionCodec, RewardCodec, space_to_dict
from tokworld.training.imagination import ImaginationConfig, ImaginationLoss, train_policy

FRAME = (64, 64, 3)
NAN, INF = float("nan"), float("inf")


def _dataset(path, space: gym.Space, actions: list, rewards: list | None = None) -> str:
    """One episode of blank 64x64 frames with these actions and rewards (default 0)."""
    n = len(actions)
    rewards = [0.0] * n if rewards is None else rewards
    frame = np.zeros(FRAME, np.uint8)

    def rows():
        for t in range(n):
            last = t == n - 1
            yield trajectory_row(0, t, frame, actions[t], rewards[t], last, False, last)

    write_trajectories(rows, path, TrajectoryMeta("test", space_to_dict(space), 64), FRAME)
    return str(path)


def _refused(argv: list[str], capsys) -> str:
    """Run the CLI, expect exit 2 and nothing on stdout; return the one line on stderr."""
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"tokworld {argv[0]}: error: "), err
    return lines[0]


DISCRETE, MULTI, BOX = (
    gym.spaces.Discrete(3),
    gym.spaces.MultiDiscrete([3, 3]),
    gym.spaces.Box(-1, 1, (2,)),
)
BAD_STEPS = [  # space, actions, rewards, what the message names
    (DISCRETE, [0, 1, -1, 2], None, ["'action'", "episode 0, frame 2", "-1", "0..2"]),
    (DISCRETE, [0, 3], None, ["'action'", "frame 1", "is 3"]),
    (MULTI, [[0, 0], [2, 2], [3, 0]], None, ["'action'", "frame 2", "[3, 0]"]),
    (BOX, [[0, 0], [NAN, 0]], None, ["'action'", "frame 1", "nan", "finite"]),
    (BOX, [[1, -1], [0, 1.5]], None, ["'action'", "frame 1", "1.5"]),
    (DISCRETE, [0, 1, 2], [0.0, NAN, 1.0], ["'reward'", "frame 1", "nan", "finite"]),
    (DISCRETE, [0, 1], [-INF, 0.0], ["'reward'", "frame 0", "-inf"]),
]


@pytest.mark.parametrize("space, actions, rewards, named", BAD_STEPS)
def test_data_info_refuses_bad_steps_in_one_line_and_prints_no_json(
    space, actions, rewards, named, tmp_path, capsys
):
    err = _refused(["data", "info", _dataset(tmp_path / "d", space, actions, rewards)], capsys)
    assert all(part in err for part in named), err


@pytest.mark.parametrize("action, reward", [(-1, 0.0), (7, 0.0), (1, NAN)])
def test_pretrain_refuses_bad_steps_before_writing_anything(
    action, reward, pretrain_argv, tmp_path, capsys
):
    """Before: -1 became another kind's token (NaN loss, exit 0), 7 an IndexError after the
    tokenizer stage, NaN a reward token. Now: exit 2 and no run directory."""
    actions, rewards = [0, 1, action, 2, 3], [0.0, 0.0, reward, 0.0, 1.0]
    path = _dataset(tmp_path / "d", gym.spaces.Discrete(7), actions, rewards)
    err = _refused(pretrain_argv(path, tmp_path / "run"), capsys)
    assert "episode 0, frame 2" in err
    assert not (tmp_path / "run").exists()


def test_tokenize_refuses_float_frames(tiny_run, tmp_path, capsys):
    """Before: float frames were cast to uint8 silently. Now: exit 2, no output."""
    space = gym.spaces.Discrete(3)
    features = features_for(space, FRAME)
    features["observation"] = datasets.Array3D(shape=FRAME, dtype="float32")
    columns = {"episode_index": [0, 0], "frame_index": [0, 1], "action": [0, 1],
               "observation": np.full((2, *FRAME), 0.5, np.float32), "reward": [0.0, 1.0],
               "terminated": [False, True], "truncated": [False, False]}  # fmt: skip
    meta = TrajectoryMeta("test", space_to_dict(space), 64).to_json()
    info = datasets.DatasetInfo(description=meta, features=features)
    datasets.Dataset.from_dict(columns, features, info).save_to_disk(str(tmp_path / "d"))
    argv = ["tokenize", "--tokenizer", str(tiny_run / "tokenizer"), "--dataset",
            str(tmp_path / "d"), "--out", str(tmp_path / "out")]  # fmt: skip
    assert "dtype float32" in _refused(argv, capsys)
    assert not (tmp_path / "out").exists()


def _parquet(path, act, rew) -> str:
    """One row per step: 8x8 RGB frames, action, reward, and the end of one episode."""
    n = len(act)
    done = [t == n - 1 for t in range(n)]
    obs = np.zeros((n, 8, 8, 3), np.uint8)
    columns = {"obs": obs, "act": act, "rew": rew, "done": done}
    datasets.Dataset.from_dict(columns).to_parquet(str(path))
    return str(path)


@pytest.mark.parametrize(
    "act, rew, space, named",
    [
        ([0, 1, 5], [0.0] * 3, '{"type": "Discrete", "n": 3}', ["'act'", "row 2", "is 5"]),
        ([0, -1, 1], [0.0] * 3, None, ["'act'", "negative"]),
        ([0, 1], [0.0] * 2, '{"type": "Discrete", "n": -1}', ["n must be a positive integer"]),
        ([0, 1], [0.0] * 2, '{"type": "Box", "low": [1], "high": [0]}', ["low <= high"]),
        ([0, 1], [INF, 0.0], None, ["'rew'", "row 0", "inf"]),
    ],
)
def test_import_hf_checks_actions_and_rewards(act, rew, space, named, tmp_path, capsys):
    """Before: --action-space was trusted (an action beyond it was stored) and n=-1 gave a
    traceback; an infinite reward was stored. Now: exit 2, no dataset."""
    argv = ["import", "hf:" + _parquet(tmp_path / "src.parquet", act, rew), "--out",
            str(tmp_path / "out"), "--frame-size", "8", "--map",
            "observation=obs,action=act,reward=rew,terminated=done"]  # fmt: skip
    argv += [] if space is None else ["--action-space", space]
    err = _refused(argv, capsys)
    assert all(part in err for part in named), err
    assert not (tmp_path / "out").exists()


def test_import_hf_checks_each_episode_row(tmp_path, capsys):
    """One row per episode: a NaN Box action (once stored, then binned as bin 0) is refused."""
    columns = {"obs": [np.zeros((3, 8, 8, 3), np.uint8)] * 2, "rew": [[0.0] * 3] * 2,
               "act": [[[0.0, 0.0]] * 3, [[0.0, 0.0], [NAN, 0.5], [0.0, 0.0]]]}  # fmt: skip
    datasets.Dataset.from_dict(columns).to_parquet(str(tmp_path / "src.parquet"))
    argv = ["import", f"hf:{tmp_path / 'src.parquet'}", "--out", str(tmp_path / "out"),
            "--frame-size", "8", "--map", "observation=obs,action=act,reward=rew",
            "--action-space", '{"type": "Box", "low": [-1, -1], "high": [1, 1]}']  # fmt: skip
    err = _refused(argv, capsys)
    assert "'act'" in err and "row 1, step 1" in err and "[nan, 0.5]" in err
    assert not (tmp_path / "out").exists()


def _strict_json(text: str):
    """JSON as the standard defines it: a bare NaN or Infinity is an error."""

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_a_nan_loss_stops_pretraining_and_keeps_the_last_good_checkpoint(
    tiny_run, minigrid_dataset, pretrain_argv, tmp_path, capfd, monkeypatch
):
    """Before: the NaN loss was logged, checkpointed over the last good state, and written
    into metrics.json as a bare NaN; exit 0. Now: exit 2 naming stage and step, checkpoint of
    step 4 kept, no world model, every JSON written is valid."""
    compute_loss, calls = TokWorldModel.compute_loss, {"train": 0}

    def nan_at_step_6(self, batch):
        loss, metrics = compute_loss(self, batch)
        if self.training:
            calls["train"] += 1
            loss = loss * NAN if calls["train"] == 6 else loss
        return loss, metrics

    monkeypatch.setattr(TokWorldModel, "compute_loss", nan_at_step_6)
    out = tmp_path / "run"
    assert main(pretrain_argv(minigrid_dataset, out, tokenizer=tiny_run / "tokenizer")) == 2
    err = capfd.readouterr().err
    errors = [line for line in re.split(r"[\r\n]", err) if "error" in line]
    assert "Traceback" not in err and len(errors) == 1, err
    assert errors[0].startswith("tokworld pretrain: error: world_model stopped at step 6")
    assert "loss is nan" in errors[0]
    state_dir = out / "train_state" / "world_model" / "train_state"
    assert _strict_json((state_dir / "state.json").read_text())["step"] == 4
    assert not (out / "world_model").exists()
    for path in out.rglob("*.json"):
        _strict_json(path.read_text())
    metrics = out / "metrics.json"
    assert not metrics.exists() or "world_model" not in _strict_json(metrics.read_text())


def test_a_nan_loss_stops_policy_training_before_a_checkpoint(tiny_run, tmp_path, monkeypatch):
    world_model, tokenizer = load_run(tiny_run)
    codes = datasets.load_from_disk(str(tiny_run / "codes"))
    policy = build_policy("tiny", world_model.vocab.action, tokenizer, "tokens")
    forward = ImaginationLoss.forward

    def nan_loss(self, context):
        loss, metrics = forward(self, context)
        return loss * NAN, metrics

    monkeypatch.setattr(ImaginationLoss, "forward", nan_loss)
    cfg = ImaginationConfig(steps=3, batch_size=2, horizon=2, context_steps=2)
    with pytest.raises(TokWorldError, match="policy stopped at step 1: the loss is nan"):
        train_policy(policy, world_model, tokenizer, codes, cfg, tmp_path, progress=False)
    assert not (tmp_path / "train_state").exists()


class _Images(HTMLParser):
    """The (alt, onerror) attributes of every <img>, as a browser decodes them."""

    def __init__(self):
        super().__init__()
        self.images: list[tuple[str, str]] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            attrs = dict(attrs)
            self.images.append((attrs["alt"], attrs["onerror"]))


def test_report_shows_folder_names_as_text(tiny_run, tmp_path):
    """Before: a quote in a stage folder's name became script in an image's onerror handler,
    and `$...$` crashed matplotlib's math-text parser. Now: both are shown as typed."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    names = ["x'); alert('pwned", r"$\frac{$"]
    for i, name in enumerate(names):
        history = [{"step": s, "loss": 1.0 / s, "eval/loss": 1.0 / s + i} for s in (1, 2)]
        (run / "train_state" / name).mkdir(parents=True)
        (run / "train_state" / name / "history.json").write_text(json.dumps(history))
    argv = ["report", "--run", str(run), "--out", str(tmp_path / "r.html"), "--windows", "2",
            "--horizon", "2", "--context", "2", "--videos", "1"]  # fmt: skip
    assert main(argv) == 0
    parser = _Images()
    parser.feed((tmp_path / "r.html").read_text())
    alts = [alt for alt, _ in parser.images]
    assert all(f"train_state/{name}" in alts for name in names)
    for alt, handler in parser.images:
        # The handler is one call whose only argument is a string literal holding the name.
        call = re.fullmatch(r"console\.error\((.*)\)", handler)
        assert call and json.loads(call.group(1)) == f"report image failed to load: {alt}"


# ---- properties: nothing accepted encodes to a wrong token -----------------------------------


def _whole_in(x, low, high) -> bool:
    return math.isfinite(x) and x == math.floor(x) and low <= x <= high


def _holds(space: gym.Space, action) -> bool:
    """An independent statement of which actions a space holds."""
    values = np.asarray(action, dtype=object).reshape(-1).tolist()
    if isinstance(space, gym.spaces.Discrete):
        return _whole_in(values[0], int(space.start), int(space.start + space.n - 1))
    if isinstance(space, gym.spaces.MultiDiscrete):
        return all(_whole_in(x, 0, int(n) - 1) for x, n in zip(values, space.nvec, strict=True))
    bounds = zip(values, space.low.tolist(), space.high.tolist(), strict=True)
    return all(  # a bound counts up to float32 rounding
        math.isfinite(x) and lo - BOX_SLACK * (1 + abs(lo)) <= x <= hi + BOX_SLACK * (1 + abs(hi))
        for x, lo, hi in bounds
    )


def _box(corners: list[tuple[float, float]]) -> gym.spaces.Box:
    low = np.array([c[0] for c in corners], np.float32)
    return gym.spaces.Box(low, low + np.array([c[1] for c in corners], np.float32))


SPACES = st.one_of(
    st.builds(gym.spaces.Discrete, st.integers(1, 6), start=st.integers(-3, 3)),
    st.builds(gym.spaces.MultiDiscrete, st.lists(st.integers(1, 4), min_size=1, max_size=3)),
    st.builds(
        _box,
        st.lists(
            st.tuples(st.floats(-5, 5, width=32), st.floats(0.25, 5, width=32)),
            min_size=1,
            max_size=3,
        ),
    ),
)


def _actions(draw, space: gym.Space, n: int, stored: bool) -> np.ndarray:
    """n actions near and far outside `space`: as the dataset stores them (int64 or float32) or,
    without `stored`, as float64 (non-integers for discrete spaces too)."""
    if isinstance(space, gym.spaces.Box):
        low, high = math.floor(space.low.min()) - 1, math.ceil(space.high.max()) + 1
        values = st.one_of(st.floats(low, high, width=32), st.floats(width=32))
        dtype = np.float32
    else:
        high = int(space.n - 1 + space.start) if isinstance(space, gym.spaces.Discrete) else 4
        near = st.integers(-4, high + 2)
        values = (
            st.one_of(near, st.integers(-(2**63), 2**63 - 1))
            if stored
            else st.one_of(near, st.floats(-4, high + 2), st.floats())
        )
        dtype = np.int64 if stored else np.float64
    shape = (n,) if isinstance(space, gym.spaces.Discrete) else (n, int(np.prod(space.shape)))
    flat = draw(st.lists(values, min_size=math.prod(shape), max_size=math.prod(shape)))
    return np.array(flat, dtype=dtype).reshape(shape)


def _assert_encodes_to_the_right_tokens(space: gym.Space, actions: np.ndarray) -> None:
    codec = ActionCodec.from_space(space)
    codes = codec.encode(actions) - torch.tensor(codec.offsets)
    assert (codes >= 0).all() and (codes < torch.tensor(codec.sizes)).all()
    decoded = codec.decode(codes + torch.tensor(codec.offsets))
    if codec.kind == "Box":
        width = (torch.tensor(codec.high) - torch.tensor(codec.low)) / codec.bins
        assert ((decoded - torch.from_numpy(actions)).abs() <= width / 2 + 1e-5).all()
    else:
        assert torch.equal(decoded, torch.from_numpy(actions).long())


@given(SPACES, st.data())
def test_validate_accepts_exactly_the_actions_and_rewards_that_encode_right(space, data):
    n = data.draw(st.integers(1, 4))
    actions = _actions(data.draw, space, n, stored=True)
    rewards = np.array(data.draw(st.lists(st.floats(width=32), min_size=n, max_size=n)))
    features = features_for(space, (2, 2, 3))
    columns = {"episode_index": [0] * n, "frame_index": list(range(n)), "action": actions,
               "observation": np.zeros((n, 2, 2, 3), np.uint8), "reward": rewards,
               "terminated": [t == n - 1 for t in range(n)], "truncated": [False] * n}  # fmt: skip
    meta = TrajectoryMeta("test", space_to_dict(space), 2).to_json()
    info = datasets.DatasetInfo(description=meta, features=features)
    ds = datasets.Dataset.from_dict(columns, features, info)
    good = all(_holds(space, a) for a in actions) and np.isfinite(rewards).all()
    if not good:
        with pytest.raises(TokWorldError, match="column '(action|reward)' at episode 0, frame"):
            validate_trajectories(ds)
        return
    validate_trajectories(ds)
    _assert_encodes_to_the_right_tokens(space, ds.with_format("numpy")[:]["action"])


@given(SPACES, st.data())
def test_codecs_refuse_what_they_cannot_encode(space, data):
    actions = _actions(data.draw, space, data.draw(st.integers(1, 4)), stored=False)
    if all(_holds(space, a) for a in actions):
        _assert_encodes_to_the_right_tokens(space, actions)
    else:
        with pytest.raises(TokWorldError, match="cannot encode action"):
            ActionCodec.from_space(space).encode(actions)
    rewards = np.array(data.draw(st.lists(st.floats(), min_size=1, max_size=4)))
    for codec in (RewardCodec("sign"), RewardCodec("symlog", 33, 10.0)):
        if np.isfinite(rewards).all():
            codes = codec.encode(rewards)
            assert (codes >= 0).all() and (codes < codec.num_tokens).all()
        else:
            with pytest.raises(TokWorldError, match="rewards must be finite"):
                codec.encode(rewards)
