"""The demo's pretraining-loss figure and its per-group summary, from loss series as the registry holds them."""

from __future__ import annotations

from ioussl.demo import _plot_losses


def test_loss_figure_is_written_for_every_group(tmp_path):
    curves = {
        "[0, 0]": [[(0, -0.01), (1, -0.2), (2, -0.4)], [(0, -0.02), (1, -0.25), (2, -0.45)]],
        "random crop [0, 1]": [[(0, -0.01), (1, -0.1)]],  # a shorter run: the mean uses what exists
    }
    path = _plot_losses(curves, tmp_path / "plots" / "loss.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
