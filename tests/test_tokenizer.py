"""Frame tokenizer: shapes and ranges, bit-exact save/load, learning on real ALE frames, exact
resume, tokenized datasets, metrics with known values, one-line errors."""

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from tokworld.cli import main
from tokworld.data.format import load_trajectories
from tokworld.data.windows import split_episodes
from tokworld.errors import TokWorldError
from tokworld.eval.tokenizer_metrics import (
    code_histogram,
    codebook_usage,
    perplexity,
    psnr,
    small_objects,
    ssim,
)
from tokworld.tokenizer import FrameTokenizer, FrameTokenizerConfig, FrameTokenizerOutput, to_uint8
from tokworld.tokenizer.foreground import (
    FOREGROUND_LOSSES,
    batch_foreground,
    foreground_mask,
    foreground_weights,
    masked_mean,
)
from tokworld.training.tokenizer import FrameDataset, tokenize_dataset, train_tokenizer


@pytest.fixture(scope="module")
def frames(pong_dataset) -> torch.Tensor:
    """64 real ALE frames, uint8 (64, 64, 64, 3)."""
    ds = load_trajectories(pong_dataset).select_columns(["observation"])
    return torch.from_numpy(ds.with_format("numpy", dtype=np.uint8)[:64]["observation"])


def _tiny(frames=None, seed=0, **overrides) -> FrameTokenizer:
    """A tiny tokenizer; with `frames`, one training forward initialises its codebook."""
    torch.manual_seed(seed)
    tok = FrameTokenizer(FrameTokenizerConfig.preset("tiny", **overrides))
    if frames is not None:
        tok.compute_loss({"observation": frames})
    return tok.eval()


@pytest.mark.parametrize("tokens", [16, 64])
@pytest.mark.parametrize("quantizer", ["vq", "fsq"])
def test_encode_decode_shapes_dtypes_and_range(frames, tokens, quantizer):
    tok = _tiny(frames, tokens_per_frame=tokens, quantizer=quantizer)
    assert (tok.tokens_per_frame, tok.codebook_size) == (tokens, 64)
    codes = tok.encode(frames[:5])
    assert codes.dtype == torch.long and codes.shape == (5, tokens)
    assert 0 <= codes.min() and codes.max() < tok.codebook_size
    assert torch.equal(tok.encode(frames[:5].numpy()), codes)
    recon = tok.decode(codes)
    assert recon.dtype == torch.float32 and recon.shape == (5, 3, 64, 64)
    assert 0 <= recon.min() and recon.max() <= 1
    pixels = to_uint8(recon)
    assert pixels.dtype == torch.uint8 and pixels.shape == (5, 64, 64, 3)
    out = tok(frames[:5])
    assert isinstance(out, FrameTokenizerOutput) and torch.equal(out.codes, codes)
    assert torch.equal(out.reconstruction.clamp(0, 1), recon)


def test_save_load_is_bit_exact(tmp_path, frames):
    tok = _tiny(frames)
    tok.save_pretrained(tmp_path / "tok")
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    loaded = FrameTokenizer.from_pretrained(tmp_path / "tok")
    assert loaded.config == tok.config
    a, b = tok.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    codes = tok.encode(frames)
    assert torch.equal(loaded.encode(frames), codes)
    assert torch.equal(loaded.decode(codes), tok.decode(codes))


@pytest.mark.parametrize("foreground_loss", FOREGROUND_LOSSES)
def test_loss_falls_on_a_fixed_batch_of_real_frames(frames, foreground_loss):
    tok = _tiny(foreground_loss=foreground_loss).train()
    batch = {"observation": frames[:32]}
    opt = torch.optim.Adam(tok.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss, metrics = tok.compute_loss(batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-5:]) < 0.3 * np.mean(losses[:5])
    assert {"psnr", "usage", "perplexity", "recon_l1", "recon_l2"} <= metrics.keys()
    assert 0 < float(metrics["usage"]) <= 1


class Killed(Exception):
    pass


class Dying(FrameDataset):
    """Raises once it has served `kill_after` frames: a process killed mid-run."""

    def __init__(self, ds, kill_after: int):
        super().__init__(ds)
        self.kill_after, self.served = kill_after, 0

    def __getitem__(self, i):
        self.served += 1
        if self.served > self.kill_after:
            raise Killed
        return super().__getitem__(i)


def test_resume_after_a_kill_matches_an_uninterrupted_run(tmp_path, pong_dataset):
    ds = load_trajectories(pong_dataset)
    kw = dict(preset="tiny", steps=6, batch_size=8, checkpoint_every=3, progress=False)
    full, _ = train_tokenizer(ds, tmp_path / "full", **kw)
    with pytest.raises(Killed):  # dies during step 5, after the step-3 checkpoint
        train_tokenizer(Dying(ds, kill_after=4 * 8 + 3), tmp_path / "split", **kw)
    assert not (tmp_path / "split" / "model.safetensors").exists()
    torch.manual_seed(123)  # the resumed run must not depend on the new process's RNG
    resumed, _ = train_tokenizer(ds, tmp_path / "split", resume=True, **kw)
    a, b = full.state_dict(), resumed.state_dict()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    saved = FrameTokenizer.from_pretrained(tmp_path / "split")
    assert all(torch.equal(a[k], v) for k, v in saved.state_dict().items())


def test_tokenize_dataset_keeps_rows_and_columns(pong_dataset, frames):
    tok = _tiny(frames)
    ds = load_trajectories(pong_dataset).select(range(100))
    coded = tokenize_dataset(tok, ds, batch_size=32)
    assert coded.column_names == ds.column_names + ["codes"]
    assert coded.features["codes"].feature.dtype == "int16"
    assert coded.info.description == ds.info.description
    for column in ("episode_index", "frame_index", "action", "reward"):
        assert coded[column] == ds[column], column
    codes = torch.tensor(coded.with_format("numpy")[:64]["codes"], dtype=torch.long)
    assert torch.equal(codes, tok.encode(frames))


def test_split_episodes_holds_out_whole_episodes(minigrid_dataset):
    ds = load_trajectories(minigrid_dataset)
    train, held = split_episodes(ds, holdout=0.5, seed=0)
    assert len(train) + len(held) == len(ds) and len(held) > 0
    assert not set(train["episode_index"]) & set(held["episode_index"])


def _ssim_by_windows(x: np.ndarray, y: np.ndarray, size: int = 11, sigma: float = 1.5) -> float:
    """SSIM of one (C, H, W) image pair, window by window in float64 (the textbook definition)."""
    r = np.arange(size) - (size - 1) / 2
    g = np.exp(-np.add.outer(r**2, r**2) / (2 * sigma**2))
    g /= g.sum()
    c1, c2, values = 0.01**2, 0.03**2, []
    for ch in range(x.shape[0]):
        for i in range(x.shape[1] - size + 1):
            for j in range(x.shape[2] - size + 1):
                a, b = x[ch, i : i + size, j : j + size], y[ch, i : i + size, j : j + size]
                ma, mb = (g * a).sum(), (g * b).sum()
                va, vb = (g * a * a).sum() - ma**2, (g * b * b).sum() - mb**2
                cov = (g * a * b).sum() - ma * mb
                num = (2 * ma * mb + c1) * (2 * cov + c2)
                values.append(num / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(values))


def test_ssim_matches_the_windowed_definition():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 14, 17, generator=gen)
    y = (x + 0.3 * torch.randn(x.shape, generator=gen)).clamp(0, 1)
    pairs = zip(x.double().numpy(), y.double().numpy(), strict=True)
    expected = [_ssim_by_windows(a, b) for a, b in pairs]
    assert ssim(x, y).tolist() == pytest.approx(expected, abs=1e-6)


def test_metrics_known_values():
    x = torch.rand(2, 3, 32, 32)
    assert torch.isinf(psnr(x, x)).all()
    assert torch.allclose(ssim(x, x), torch.ones(2))
    sign = (torch.arange(32)[:, None] + torch.arange(32)) % 2 * 2 - 1  # checkerboard of +-1
    grey = torch.full((1, 3, 32, 32), 0.5)
    assert torch.allclose(psnr(grey, grey + 0.1 * sign), torch.tensor([20.0]))  # MSE 0.01
    a, b, c1 = 0.2, 0.6, 0.01**2
    flat = ssim(torch.full((1, 3, 16, 16), a), torch.full((1, 3, 16, 16), b))
    assert torch.allclose(flat, torch.tensor([(2 * a * b + c1) / (a * a + b * b + c1)]))
    assert ssim(x, (x + 0.2 * torch.randn_like(x)).clamp(0, 1)).max() < 0.9
    frames = torch.zeros(4, 3, 8, 8)
    frames[1, 0, 2, 3] = 0.5  # one pixel of one frame moves off the (black) background
    background = frames.median(dim=0, keepdim=True).values
    assert foreground_mask(frames, background, 0.05).nonzero().tolist() == [[1, 0, 2, 3]]
    weights = foreground_weights(frames, 4.0, 0.05)
    assert weights[1, 0, 2, 3] == 5 and weights.sum() == 4 * 64 + 4
    counts = code_histogram(torch.tensor([[0, 0, 1, 1]]), 4)
    assert codebook_usage(counts) == 0.5 and perplexity(counts) == pytest.approx(2.0)


def test_balanced_loss_weighs_a_frames_foreground_like_its_background():
    pixel = torch.ones(2, 1, 4, 4)  # per-pixel losses
    fg = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    fg[0, 0, 0, 0] = True  # one foreground pixel in 32
    pixel[0, 0, 0, 0] = 3.0
    assert masked_mean(pixel, fg) == 3.0 and masked_mean(pixel, ~fg) == 1.0
    assert masked_mean(pixel, torch.zeros_like(fg)) == 0.0


def test_symmetric_foreground_holds_what_the_reconstruction_draws_off_the_background():
    target = torch.zeros(3, 3, 4, 4)
    target[0, :, 1, 1] = 0.8  # a ball in frame 0
    recon = target.clone()
    recon[0, :, 1, 1] = 0.0  # missed
    recon[2, :, 3, 0] = 0.5  # a ghost in frame 2
    recon[1, :, 2, 2] = 0.03  # a smear under the threshold
    assert batch_foreground(target, 0.05).nonzero().tolist() == [[0, 0, 1, 1]]
    both = batch_foreground(target, 0.05, recon.requires_grad_())
    assert both.nonzero().tolist() == [[0, 0, 1, 1], [2, 0, 3, 0]]


def test_small_objects_counts_the_blobs_a_reconstruction_draws():
    background = torch.zeros(1, 3, 16, 16)
    target = torch.zeros(3, 3, 16, 16)
    target[:, :, 3, 3:5] = 0.8  # a 2-pixel ball in every frame
    target[:, :, 12, 2:10] = 0.8  # an 8-pixel paddle: not a small object
    recon = target.clone()
    recon[1, :, 3, 3:5] = 0.5  # frame 1: the ball drawn at 5/8 of its contrast (error 0.3)
    recon[2, :, 3, 3:5] = 0.3  # frame 2: under half its contrast (error 0.5): not drawn
    recon[:, :, 12, 2:10] = 0.0  # losing the paddle does not count
    previous = torch.zeros_like(target)
    previous[:, :, 12, 2:10] = 0.8  # the ball moved, the paddle did not
    assert small_objects(target, recon, previous, background, 0.05) == (2, 3)
    assert small_objects(target, recon, target, background, 0.05) == (0, 0)  # nothing moved


@pytest.mark.slow  # ~13 s: trains, evaluates and tokenizes through the CLI
def test_cli_train_eval_tokenize(tmp_path, pong_dataset, capsys):
    tok_dir, out = tmp_path / "tok", tmp_path / "coded"
    train = ["train-tokenizer", "--dataset", pong_dataset, "--out", str(tok_dir)]
    options = ["--preset", "tiny", "--steps", "3", "--batch-size", "8"]
    loss = ["--foreground-loss", "balanced", "--foreground-weight", "0.5"]
    assert main([*train, *options, *loss]) == 0
    config = FrameTokenizer.from_pretrained(tok_dir).config
    assert (config.foreground_loss, config.foreground_weight) == ("balanced", 0.5)
    report, grid = tmp_path / "eval.json", tmp_path / "grid.png"
    args = ["--tokenizer", str(tok_dir), "--dataset", pong_dataset]
    evaluate = ["eval-tokenizer", *args, "--json", str(report), "--grid", str(grid)]
    assert main(evaluate) == 0
    metrics = json.loads(report.read_text())
    assert metrics["frames"] == 300 and 0 < metrics["ssim"] <= 1 and metrics["psnr"] > 0
    assert 0 < metrics["codebook_usage"] <= 1 and metrics["perplexity"] >= 1
    assert metrics["foreground_psnr"] > 0 and 0 <= metrics["foreground_fraction"] < 1
    recall = metrics["small_object_recall"]
    assert metrics["small_objects"] > 0 and 0 <= recall <= 1  # Pong's ball, moving
    assert 0 <= metrics["ghost_pixels_per_frame"] < 64 * 64
    assert iio.imread(grid).shape == (2 * 2 * 66, 8 * 66, 3)  # 16 frames: 2 x (originals/recon)
    before = sorted(p.name for p in Path(pong_dataset).iterdir())
    assert main(["tokenize", *args, "--out", str(out)]) == 0
    assert sorted(p.name for p in Path(pong_dataset).iterdir()) == before
    coded = load_trajectories(str(out))
    assert len(coded) == len(load_trajectories(pong_dataset)) and "codes" in coded.column_names


def test_bad_input_is_one_clear_error(tmp_path, frames, pong_dataset, capsys):
    tok = _tiny(frames)
    with pytest.raises(TokWorldError, match=r"uint8 of shape \(B, 64, 64, 3\), got uint8"):
        tok.encode(torch.zeros(2, 32, 32, 3, dtype=torch.uint8))
    with pytest.raises(TokWorldError, match="got float32"):
        tok.encode(np.zeros((2, 64, 64, 3), dtype=np.float32))
    with pytest.raises(TokWorldError, match=r"codes must lie in \[0, 64\)"):
        tok.decode(torch.full((1, 16), 64))
    with pytest.raises(TokWorldError, match="tokens_per_frame must be a square"):
        FrameTokenizerConfig.preset("tiny", tokens_per_frame=15)
    with pytest.raises(TokWorldError, match="foreground_loss must be one of weighted, balanced"):
        FrameTokenizerConfig.preset("tiny", foreground_loss="focal")
    with pytest.raises(TokWorldError, match="positive multiples of 8"):
        FrameTokenizerConfig.preset("tiny", dec_channels=(0, 16, 32))
    with pytest.raises(TokWorldError, match="dec_blocks must be >= 0, got 1, -1"):
        FrameTokenizerConfig.preset("tiny", dec_blocks=-1)

    tok.save_pretrained(tmp_path / "no_weights")
    (tmp_path / "no_weights" / "model.safetensors").unlink()
    tok.save_pretrained(tmp_path / "truncated")
    weights = tmp_path / "truncated" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    for bad, message in [("no_weights", "has no model.safetensors"), ("truncated", "cannot load")]:
        with pytest.raises(TokWorldError, match=message):
            FrameTokenizer.from_pretrained(tmp_path / bad)
        capsys.readouterr()
        code = main(
            ["eval-tokenizer", "--tokenizer", str(tmp_path / bad), "--dataset", pong_dataset]
        )
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1
