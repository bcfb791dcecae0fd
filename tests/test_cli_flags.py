"""Command-line flags come from the config dataclasses: same defaults, every field reachable."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from tokworld.cli import build_parser
from tokworld.cli.flags import config_from_args, flag_name
from tokworld.eval.fidelity import FidelityConfig
from tokworld.eval.imagined import ImagineConfig
from tokworld.training.imagination import ImaginationConfig
from tokworld.training.online_config import OnlineConfig
from tokworld.training.pretrain import PretrainConfig

REQUIRED = {
    "pretrain": ["--dataset", "data", "--out", "run"],
    "finetune": ["--env", "MiniGrid-Empty-5x5-v0", "--env-steps", "3000", "--out", "run"],
    "imagine": ["--run", "run", "--dataset", "data", "--out", "out"],
    "eval-model": ["--run", "run"],
}
CONFIGS = [
    ("pretrain", PretrainConfig, {"dataset": "data"}),
    ("finetune", OnlineConfig, {"env_id": "MiniGrid-Empty-5x5-v0", "env_steps": 3000}),
    ("imagine", ImagineConfig, {}),
    ("eval-model", FidelityConfig, {}),
]


@pytest.mark.parametrize(("command", "cls", "given"), CONFIGS, ids=[c[0] for c in CONFIGS])
def test_defaults_on_the_command_line_are_the_config_defaults(command, cls, given):
    args = build_parser().parse_args([command, *REQUIRED[command]])
    assert config_from_args(cls, args) == cls(**given)


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _configs(cls) -> list:
    """`cls` and the config dataclasses nested in it."""
    nested = [h for h in _hints(cls).values() if dataclasses.is_dataclass(h)]
    return [cls, *(c for n in nested for c in _configs(n))]


@pytest.mark.parametrize(("command", "cls", "given"), CONFIGS, ids=[c[0] for c in CONFIGS])
def test_every_field_has_its_flag(command, cls, given):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    flags = {s for a in sub._actions for s in a.option_strings}
    for c in _configs(cls):
        for f in dataclasses.fields(c):
            if f.metadata.get("cli", True) and not dataclasses.is_dataclass(_hints(c)[f.name]):
                assert flag_name(f) in flags, f"{command} has no flag for {c.__name__}.{f.name}"


def test_finetune_flags_reach_the_nested_imagination_config():
    argv = ["finetune", *REQUIRED["finetune"], "--policy-steps", "7", "--context", "2"]
    argv += ["--imagine-temperature", "0.5", "--temperature", "0.9", "--compile"]
    cfg = config_from_args(OnlineConfig, build_parser().parse_args(argv))
    assert (cfg.imagination.steps, cfg.imagination.context_steps) == (7, 2)
    assert (cfg.imagination.temperature, cfg.temperature) == (0.5, 0.9)
    assert cfg.imagination.compile and cfg.imagination.seed == ImaginationConfig().seed


def test_a_command_may_change_a_default_for_itself_only():
    parser = build_parser()
    report = parser.parse_args(["report", "--run", "run", "--out", "r.html"])
    model = parser.parse_args(["eval-model", "--run", "run"])
    assert config_from_args(FidelityConfig, report).windows == 32
    assert config_from_args(FidelityConfig, model).windows == FidelityConfig().windows == 64


def test_a_required_field_is_a_required_flag(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["finetune", "--env", "MiniGrid-Empty-5x5-v0", "--out", "run"])
    assert "--env-steps" in capsys.readouterr().err
