"""Images, GIFs and figures are written whole or not at all."""

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from tokworld.eval import media
from tokworld.eval.media import pyplot, save_figure, write_gif, write_image


def test_gif_round_trip(tmp_path):
    frames = np.zeros((3, 4, 5, 3), np.uint8)
    frames[1, 2, 3] = 255
    frames[2, :, :, 0] = 255
    path = write_gif(frames, tmp_path / "deep" / "clip.gif", scale=2)
    back = iio.imread(path, index=None)[..., :3]
    assert back.shape == (3, 8, 10, 3)
    assert (back == frames.repeat(2, 1).repeat(2, 2)).all()
    assert sorted(p.name for p in path.parent.iterdir()) == ["clip.gif"]


def test_interrupted_image_write_keeps_the_old_file_and_leaves_nothing(tmp_path, monkeypatch):
    def half_then_interrupted(target, image, **options):
        Path(target).write_bytes(b"half a PNG")
        raise KeyboardInterrupt

    path = tmp_path / "grid.png"
    path.write_bytes(b"old")
    monkeypatch.setattr(media.iio, "imwrite", half_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_image(np.zeros((4, 4, 3), np.uint8), path)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]


def test_figure_is_saved_and_closed(tmp_path):
    plt = pyplot()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    path = save_figure(fig, tmp_path / "curve.png", dpi=50)
    assert iio.imread(path).shape[2] in (3, 4)
    assert fig.number not in plt.get_fignums()
    assert [p.name for p in tmp_path.iterdir()] == ["curve.png"]
