"""The IRIS reference that imagination speed is compared against behaves as IRIS does."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from tokworld.cli import main
from tokworld.data.format import load_trajectories
from tokworld.errors import TokWorldError
from tokworld.eval.bench_imagine import bench_imagine
from tokworld.eval.bench_imagine import main as bench_imagine_main
from tokworld.eval.bench_tokenizer import main as bench_tokenizer
from tokworld.eval.iris_reference import (
    IRIS_TOKENS_PER_STEP,
    TOKENS_PER_FRAME,
    IrisDecoder,
    IrisImagination,
    IrisReference,
)
from tokworld.eval.iris_tokenizer import IrisTokenizer
from tokworld.imagine import ImaginationEngine


def _world_model(steps: int = 3) -> IrisReference:
    torch.manual_seed(0)
    return IrisReference(layers=2, width=32, heads=4, steps=steps).eval()


@torch.no_grad()
def test_cached_forward_matches_full_recompute():
    wm = _world_model()
    x = torch.randn(2, 2 * IRIS_TOKENS_PER_STEP, 32)
    full = wm.transformer(x)
    cache = wm.new_cache(2)
    parts = [wm.transformer(x[:, :5], cache)] + [wm.transformer(x[:, t : t + 1], cache)
                                                 for t in range(5, x.shape[1])]  # fmt: skip
    assert cache.size == x.shape[1]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_imagination_refreshes_the_cache_when_full_and_decodes_frames():
    wm = _world_model(steps=3)  # room for the first frame and 2 steps: IRIS then starts over
    iris = IrisImagination(wm, IrisDecoder(ch=32, z=64))
    frames = iris.start(torch.randint(0, 512, (2, TOKENS_PER_FRAME)))
    assert frames.shape == (2, 3, 64, 64)
    sizes = []
    for _ in range(5):
        frames, reward, done = iris.step(torch.randint(0, 4, (2,)))
        sizes.append(iris.cache.size)
    assert sizes == [33, 50, 33, 50, 33]  # 16 + 17, 16 + 2 * 17, then refreshed from 16
    assert frames.shape == (2, 3, 64, 64) and 0 <= frames.min() and frames.max() <= 1
    assert set(reward.tolist()) <= {-1.0, 0.0, 1.0} and done.dtype == torch.bool
    assert iris.codes.shape == (2, TOKENS_PER_FRAME)


@pytest.mark.slow  # IRIS baseline benchmark
def test_bench_imagine_reports_the_speedup_over_iris():
    result = bench_imagine("tiny", batch=2, steps=4, long_steps=4, iris=True)
    assert result["iris_imagined_steps_per_s"] > 0 and result["iris_gflop_per_batch_step"] > 0
    assert result["iris_operations_per_batch_step"] > 0
    assert len(result["speedup_vs_iris_per_block"]) == 1
    expected = result["imagined_steps_per_s"] / result["iris_imagined_steps_per_s"]
    assert abs(result["speedup_vs_iris"] - expected) < 1e-9


def test_bench_imagine_command_times_both_modes_under_bf16_autocast(tmp_path, monkeypatch):
    under_bf16 = []
    step = ImaginationEngine.step

    def recording_step(self, action):
        under_bf16.append(torch.get_autocast_dtype("cpu") == torch.bfloat16
                          and torch.is_autocast_enabled("cpu"))  # fmt: skip
        return step(self, action)

    monkeypatch.setattr(ImaginationEngine, "step", recording_step)
    out = tmp_path / "imagine.json"
    args = ["bench", "imagine", "--preset", "tiny", "--batch", "2", "--steps", "4",
            "--long-steps", "4", "--device", "cpu", "--bf16", "--json", str(out)]  # fmt: skip
    assert main(args) == 0
    result = json.loads(out.read_text())
    assert result["bf16"] and under_bf16 and all(under_bf16)
    modes = ("token", "parallel", "block")
    assert set(result["lines"]) == {m + t for m in modes for t in ("", ", tokens")}
    assert result["parallel_over_token"]["frames"]["speedup"] > 0
    assert result["block_over_token"]["tokens"]["speedup"] > 0
    # Work per step: the decoder adds the same GFLOP to every mode's step.
    gflop = {name: line["gflop_per_batch_step"] for name, line in result["lines"].items()}
    decoder = [gflop[m] - gflop[m + ", tokens"] for m in modes]
    assert decoder[0] > 0 and decoder == pytest.approx([decoder[0]] * 3)
    assert all(line["gflop_per_s"] > 0 for line in result["lines"].values())
    # Operations per step: the decoder adds the same to every mode; token mode runs one forward
    # per token (K + 2 at tiny), each with about as many operations as a block step's one.
    ops = {name: line["operations_per_batch_step"] for name, line in result["lines"].items()}
    decoder_ops = [ops[m] - ops[m + ", tokens"] for m in modes]
    assert decoder_ops[0] > 0 and decoder_ops == [decoder_ops[0]] * 3
    assert ops["token, tokens"] > 10 * ops["block, tokens"]


def test_bench_imagine_runs_as_a_module_without_the_command_line(tmp_path, capsys):
    out = tmp_path / "imagine.json"
    result = bench_imagine_main(["--preset", "tiny", "--batch", "2", "--steps", "4",
                                 "--long-steps", "4", "--device", "cpu", "--frame-decoding",
                                 "parallel", "--json", str(out)])  # fmt: skip
    assert json.loads(out.read_text()) == json.loads(capsys.readouterr().out) == result
    assert set(result["lines"]) == {"parallel", "parallel, tokens"} and not result["bf16"]
    for bad, message in [(["--steps", "10", "--long-steps", "5"], "--long-steps >= --steps"),
                         (["--threads", "0"], "--threads must be >= 1"),
                         (["--json", str(out)], "already exists: pass --overwrite")]:  # fmt: skip
        with pytest.raises(SystemExit, match=message):
            bench_imagine_main(bad)
    # Run as `python -m`, it leaves unimported what a GPU image may lack: `datasets`.
    argv = ["x", "--preset", "tiny", "--batch", "1", "--steps", "2", "--long-steps", "2",
            "--device", "cpu", "--frame-decoding", "parallel"]  # fmt: skip
    code = (f"import runpy, sys; sys.argv = {argv!r}; "
            "runpy.run_module('tokworld.eval.bench_imagine', run_name='__main__'); "
            "print('datasets imported:', 'datasets' in sys.modules)")  # fmt: skip
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    assert '"frame_decoding": "parallel"' in ran.stdout
    assert ran.stdout.strip().endswith("datasets imported: False")


@pytest.mark.slow  # ~4 s
def test_iris_tokenizer_learns_a_fixed_batch_of_real_frames(pong_dataset):
    ds = load_trajectories(pong_dataset).select_columns(["observation"])
    frames = torch.from_numpy(ds.with_format("numpy", dtype=np.uint8)[:4]["observation"])
    torch.manual_seed(0)
    tok = IrisTokenizer(ch=32, z=64)
    codes = tok.encode(frames)
    assert codes.shape == (4, TOKENS_PER_FRAME) and 0 <= codes.min() and codes.max() < 512
    decoded = tok.decode(codes)
    assert decoded.shape == (4, 3, 64, 64) and 0 <= decoded.min() and decoded.max() <= 1
    opt = torch.optim.Adam(tok.parameters(), lr=1e-3)
    losses = []
    for _ in range(20):
        loss, metrics = tok.compute_loss({"observation": frames})
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3])
    assert {"psnr", "usage", "commitment"} <= metrics.keys()
    with pytest.raises(TokWorldError, match=r"got torch.uint8 \(2, 32, 32, 3\)"):
        tok.encode(torch.zeros(2, 32, 32, 3, dtype=torch.uint8))
    with pytest.raises(TokWorldError, match=r"uint8 \(B, 64, 64, 3\), got torch.float32"):
        tok.encode(np.zeros((2, 64, 64, 3), dtype=np.float32))


@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--preset", "tiny", "--dec-channels", "12", "16", "32"], "multiples of 8"),
     (["--iris", "--dec-blocks", "1"], "not --iris's")],
)  # fmt: skip
def test_bench_tokenizer_rejects_bad_decoder_flags_before_collecting(tmp_path, capsys, flags,
                                                                     message):  # fmt: skip
    data = tmp_path / "data"
    args = ["--env", "MiniGrid-Empty-5x5-v0", "--steps", "300", "--data-dir", str(data),
            "--out", str(tmp_path / "run")]  # fmt: skip
    assert bench_tokenizer([*args, *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bench_tokenizer: error:") and message in err and "\n" not in err
    assert not data.exists()  # nothing collected


@pytest.mark.slow  # IRIS baseline benchmark, ~11 s with --iris
@pytest.mark.parametrize(
    "which",
    [["--preset", "tiny"], ["--iris"],
     ["--preset", "tiny", "--dec-blocks", "2", "--dec-channels", "24", "16", "32"]],
)  # fmt: skip
def test_bench_tokenizer_trains_and_measures_ours_or_iris(tmp_path, which, capsys):
    report = tmp_path / "report.json"
    args = ["--env", "MiniGrid-Empty-5x5-v0", "--steps", "300", "--train-steps", "2",
            "--batch-size", "4", "--holdout", "0.2", "--data-dir", str(tmp_path / "data"),
            "--out", str(tmp_path / "run"), "--json", str(report), "--repeats", "1"]  # fmt: skip
    assert bench_tokenizer([*args, *which]) == 0
    result = json.loads(report.read_text())
    assert result["tokenizer"] == ("iris reference (no LPIPS)" if "--iris" in which else "tokworld")
    assert result["train_steps"] == 2 and result["tokens_per_frame"] == 16
    assert 0 < result["held_out"]["ssim"] <= 1 and result["decode_ms_batch32"] > 0
    assert (tmp_path / "run" / "grid.png").exists()
    if "--dec-blocks" in which:  # the decoder overrides reach the trained tokenizer
        assert result["dec_blocks"] == 2 and result["dec_channels"] == [24, 16, 32]
        saved = json.loads((tmp_path / "run" / "tokenizer" / "config.json").read_text())
        assert saved["dec_blocks"] == 2 and saved["dec_channels"] == [24, 16, 32]
