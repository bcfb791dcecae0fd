"""Evaluating vector runs (a vector codec, issue #19): eval-model scores every dimension against
the held-out variance, imagine writes a vector dataset and an open-loop plot, eval plays real
episodes and plots them, the report shows vector figures; a run meeting a dataset of the other
kind of observation, and play or demo given a vector run, are one line."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tokworld.cli import main
from tokworld.data.format import TrajectoryMeta, load_trajectories
from tokworld.data.validate import validate_trajectories
from tokworld.errors import TokWorldError
from tokworld.eval.demo import DemoConfig, run_demo
from tokworld.eval.real_env import evaluate_run
from tokworld.eval.vector_fidelity import compare_vectors
from tokworld.play.world import PlayConfig, PlayWorld

PNG = b"\x89PNG"


def test_vector_errors_are_per_dimension_and_scaled_by_its_variance():
    real = np.zeros((2, 3, 3), np.float32)  # 2 windows, 3 steps, 3 dimensions
    imagined = real + np.array([1.0, 2.0, 5.0], np.float32)
    valid = np.ones((2, 3), bool)
    valid[1, 2] = False  # the second window ended before step 3
    imagined[1, 2] = 100.0  # past its end: never counted
    variance = np.array([1.0, 4.0, 0.0])  # dimension 2 never varies: no scale for it
    out = compare_vectors(imagined, real, variance, real=real, valid=valid)
    assert out["mae_vs_real"] == [[1.0, 2.0, 5.0]] * 3
    # (1 / 1 + 4 / 4) / 2: the constant dimension is left out of the normalised MSE
    assert out["nmse_vs_real"] == [1.0] * 3
    assert out["codec_nmse"] == [0.0] * 3 and out["codec_mae"] == [[0.0] * 3] * 3
    assert compare_vectors(imagined, real, variance, valid=np.zeros((2, 3), bool)) == {
        "mae_vs_reconstruction": [None] * 3,
        "nmse_vs_reconstruction": [None] * 3,
    }


def test_eval_model_scores_every_dimension_per_horizon(tiny_vector_run, tmp_path):
    out = tmp_path / "fidelity.json"
    argv = ["eval-model", "--run", str(tiny_vector_run), "--context", "2", "--horizon", "10",
            "--windows", "8", "--device", "cpu", "--json", str(out)]  # fmt: skip
    assert main(argv) == 0  # on the run's held-out episode
    result = json.loads(out.read_text())
    assert result["observation"] == "vector" and "held out" in result["dataset"]
    assert not [k for k in result["per_step"] if "psnr" in k or "ssim" in k]
    assert set(result["at_horizon"]) == {"1", "5", "10"}
    for figures in result["at_horizon"].values():
        for key in ("mae_vs_real", "mae_vs_reconstruction", "codec_mae"):
            assert len(figures[key]) == 3 and all(math.isfinite(v) for v in figures[key])
        for key in ("nmse_vs_real", "nmse_vs_reconstruction", "codec_nmse"):
            assert math.isfinite(figures[key]) and figures[key] >= 0
    first = result["at_horizon"]["1"]
    # 64 quantile bins per dimension: the codec's floor is small, and below the model's error
    assert first["codec_nmse"] < 0.05 and first["codec_nmse"] <= first["nmse_vs_real"]
    assert {"precision", "recall"} <= result["reward"].keys() <= result["end"].keys()
    assert (tmp_path / "fidelity.png").read_bytes()[:4] == PNG


def test_imagine_writes_a_vector_dataset_and_an_open_loop_plot(
    tiny_vector_run, pendulum_dataset, tmp_path
):
    out = tmp_path / "imagined"
    argv = ["imagine", "--run", str(tiny_vector_run), "--dataset", pendulum_dataset,
            "--episodes", "2", "--steps", "6", "--context", "2", "--open-loop", "--device", "cpu",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    ds = load_trajectories(summary["dataset"])
    validate_trajectories(ds)
    meta = TrajectoryMeta.from_dataset(ds)
    source = TrajectoryMeta.from_dataset(load_trajectories(pendulum_dataset))
    assert meta.observation == "vector" and meta.frame_size == 0
    assert meta.observation_shape == source.observation_shape == (3,)
    assert meta.observation_space == source.observation_space
    assert meta.source["open_loop"] and len(ds) == summary["steps"]
    # open loop: the real actions of the context's episodes were replayed
    assert np.asarray(ds.with_format("numpy")[:]["action"]).shape == (len(ds), 1)
    assert "gifs" not in summary and "grid" not in summary and not list(out.glob("*.gif"))
    assert (out / "real_vs_imagined.png").read_bytes()[:4] == PNG
    assert summary["plot"] == str(out / "real_vs_imagined.png")
    assert len(summary["nmse_vs_real"]) == 7 and len(summary["mae_vs_real"][0]) == 3


def test_eval_plays_a_vector_policy_and_plots_its_best_and_worst_episode(
    tiny_vector_online_run, tmp_path
):
    out = tmp_path / "eval.json"
    summary = evaluate_run(tiny_vector_online_run, "Pendulum-v1", 2, out, progress=False)
    assert summary == json.loads(out.read_text())
    assert len(summary["returns"]) == 2 and summary["mean_length"] == 200.0
    assert summary["min"] == min(summary["returns"]) < 0  # Pendulum's rewards are costs
    assert summary["plot"] == str(tmp_path / "eval_episodes.png")
    assert (tmp_path / "eval_episodes.png").read_bytes()[:4] == PNG
    assert "best_gif" not in summary and not list(tmp_path.glob("*.gif"))


def test_report_of_a_vector_run_shows_vector_figures(tiny_vector_run, tmp_path):
    out = tmp_path / "report.html"
    argv = ["report", "--run", str(tiny_vector_run), "--out", str(out), "--windows", "4",
            "--horizon", "3", "--context", "2", "--videos", "2", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    page = out.read_text()
    assert "Vector codec" in page and "nmse_vs_real" in page and "psnr" not in page
    assert "data:image/gif" not in page and "Tokenizer reconstructions" not in page
    # fidelity plot and one plot of each imagined window, beside the training curves
    assert page.count("data:image/png") >= 3


@pytest.mark.parametrize("command", ["eval-model", "imagine"])
@pytest.mark.parametrize("run_kind", ["frames", "vector"])
def test_a_run_and_a_dataset_of_another_observation_are_one_line(
    command, run_kind, tiny_run, tiny_vector_run, minigrid_dataset, pendulum_dataset, tmp_path,
    capsys,
):  # fmt: skip
    run, dataset, other = (
        (tiny_run, pendulum_dataset, "vector")
        if run_kind == "frames"
        else (tiny_vector_run, minigrid_dataset, "frames")
    )
    argv = [command, "--run", str(run), "--dataset", dataset, "--device", "cpu"]
    argv += ["--out", str(tmp_path / "out")] if command == "imagine" else []
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert f"reads {run_kind} observations but dataset {dataset} has {other}" in err[0]


def test_play_and_demo_refuse_a_vector_run_in_one_line(tiny_vector_run, tmp_path, capsys):
    refusal = f"tokworld play needs a run with a frame tokenizer; {tiny_vector_run} reads vector"
    assert main(["play", "--run", str(tiny_vector_run), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and refusal in err[0]
    with pytest.raises(TokWorldError, match=refusal):  # what a page of the server would show
        PlayWorld(PlayConfig(run=str(tiny_vector_run)))
    with pytest.raises(TokWorldError, match="needs an env observed as frames; Pendulum-v1"):
        run_demo(DemoConfig(env_id="Pendulum-v1"), tmp_path / "demo")
    assert not (tmp_path / "demo").exists()  # refused before anything was written
