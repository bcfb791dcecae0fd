"""The IRIS reference that imagination speed is compared against behaves as IRIS does."""

import torch

from tokworld.eval.bench_imagine import bench_imagine
from tokworld.eval.iris_reference import (
    IRIS_TOKENS_PER_STEP,
    TOKENS_PER_FRAME,
    IrisDecoder,
    IrisImagination,
    IrisReference,
)


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


def test_bench_imagine_reports_the_speedup_over_iris():
    result = bench_imagine("tiny", batch=2, steps=4, long_steps=4, iris=True)
    assert result["iris_imagined_steps_per_s"] > 0
    assert len(result["speedup_vs_iris_per_block"]) == 1
    expected = result["imagined_steps_per_s"] / result["iris_imagined_steps_per_s"]
    assert abs(result["speedup_vs_iris"] - expected) < 1e-9
