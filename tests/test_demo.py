"""`tokworld demo` end to end on a micro budget: every stage runs and the summary adds up."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from tokworld.eval.demo import DemoConfig, run_demo

MICRO = DemoConfig(
    offline_steps=120,
    codebook_size=64,
    tokenizer_steps=2,
    world_model_steps=2,
    online_steps=40,
    steps_per_epoch=20,
    online_world_model_steps=1,
    policy_steps=1,
    policy_batch_size=4,
    horizon=3,
    online_eval_episodes=1,
    eval_episodes=2,
    imagine_episodes=2,
)


@pytest.mark.slow  # every stage of the demo
@pytest.mark.parametrize(("frame_decoding", "calibrated"), [(None, False), ("parallel", True)])
def test_demo_runs_every_stage_and_reports_the_real_steps_it_used(
    tmp_path, capsys, frame_decoding, calibrated
):
    micro = dataclasses.replace(MICRO, frame_decoding=frame_decoding, calibrated=calibrated)
    summary = run_demo(micro, tmp_path / "demo")
    for run in ("pretrained", "finetuned"):
        config = json.loads((tmp_path / "demo" / run / "world_model" / "config.json").read_text())
        assert config["frame_decoding"] == (frame_decoding or "token")
    online = json.loads((tmp_path / "demo" / "finetuned" / "online.json").read_text())
    assert online["config"]["imagination"]["calibrated"] == calibrated
    assert summary == json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert (
        summary["real_env_steps"] == 120 + 40 == summary["offline_steps"] + summary["online_steps"]
    )
    assert summary["trained_return"]["episodes"] == summary["random_return"]["episodes"] == 2
    assert [p["env_steps"] for p in summary["learning_curve"]] == [0, 140, 160]
    gifs = summary["gifs"]
    for path in [gifs["best_real"], gifs["worst_real"], *gifs["imagined"]]:
        assert Path(path).stat().st_size > 0
    assert len(gifs["imagined"]) == 2 and Path(summary["learning_curve_png"]).exists()
    table = capsys.readouterr().out
    assert "trained in imagination" in table and "real env steps used        160" in table
