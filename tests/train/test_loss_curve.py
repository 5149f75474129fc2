"""The loss-curve picture: totals, eval points and a mixture's sources."""

from __future__ import annotations

from PIL import Image

from mixcore.train.run import plot_loss_curve


def test_curve_with_sources_is_drawn(tmp_path):
    history = [
        {"step": s, "loss": 6 - s / 10, "loss/vqa": 6.2 - s / 10, "loss/captions": 5.8 - s / 12}
        for s in range(2, 22, 2)
    ] + [{"step": 20, "eval_loss": 4.5}]
    path = plot_loss_curve(history, tmp_path / "curve.png")
    assert path == tmp_path / "curve.png"
    with Image.open(path) as image:
        assert image.size == (700, 400)
        # Several distinct line colours beside white, grey grid and black text.
        colours = image.convert("RGB").getcolors(maxcolors=100_000)
        assert len(colours) > 50


def test_no_points_no_picture(tmp_path):
    assert plot_loss_curve([{"epoch": 1.0}], tmp_path / "curve.png") is None
    assert not (tmp_path / "curve.png").exists()


def test_a_single_logged_step_is_drawn(tmp_path):
    # A run shorter than logging_steps logs its loss once, at the last step: one point.
    history = [{"step": 3, "loss": 6.7}, {"step": 3, "train_loss": 6.7}]
    path = plot_loss_curve(history, tmp_path / "curve.png")
    with Image.open(path) as image:
        # A lone point sits in the middle of the axes; the legend keeps to a corner.
        width, height = image.size
        box = (width // 2 - 60, height // 2 - 60, width // 2 + 60, height // 2 + 60)
        colours = image.convert("RGB").crop(box).getcolors(maxcolors=100_000)
    blue = sum(
        n for n, (r, g, b) in colours if abs(r - 0x1F) < 40 and abs(g - 0x77) < 40 and b > 140
    )
    assert blue > 20
