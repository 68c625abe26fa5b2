"""FLARE 2022's evaluation as its organisers' code defines it: DSC and NSD per organ on the original grid.

Source: github.com/JunMa11/FLARE, ``FLARE22/Evaluation/FLARE22_DSC_NSD_Eval.py`` and ``SurfaceDice.py``
(commit be3eb6f, 2022-06-21, the version published during the challenge; docs/training.md lists every rule
and what a 2024 revision changed). Per case and organ (labels 1..13), on the ground truth's own voxel grid
with the spacing of its header:

- organ absent from the ground truth and the prediction: DSC 1, NSD 1; only in the prediction: 0, 0;
- aorta (5), inferior vena cava (6) and oesophagus (10): both masks are first cut to the ground truth's
  slices along the head-foot axis, from its first labelled slice up to, but excluding, its last one (the
  organisers slice ``z_lower:z_upper``); an organ on a single slice then leaves nothing to score (the
  organisers' code raises ``ValueError: zero-size array`` there; null here, left out of the means);
- DSC = 2|P∩G| / (|P| + |G|); NSD = the share of both surfaces within the organ's tolerance (mm) of the other,
  surfaces measured in surface elements (DeepMind's surface-distance, which MONAI's
  ``compute_surface_dice(use_subvoxels=True)`` reproduces to 1e-7: tested against the organisers' file).

Rules by version (``finetune.flare_rules``): "2022" (the challenge's code, above) or "2024" (the organisers'
revision for FLARE 2024: an organ's NSD is 0, not computed, where its DSC is below 0.2). The official
scripts write each value rounded to 4 decimals; ``finetune.flare_round`` does the same before the means.

Predictions are made on the preprocessed grid and mapped back with ``grid.to_source_grid``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import numpy as np
import torch

from ioussl.errors import DataError
from ioussl.science.data.grid import slice_axis, to_source_grid
from ioussl.science.evaluate.metrics import FLARE_ORGANS

TOLERANCE_MM: dict[int, float] = {
    1: 5.0, 2: 3.0, 3: 3.0, 4: 5.0, 5: 2.0, 6: 2.0, 7: 2.0, 8: 2.0, 9: 2.0, 10: 3.0, 11: 5.0, 12: 7.0, 13: 3.0,
}  # fmt: skip
SLICE_RANGE_ORGANS = frozenset({5, 6, 10})  # aorta, inferior vena cava, oesophagus
RULES = ("2022", "2024")
NSD_FROM_DSC_2024 = 0.2  # the 2024 rule: below this DSC the NSD is 0
OFFICIAL_DECIMALS = 4  # the organisers' CSV rounding
PREDICT_BATCH = 8  # slices per sliding-window call

Scores = dict[str, float | None]


def _bounding_slices(mask: np.ndarray, margin: int = 1) -> tuple[slice, ...]:
    """The box around a mask's voxels plus ``margin``, clipped to the array (surfaces are unchanged by it)."""
    box = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        where = np.flatnonzero(mask.any(axis=others))
        box.append(slice(max(0, where[0] - margin), where[-1] + 1 + margin))
    return tuple(box)


def organ_scores(
    truth: np.ndarray, pred: np.ndarray, organ: int, spacing: Sequence[float], head_foot_axis: int,
    rules: str = "2022",
) -> Scores:  # fmt: skip
    """FLARE's DSC and NSD of one organ in one case under ``rules`` (see the module docstring)."""
    from monai.metrics import compute_dice, compute_surface_dice

    gt, pr = truth == organ, pred == organ
    if not gt.any():
        score = 1.0 if not pr.any() else 0.0
        return {"dsc": score, "nsd": score}
    if organ in SLICE_RANGE_ORGANS:
        others = tuple(a for a in range(3) if a != head_foot_axis)
        labelled = np.flatnonzero(gt.any(axis=others))
        keep = [slice(None)] * 3
        keep[head_foot_axis] = slice(labelled[0], labelled[-1])  # the organisers' exclusive upper bound
        gt, pr = gt[tuple(keep)], pr[tuple(keep)]
        if not gt.any():
            return {"dsc": None, "nsd": None}  # one labelled slice: nothing left to score
    if not pr.any():
        return {"dsc": 0.0, "nsd": 0.0}
    box = _bounding_slices(gt | pr)
    y, y_pred = (torch.from_numpy(np.ascontiguousarray(m[box]))[None, None] for m in (gt, pr))
    dsc = float(compute_dice(y_pred.float(), y.float(), include_background=True)[0, 0])
    if rules == "2024" and dsc < NSD_FROM_DSC_2024:
        return {"dsc": dsc, "nsd": 0.0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns about empty masks, which are handled above
        nsd = compute_surface_dice(
            y_pred, y, [TOLERANCE_MM[organ]], include_background=True,
            spacing=[float(s) for s in spacing], use_subvoxels=True,
        )  # fmt: skip
    return {"dsc": dsc, "nsd": float(nsd[0, 0])}


def case_scores(
    truth: np.ndarray, pred: np.ndarray, spacing: Sequence[float], head_foot_axis: int, rules: str = "2022",
    rounded: bool = False,
) -> dict[str, Scores]:  # fmt: skip
    """All 13 organs of one case; ``truth`` and ``pred`` are label volumes on the same (original) grid.
    ``rounded``: each value to the organisers' 4 decimals, as their CSV holds it."""
    if rules not in RULES:
        raise DataError(f"unknown FLARE rules {rules!r}; valid: {', '.join(RULES)}")
    if truth.shape != pred.shape:
        raise DataError(f"prediction shape {pred.shape} differs from the ground truth's {truth.shape}")
    scores = {name: organ_scores(truth, pred, organ, spacing, head_foot_axis, rules)
              for organ, name in FLARE_ORGANS.items()}
    if rounded:
        scores = {name: {m: None if v is None else round(v, OFFICIAL_DECIMALS) for m, v in pair.items()}
                  for name, pair in scores.items()}
    return scores


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def summarise(per_case: Mapping[str, Mapping[str, Scores]]) -> tuple[dict[str, Scores], float, float]:
    """Per organ the mean over cases; overall the mean over organs of those (nulls left out)."""
    organs = list(FLARE_ORGANS.values())
    per_organ = {
        organ: {m: _mean([c[organ][m] for c in per_case.values() if organ in c]) for m in ("dsc", "nsd")}
        for organ in organs
    }
    overall = [_mean([per_organ[o][m] for o in organs]) for m in ("dsc", "nsd")]
    if overall[0] is None or overall[1] is None:
        raise DataError("no organ could be scored in any case")
    return per_organ, overall[0], overall[1]


def evaluate_flare(
    store: Any, cases: Sequence[str], part: str, predict: Callable[[str], np.ndarray], rules: str = "2022",
    rounded: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """The ``flare`` section of result.json: FLARE 2022's scores of ``predict`` on ``cases``.

    Args:
        store: the slice store (format 2: grid records and copies of the original labels).
        cases: labelled cases to score.
        part: "val" or "test", which part of the split ``cases`` are.
        predict: case -> predicted labels (Z, H, W) on the store's preprocessed grid.
        rules: "2022" or "2024" (the NSD rule); rounded: the organisers' 4-decimal rounding of each value.

    Raises:
        DataError: the store cannot map back (format 1), a label copy is missing or corrupt, or no case.
    """
    if not cases:
        raise DataError("FLARE evaluation needs at least one case")
    per_case = {}
    for case in sorted(cases):
        grid = store.source_grid(case)
        truth, spacing = store.source_label(case)
        pred = to_source_grid(predict(case), grid)
        per_case[case] = case_scores(truth, pred, spacing, slice_axis(grid), rules, rounded)
    per_organ, dsc, nsd = summarise(per_case)
    return {"part": part, "dsc": dsc, "nsd": nsd, "per_organ": per_organ, "per_case": per_case, "rules": rules,
            "rounded": rounded}


def model_predictor(
    model: torch.nn.Module, store: Any, runtime: Any, window: Mapping[str, Any]
) -> Callable[[str], np.ndarray]:
    """case -> argmax labels (Z, H, W) of ``model`` over all the case's slices (sliding window, as in validation);
    with ``window["spatial_dims"] == 3``, over the whole volume with cubes."""
    from monai.inferers import sliding_window_inference

    from ioussl.science.runtime import eval_mode

    def predict_volume(case: str) -> np.ndarray:
        image, _ = store.volume(case)
        with eval_mode(model), runtime.autocast():
            volume = runtime.to_device(torch.from_numpy(image)[None, None])
            logits = sliding_window_inference(
                volume, (window["roi"],) * 3, window["sw_batch_size"], model, overlap=window["overlap"]
            )
        return logits[0].argmax(dim=0).to(torch.uint8).cpu().numpy()

    def predict(case: str) -> np.ndarray:
        image, _ = store.volume(case)
        out = np.zeros(image.shape, dtype=np.uint8)
        with eval_mode(model):
            for start in range(0, image.shape[0], PREDICT_BATCH):
                chunk = np.ascontiguousarray(image[start : start + PREDICT_BATCH])
                batch = runtime.to_device(torch.from_numpy(chunk)[:, None])
                with runtime.autocast():
                    logits = cast(torch.Tensor, sliding_window_inference(
                        batch, (window["roi"],) * 2, window["sw_batch_size"], model, overlap=window["overlap"]
                    ))
                out[start : start + batch.shape[0]] = logits.argmax(dim=1).to(torch.uint8).cpu().numpy()
        return out

    return predict_volume if window.get("spatial_dims", 2) == 3 else predict
