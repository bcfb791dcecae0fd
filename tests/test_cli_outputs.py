"""Output files: refused when they exist unless --overwrite, claimed before any work; JSON valid."""

from __future__ import annotations

import json

import pytest

from tokworld.cli import main
from tokworld.cli.outputs import write_json
from tokworld.folders import json_text

# Each command with the output flag under test; its other inputs do not exist, so a command that
# got past the output check would fail on them instead (with another message).
COMMANDS = {
    "eval-tokenizer --json": [
        "eval-tokenizer",
        "--tokenizer",
        "nope",
        "--dataset",
        "nope",
        "--json",
    ],
    "eval-tokenizer --grid": [
        "eval-tokenizer",
        "--tokenizer",
        "nope",
        "--dataset",
        "nope",
        "--grid",
    ],
    "eval-model --json": ["eval-model", "--run", "nope", "--json"],
    "eval-model --plot": ["eval-model", "--run", "nope", "--plot"],
    "eval --json": ["eval", "--run", "nope", "--env", "MiniGrid-Empty-5x5-v0", "--json"],
    "report --out": ["report", "--run", "nope", "--out"],
    "bench --json": ["bench", "--json"],
}


@pytest.mark.parametrize("argv", COMMANDS.values(), ids=COMMANDS.keys())
def test_an_existing_output_is_refused_in_one_line_and_kept(argv, tmp_path, capsys):
    existing = tmp_path / "out.file"
    existing.write_text("precious")
    assert main([*argv, str(existing)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already exists: pass --overwrite" in err
    assert existing.read_text() == "precious"


def test_with_overwrite_the_command_goes_on_to_its_inputs(tmp_path, capsys):
    existing = tmp_path / "out.json"
    existing.write_text("precious")
    argv = ["eval-model", "--run", str(tmp_path / "nope"), "--json", str(existing), "--overwrite"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "already exists" not in err and "nope" in err  # it failed on the missing run instead
    assert existing.read_text() == "precious"


def test_an_output_that_is_a_directory_is_refused(tmp_path, capsys):
    argv = ["report", "--run", str(tmp_path), "--out", str(tmp_path), "--overwrite"]
    assert main(argv) == 2
    assert "is a directory" in capsys.readouterr().err


def test_json_is_always_valid_non_finite_numbers_become_null(tmp_path):
    value = {"loss": float("nan"), "curve": [1.0, float("inf"), -float("inf")], "n": 3}
    assert json.loads(json_text(value)) == {"loss": None, "curve": [1.0, None, None], "n": 3}
    path = write_json(value, tmp_path / "sub" / "m.json") and tmp_path / "sub" / "m.json"
    assert json.loads(path.read_text())["loss"] is None
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.json"]  # no temporary left
