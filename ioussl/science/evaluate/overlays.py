"""Pictures of a segmentation: one axial slice as CT, CT with the ground truth, CT with the prediction.

The thesis' code draws slice, label and prediction side by side for a visual check (its
``visualize_inference.py``); this does the same on the stored (preprocessed) grid, with every organ in a
colour of its own over the CT, and the slice turned as a radiologist's viewer shows an axial slice (anterior
up, the patient's right on the left). Pure NumPy plus Pillow for the PNG encoding.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

from ioussl.science.evaluate.metrics import FLARE_ORGANS

# One colour per organ label 1..13 (RGB), far enough apart to tell neighbouring organs apart.
ORGAN_COLOURS = np.array([
    (0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
    (170, 110, 40),
], dtype=np.float32)  # fmt: skip
ALPHA = 0.45  # opacity of a label over the CT
MIN_PANEL = 256  # pixels: small stores are scaled up (nearest neighbour, so labels stay crisp)
TITLE_HEIGHT = 18


def radiological(slice_xy: np.ndarray) -> np.ndarray:
    """A stored slice (H = RAS X, W = RAS Y) as rows anterior to posterior and columns patient right to left."""
    return np.ascontiguousarray(slice_xy.T[::-1, ::-1])


def blend(ct: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
    """RGB uint8 of a CT slice in [0, 1] with ``labels`` (0 = none) coloured over it."""
    grey = np.repeat((np.clip(ct, 0.0, 1.0) * 255.0)[..., None], 3, axis=2)
    if labels is None:
        return grey.round().astype(np.uint8)
    valid = np.clip(labels.astype(np.int64), 0, len(ORGAN_COLOURS) - 1)
    colour = ORGAN_COLOURS[valid]
    mask = (valid > 0)[..., None]
    mixed = np.where(mask, (1.0 - ALPHA) * grey + ALPHA * colour, grey)
    return mixed.round().astype(np.uint8)


def panels(ct: np.ndarray, truth: np.ndarray | None, pred: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """The titled RGB panels of one stored slice: CT, ground truth (when the case is labelled), prediction."""
    shown = [("CT", blend(radiological(ct), None))]
    if truth is not None:
        shown.append(("ground truth", blend(radiological(ct), radiological(truth))))
    shown.append(("prediction", blend(radiological(ct), radiological(pred))))
    return shown


def overlay_png(ct: np.ndarray, truth: np.ndarray | None, pred: np.ndarray, caption: str) -> bytes:
    """The panels side by side under their titles, with ``caption`` and the organs present, as PNG bytes."""
    from PIL import Image, ImageDraw

    shown = panels(ct, truth, pred)
    height, width = shown[0][1].shape[:2]
    scale = max(1, -(-MIN_PANEL // max(1, min(height, width))))
    gap = 6
    organs = sorted(present_organs(pred) | (present_organs(truth) if truth is not None else set()))
    legend_rows = 1 + (len(organs) + 3) // 4
    canvas = Image.new("RGB", (len(shown) * (width * scale + gap) - gap,
                               TITLE_HEIGHT + height * scale + TITLE_HEIGHT * legend_rows), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (title, rgb) in enumerate(shown):
        left = i * (width * scale + gap)
        draw.text((left + 2, 3), title, fill="black")
        canvas.paste(Image.fromarray(rgb).resize((width * scale, height * scale), Image.Resampling.NEAREST),
                     (left, TITLE_HEIGHT))
    top = TITLE_HEIGHT + height * scale + 3
    draw.text((2, top), caption, fill="black")
    for n, organ in enumerate(organs):
        x, y = 2 + (n % 4) * 150, top + TITLE_HEIGHT * (1 + n // 4)
        draw.rectangle((x, y + 2, x + 10, y + 12), fill=tuple(int(c) for c in ORGAN_COLOURS[organ]))
        draw.text((x + 14, y + 1), FLARE_ORGANS.get(organ, str(organ)), fill="black")
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def present_organs(labels: np.ndarray) -> set[int]:
    """The organ labels (1..13) that occur in ``labels``; the legend lists these."""
    return {int(v) for v in np.unique(labels)} - {0}


def default_slices(labels: np.ndarray, count: int = 3) -> list[int]:
    """Slices (stored z) worth a look: the one with the most labelled voxels, then evenly through the labelled
    range; the middle slice when nothing is labelled."""
    area = (labels > 0).reshape(labels.shape[0], -1).sum(axis=1)
    if not area.any():
        return [labels.shape[0] // 2]
    labelled = np.flatnonzero(area)
    chosen = [int(np.argmax(area))]
    for z in np.linspace(labelled[0], labelled[-1], count + 2)[1:-1].round().astype(int):
        if int(z) not in chosen and len(chosen) < count:
            chosen.append(int(z))
    return sorted(chosen)


def check_slices(slices: Sequence[int], depth: int, case: str) -> list[int]:
    """The asked slices, each within the case's stored depth (a one-line error names the valid range)."""
    from ioussl.errors import ConfigError

    bad = [z for z in slices if not 0 <= z < depth]
    if bad:
        raise ConfigError(f"case {case} has slices 0..{depth - 1} on the stored grid; got {bad[0]}")
    return sorted(dict.fromkeys(slices))
