"""The folders commands write: atomic directories and files, checkpoint swaps that survive a
kill between their renames, run folders that refuse a second writer."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from tokworld.cli import main
from tokworld.errors import TokWorldError
from tokworld.folders import (
    atomic_dir,
    check_output_dir,
    first_change,
    recover,
    replace_dir,
    report_json,
    write_json_atomic,
)
from tokworld.run_lock import start_run
from tokworld.training.loop import TrainConfig, train


class Killed(Exception):
    pass


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (hidden ones too) and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_atomic_dir_appears_only_on_success_and_leaves_no_partial(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(Killed), atomic_dir(final) as tmp:
        (tmp / "half.bin").write_bytes(b"x")
        raise Killed
    assert list(tmp_path.iterdir()) == []  # neither `out` nor `.out.partial-*`
    with atomic_dir(final) as tmp:
        (tmp / "whole.bin").write_bytes(b"y")
        (tmp.parent / "scratch").write_bytes(b"z")  # beside, not inside: removed after
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert _files(final) == {"whole.bin": b"y"}
    with pytest.raises(TokWorldError, match="already exists and is not empty"):
        with atomic_dir(final) as tmp:
            (tmp / "other.bin").write_bytes(b"w")
    assert _files(final) == {"whole.bin": b"y"} and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_replace_dir_and_recover(tmp_path):
    final, old = tmp_path / "state", tmp_path / "state.old"
    for content in (b"1", b"2"):
        with atomic_dir(final, replace=True) as tmp:
            (tmp / "step").write_bytes(content)
    assert _files(final) == {"step": b"2"} and not old.exists()
    final.rename(old)  # a kill between the two renames: only `.old` is left
    recover(final)
    assert _files(final) == {"step": b"2"} and not old.exists()
    old.mkdir()  # a kill after them, before `.old` was removed
    recover(final)
    assert _files(final) == {"step": b"2"} and not old.exists()
    tmp = tmp_path / "new"
    tmp.mkdir()
    (tmp / "step").write_bytes(b"3")
    final.rename(old)
    replace_dir(tmp, final)  # a swap after a kill puts the new state in place
    assert _files(final) == {"step": b"3"} and not old.exists() and not tmp.exists()


def test_write_json_atomic_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "metrics.json"
    write_json_atomic(path, {"a": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


class Regressor(torch.nn.Module):
    """A tiny model with dropout, so resume must also restore RNG state."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(4, 16), torch.nn.Dropout(0.1), torch.nn.Linear(16, 1)
        )

    def compute_loss(self, batch):
        loss = torch.nn.functional.mse_loss(self.net(batch["x"]).squeeze(-1), batch["y"])
        return loss, {}


class Pairs(TensorDataset):
    def __getitem__(self, i):
        x, y = super().__getitem__(i)
        return {"x": x, "y": y}


def test_kill_between_the_renames_of_a_checkpoint_swap_then_resume(tmp_path, monkeypatch):
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    data = Pairs(x, x.sum(-1))
    cfg = TrainConfig(steps=30, batch_size=8, checkpoint_every=10, warmup_steps=2, log_every=5)
    full = Regressor()
    train(full, data, cfg, tmp_path / "full", name="t", progress=False)

    state = tmp_path / "split" / "train_state"
    rename = Path.rename

    def killed_at_step_20(self, target):
        second = Path(target) == state and state.with_name("train_state.old").exists()
        if second and json.loads((self / "state.json").read_text())["step"] == 20:
            raise Killed  # the step-10 state is `train_state.old`, step 20 not yet in place
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", killed_at_step_20)
    with pytest.raises(Killed):
        train(Regressor(), data, cfg, tmp_path / "split", name="t", progress=False)
    monkeypatch.setattr(Path, "rename", rename)
    assert not state.exists() and state.with_name("train_state.old").exists()

    resumed = Regressor()
    train(resumed, data, cfg, tmp_path / "split", name="t", resume=True, progress=False)
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert json.loads((state / "state.json").read_text())["step"] == 30
    assert sorted(p.name for p in state.parent.iterdir()) == ["history.json", "train_state"]
    history = json.loads((state.parent / "history.json").read_text())
    assert [h["step"] for h in history] == [5, 10, 15, 20, 25, 30]  # steps 11-30 trained again


def test_start_run_records_settings_and_checks_them_on_resume(tmp_path):
    run = tmp_path / "run"
    settings = {"config": {"seed": 0, "steps": 5}, "source": None}
    with start_run(run, settings, False, "run.json"):
        assert (run / ".lock").exists()
        (run / ".data.partial-abc").mkdir()  # what a killed writer leaves
    assert sorted(p.name for p in run.iterdir()) == [".data.partial-abc", "run.json"]
    with pytest.raises(TokWorldError, match="not empty: pass --resume to continue it"):
        with start_run(run, settings, False, "run.json"):
            pass
    changed = {"config": {"seed": 1, "steps": 5}, "source": None}
    with pytest.raises(TokWorldError, match=r"other settings \(config.seed=0, not 1\)"):
        with start_run(run, changed, True, "run.json"):
            pass
    with start_run(run, settings, True, "run.json"):
        assert not (run / ".data.partial-abc").exists()  # leftovers go on resume
    assert json.loads((run / "run.json").read_text()) == settings
    with pytest.raises(TokWorldError, match="exists and is not a directory"):
        check_output_dir(run / "run.json")


OTHER_WRITER = """
import sys
from tokworld.errors import TokWorldError
from tokworld.run_lock import start_run
try:
    with start_run(sys.argv[1], {"seed": 0}, True, "run.json"):
        print("opened")
except TokWorldError as e:
    print(e)
    sys.exit(2)
"""


def test_a_second_process_cannot_write_a_locked_run(tmp_path):
    run = tmp_path / "run"
    other = [sys.executable, "-c", textwrap.dedent(OTHER_WRITER), str(run)]
    with start_run(run, {"seed": 0}, False, "run.json"):
        proc = subprocess.run(other, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert proc.stdout.strip() == (
            f"run directory {run} is in use by process {os.getpid()}: wait for it to end"
        )
        assert (run / "run.json").exists()
    assert not (run / ".lock").exists()
    proc = subprocess.run(other, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "opened", proc.stdout + proc.stderr


def test_train_tokenizer_refuses_a_non_empty_folder_without_resume(pong_dataset, tmp_path, capsys):
    out = tmp_path / "tokenizer"
    (out / "train_state").mkdir(parents=True)
    (out / "config.json").write_text('{"mine": true}')
    (out / "train_state" / "state.json").write_text('{"step": 7}')
    before = _files(out)
    argv = ["train-tokenizer", "--dataset", pong_dataset, "--out", str(out), "--preset", "tiny",
            "--steps", "1", "--batch-size", "8"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "not empty: pass --resume to continue it" in err, err
    assert _files(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer"]


def test_report_json_prints_and_writes_the_same_valid_json(tmp_path, capsys):
    report = {"steps_per_s": 3.5, "ratio": float("nan")}
    assert report_json(report, tmp_path / "new" / "report.json") is report
    written = json.loads((tmp_path / "new" / "report.json").read_text())
    assert written == json.loads(capsys.readouterr().out) == {"steps_per_s": 3.5, "ratio": None}
    report_json(report)  # no path: printed only
    assert json.loads(capsys.readouterr().out)["ratio"] is None


def test_speed_only_settings_do_not_block_a_resume():
    # compile and cuda_graphs change how fast a run goes, not what it computes: toggling one,
    # or a record from before one existed, resumes; any other change is named.
    old = {"config": {"lr": 1e-3, "imagination": {"compile": False}}}
    assert first_change(old, {"config": {"lr": 1e-3, "imagination": {"cuda_graphs": True}}}) is None
    new = {"config": {"lr": 1e-4, "imagination": {"compile": True}}}
    assert first_change(old, new) == ("config.lr", 1e-3, 1e-4)


def test_a_switch_added_since_a_run_was_recorded_resumes_while_off():
    # A finetune run recorded before `bf16` and `calibrated` existed resumes with both off;
    # turned on, each is a change, named; a removed or changed setting still is one too.
    old = {"config": {"imagination": {"temperature": 1.0}}}
    off = {"config": {"imagination": {"temperature": 1.0, "bf16": False, "calibrated": False}}}
    assert first_change(old, off) is None
    on = {"config": {"imagination": {"temperature": 1.0, "bf16": False, "calibrated": True}}}
    assert first_change(old, on) == ("config.imagination.calibrated", None, True)
    assert first_change(off, old) == ("config.imagination.bf16", False, None)
