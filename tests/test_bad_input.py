"""Nothing a user feeds in gives a traceback or leaves output that looks complete: bad options,
damaged run files, data changed under a resumed run, stray files in a run, a resume with other
settings and failed writes are one line on stderr naming the problem (exit 2), and what was
there before is kept."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest

from tokworld.cli import main
from tokworld.errors import TokWorldError
from tokworld.folders import PARTIAL
from tokworld.policy import build_policy
from tokworld.run import load_run
from tokworld.training import checkpoint
from tokworld.training.imagination import ImaginationConfig, train_policy

ENV = "MiniGrid-Empty-5x5-v0"
NO_SPACE = os.strerror(errno.ENOSPC)


def _refused(argv: list[str], capsys, *named: str, working: bool = False) -> str:
    """Run the CLI: exit 2, no traceback, one error line holding every `named` part; return it.

    Without `working`, stdout is empty and stderr is that line alone; a command that failed
    while `working` may have printed its stage on stdout and progress bars on stderr before.
    """
    assert main(argv) == 2
    out, err = capsys.readouterr()
    prefix = f"tokworld {argv[0]}: error: "
    assert "Traceback" not in err and err.count(prefix) == 1, err
    if not working:
        assert out == "" and len(err.strip().splitlines()) == 1, err
    line = prefix + err.split(prefix)[1].splitlines()[0]
    assert all(part in line for part in named), line
    return line


def _no_partials(folder: Path) -> bool:
    return not any(PARTIAL in p.name for p in folder.rglob("*"))


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (logs aside) with its bytes."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and "logs" not in p.parts
    }


def _with_rewards_changed(path: Path) -> None:
    """Rewrite the saved dataset at `path` with other rewards (same frames, same layout)."""
    changed = datasets.load_from_disk(str(path)).map(lambda row: {"reward": row["reward"] + 1})
    changed.save_to_disk(str(path.with_name("changed")))
    shutil.rmtree(path)
    path.with_name("changed").rename(path)


# --- options and sources -------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--frame-size", "0"], "frame size must be >= 1, got 0"),
        (["--env", "no_such_module:Env-v0"], "No module named 'no_such_module'"),
    ],
)
def test_collect_refuses_a_bad_frame_size_or_env_module(flags, named, tmp_path, capsys):
    """Before: a ValueError from the resize wrapper, a ModuleNotFoundError from gymnasium."""
    argv = ["collect", "--env", ENV, "--steps", "5", "--out", str(tmp_path / "out"), *flags]
    _refused(argv, capsys, named)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("done, named", [(["False", "True"], "'False'"), ([0.5, 1.0], "0.5")])
def test_import_hf_refuses_end_flags_that_are_not_booleans(done, named, tmp_path, capsys):
    """Before: bool("False") is True, so every step ended an episode, silently."""
    columns = {"obs": np.zeros((2, 8, 8, 3), np.uint8), "act": [0, 1], "rew": [0.0, 1.0],
               "done": done}  # fmt: skip
    datasets.Dataset.from_dict(columns).to_parquet(str(tmp_path / "src.parquet"))
    argv = ["import", f"hf:{tmp_path / 'src.parquet'}", "--out", str(tmp_path / "out"),
            "--map", "observation=obs,action=act,reward=rew,terminated=done"]  # fmt: skip
    _refused(argv, capsys, "column 'done'", named, "row 0", "expected true/false")
    assert not (tmp_path / "out").exists()


def _plain_parquet(folder: Path) -> None:
    folder.mkdir()
    datasets.Dataset.from_dict({"a": [1, 2], "b": ["x", "y"]}).to_parquet(str(folder / "p.parquet"))


@pytest.mark.parametrize(
    "damage, named",
    [
        (lambda d: (d / "state.json").write_text("{}"), "'_data_files'"),
        (lambda d: (d / "dataset_info.json").write_text("[1]"), "cannot load dataset"),
        (lambda d: [p.unlink() for p in d.glob("*.arrow")], "No such file"),
    ],
    ids=["state without files", "info not an object", "arrow files gone"],
)
def test_data_info_refuses_a_damaged_dataset(damage, named, minigrid_dataset, tmp_path, capsys):
    """Before: KeyError and AttributeError tracebacks from `datasets.load_from_disk`."""
    ds = _copy(Path(minigrid_dataset), tmp_path / "ds")
    damage(ds)
    _refused(["data", "info", str(ds)], capsys, str(ds), named)


def test_data_info_refuses_parquet_without_tokworld_columns(tmp_path, capsys):
    _plain_parquet(tmp_path / "plain")
    _refused(["data", "info", str(tmp_path / "plain")], capsys, "missing column 'episode_index'")


# --- a resume knows what it resumes ------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer_argv(minigrid_dataset, tmp_path_factory) -> list[str]:
    """The command line of a finished 2-step `train-tokenizer` run (checkpoint every step)."""
    out = tmp_path_factory.mktemp("tokenizer") / "tok"
    argv = ["train-tokenizer", "--dataset", minigrid_dataset, "--out", str(out), "--preset",
            "tiny", "--steps", "2", "--batch-size", "4", "--checkpoint-every", "1"]  # fmt: skip
    assert main(argv) == 0
    return argv


@pytest.mark.parametrize(
    "flag, value, named",
    [
        ("--lr", "0.01", "train.lr: 0.001 -> 0.01"),
        ("--batch-size", "8", "train.batch_size: 4 -> 8"),
        ("--seed", "1", "train.seed: 0 -> 1"),
        ("--steps", "3", "train.steps: 2 -> 3"),
    ],
)
def test_train_tokenizer_resume_refuses_other_training_settings(
    flag, value, named, tokenizer_argv, capsys
):
    """Before: only the model config was compared; another lr, batch size, seed or step count
    silently continued the checkpoint under other settings."""
    out = Path(tokenizer_argv[tokenizer_argv.index("--out") + 1])
    capsys.readouterr()
    before = _files(out)
    _refused([*tokenizer_argv, "--resume", flag, value], capsys, "cannot resume", named)
    assert _files(out) == before


def test_pretrain_resume_refuses_a_dataset_whose_content_changed(tmp_path, capsys):
    """Before: the same path with other steps in it was resumed and trained on."""
    data, run = tmp_path / "data", tmp_path / "run"
    assert main(["collect", "--env", ENV, "--steps", "24", "--out", str(data)]) == 0
    tiny = (
        "--preset tiny --tokenizer-steps 1 --tokenizer-batch-size 4 --world-model-steps 1 "
        "--batch-size 2 --eval-fraction 0"
    )
    argv = ["pretrain", "--dataset", str(data), "--out", str(run), *tiny.split()]
    assert main(argv) == 0
    capsys.readouterr()
    before = _files(run)
    _with_rewards_changed(data)
    _refused([*argv, "--resume"], capsys, "other settings", f"fingerprints.{data}=")
    assert _files(run) == before


def test_policy_resume_refuses_other_settings_or_fewer_steps(tiny_run, tmp_path):
    """Before: the policy checkpoint was continued whatever the settings."""
    world_model, tokenizer = load_run(tiny_run)
    codes = datasets.load_from_disk(str(tiny_run / "codes"))
    policy = build_policy("tiny", world_model.vocab.action, tokenizer, "tokens")
    cfg = ImaginationConfig(steps=2, batch_size=2, horizon=2, context_steps=2)

    def train(**changes):
        changed = dataclasses.replace(cfg, **changes)
        train_policy(policy, world_model, tokenizer, codes, changed, tmp_path,
                     resume=bool(changes), progress=False)  # fmt: skip

    train()
    with pytest.raises(TokWorldError, match=r"train\.lr: 0\.0001 -> 0\.001"):
        train(lr=1e-3)
    with pytest.raises(TokWorldError, match="it has 2 updates, more than steps=1"):
        train(steps=1)
    train(steps=3, seed=5)  # a continuation: more updates, reseeded (the online loop's epochs)


# --- damaged run files -----------------------------------------------------------------------

STATE = "train_state/world_model/train_state/state.json"
RUN_FILES = [  # file, its damaged text, command, what the line names
    ("pretrain.json", "{oops", "resume", "run settings"),
    ("pretrain.json", "[]", "resume", "it is an array, expected an object"),
    ("metrics.json", "nope", "resume", "cannot read run metrics"),
    (STATE, "not json", "resume", "train state"),
    (STATE, "{}", "resume", "it has no 'step' entry"),
    (STATE, "step: text", "resume", "its 'step' entry is a string, expected an integer"),
    (STATE, "rng: [{}]", "resume", "the train state is damaged"),
    ("held_out.json", "{", "eval-model", "held_out.json"),
    ("train_state/world_model/history.json", "{", "report", "training history"),
    ("train_state/world_model/history.json", '[{"step": "x"}]', "report", "entry 0"),
    ("metrics.json", '{"learning_curve": 3}', "report", "training history"),
    ("metrics.json", "[1]", "report", "run file"),
]


def _damage(path: Path, text: str) -> None:
    """Write `text` at `path`; "KEY: ..." changes one entry of the JSON there instead."""
    if text in ("step: text", "rng: [{}]"):
        state = json.loads(path.read_text())
        key = text.split(":")[0]
        state[key] = "3" if key == "step" else [{}]
        text = json.dumps(state)
    path.write_text(text)


@pytest.mark.parametrize("name, text, command, named", RUN_FILES)
def test_a_damaged_run_file_is_one_line(
    name, text, command, named, tiny_run, minigrid_dataset, pretrain_argv, tmp_path, capsys
):
    """Before: JSONDecodeError, KeyError and TypeError tracebacks on resume and on reading."""
    run = _copy(tiny_run, tmp_path / "run")
    _damage(run / name, text)
    before = _files(run)
    small = ["--windows", "2", "--horizon", "2"]
    report = ["report", "--run", str(run), "--out", str(tmp_path / "r.html"), "--videos", "0"]
    argv = {
        "resume": [*pretrain_argv(minigrid_dataset, run), "--resume"],
        "eval-model": ["eval-model", "--run", str(run), *small],
        "report": [*report, *small],
    }[command]
    capsys.readouterr()
    _refused(argv, capsys, named)
    assert _files(run) == before and not (tmp_path / "r.html").exists()


# --- an online run's data -------------------------------------------------------------------


@pytest.fixture(scope="module")
def online_argv(tmp_path_factory) -> list[str]:
    """The command line of a finished one-epoch online run from scratch (16 real steps)."""
    out = tmp_path_factory.mktemp("online") / "run"
    tiny = (
        "--env-steps 16 --initial-steps 16 --preset tiny --tokenizer-steps 1 "
        "--tokenizer-batch-size 4 --world-model-steps 1 --world-model-batch-size 2 "
        "--policy-steps 1 --batch-size 2 --horizon 2 --context 2 --eval-episodes 1"
    )
    argv = ["finetune", "--env", ENV, "--out", str(out), *tiny.split()]
    assert main(argv) == 0
    return argv


ONLINE_DAMAGE = {  # what is done to the run, what the line names
    "stray file": (lambda r: (r / "data" / "notes.txt").write_text("hi"), "is not a chunk"),
    "stray chunk": (lambda r: (r / "data" / "chunk_old").mkdir(), "is not a chunk"),
    "chunk changed": (lambda r: _with_rewards_changed(r / "data" / "chunk_000"), "changed"),
    "chunk gone": (lambda r: shutil.rmtree(r / "data" / "chunk_000"), "is gone"),
    "online.json": (lambda r: (r / "online.json").write_text("{"), "not valid JSON"),
    "checkpoint": (
        lambda r: (r / "train_state/online/state.json").write_text('{"epoch": 0, "history": {}}'),
        "its 'history' entry is an object, expected an array",
    ),
}


@pytest.mark.parametrize("damage, named", ONLINE_DAMAGE.values(), ids=ONLINE_DAMAGE.keys())
def test_online_resume_refuses_stray_changed_or_damaged_data(
    damage, named, online_argv, tmp_path, capsys
):
    """Before: a stray `chunk_*` entry was a ValueError or NotADirectoryError traceback, and a
    changed chunk was trained on again without a word."""
    out = online_argv.index("--out") + 1
    run = _copy(Path(online_argv[out]), tmp_path / "run")
    damage(run)
    before = _files(run)
    argv = [*online_argv[:out], str(run), *online_argv[out + 1 :], "--resume"]
    capsys.readouterr()
    _refused(argv, capsys, named)
    assert _files(run) == before


# --- failed writes ----------------------------------------------------------------------------


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, NO_SPACE)


def test_disk_full_while_collecting_leaves_no_dataset(tmp_path, capsys, monkeypatch):
    """Before: an OSError traceback from the Arrow writer."""
    monkeypatch.setattr(datasets.arrow_writer.ArrowWriter, "write", _no_space)
    out = tmp_path / "out"
    argv = ["collect", "--env", ENV, "--steps", "5", "--out", str(out)]
    _refused(argv, capsys, f"cannot write {out}: {NO_SPACE}", working=True)
    assert not out.exists() and _no_partials(tmp_path)


def test_disk_full_while_checkpointing_leaves_no_tokenizer(
    minigrid_dataset, tmp_path, capsys, monkeypatch
):
    """safetensors reports a full disk as its own error ending "(os error 28)"; before: a
    traceback."""

    def fail(*args, **kwargs):
        raise RuntimeError("Error while serializing: I/O error: No space left (os error 28)")

    monkeypatch.setattr(checkpoint, "save_model", fail)
    out = tmp_path / "tok"
    argv = ["train-tokenizer", "--dataset", minigrid_dataset, "--out", str(out), "--preset",
            "tiny", "--steps", "1", "--batch-size", "4"]  # fmt: skip
    _refused(argv, capsys, f"cannot write {out / 'train_state'}: {NO_SPACE}", working=True)
    assert not (out / "train_state").exists() and not (out / "model.safetensors").exists()
    assert _no_partials(tmp_path)


def test_disk_full_while_writing_json_keeps_no_partial_file(
    tiny_run, minigrid_dataset, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(Path, "write_text", _no_space)
    out = tmp_path / "m.json"
    argv = ["eval-tokenizer", "--tokenizer", str(tiny_run / "tokenizer"), "--dataset",
            minigrid_dataset, "--max-frames", "4", "--json", str(out)]  # fmt: skip
    _refused(argv, capsys, f"cannot write {out}: {NO_SPACE}")
    assert list(tmp_path.iterdir()) == []
