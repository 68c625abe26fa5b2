"""The HTML report's segmentation pictures: each group's best and worst case, as ``ioussl predict`` drew them.

A group's case scores are the mean over its scored fine-tunes of each case's mean organ DSC, on the cases
the group's number comes from (held-out test cases where it has them, else validation). For its best and
worst case, the picture comes from the group's best-scoring run that has one in ``<run dir>/predictions``;
where none has, the report names the command that draws it. The report never runs a network: pictures
are made by ``ioussl predict`` (which needs the science stack and the data), read here as files, checked
(a regular file of at most 4 MiB, PNG bytes) and embedded.
"""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ioussl import runfiles
from ioussl.registry.repo import RunRecord
from ioussl.report.tables import HELD_OUT, Report
from ioussl.runfiles import RunFileError

PREDICTIONS = "predictions"  # as ioussl.report.predict writes
MAX_PNG_BYTES = 4 << 20
SAFE_CASE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")  # case ids read from results become file names
PNG = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Picture:
    """One group's best or worst case: the picture, or the command that would draw it."""

    group: str
    which: str  # "best" or "worst"
    case: str
    score: float  # the group's mean DSC on the case
    run_id: str  # the run whose picture is shown (or should be drawn)
    png: bytes | None = None
    problem: str = ""  # why a picture that exists was not shown


def extremes(report: Report, runs: Sequence[RunRecord], per_case: Mapping[str, Mapping[str, Any]]) -> list[Picture]:
    """For each group with scored cases: its best and worst case (one entry when it has a single case).

    ``per_case``: run id -> {"val": {case: {organ: DSC}}, "test": ...} as recorded (checked here).
    """
    by_id = {run.id: run for run in runs}
    pictures = []
    for row in report.rows:
        scored = [by_id[run_id] for run_id in row.run_ids if run_id in by_id]
        cases: dict[str, list[float]] = {}
        for run in scored:
            for case, score in _case_scores((per_case.get(run.id) or {}).get(row.cases)).items():
                cases.setdefault(case, []).append(score)
        if not cases:
            continue
        means = {case: sum(v) / len(v) for case, v in cases.items()}
        ranked = sorted(means, key=lambda case: (means[case], case))
        chosen = [("best", ranked[-1])] + ([("worst", ranked[0])] if len(ranked) > 1 else [])
        order = sorted(scored, key=lambda run: -(_number(run.test_dsc if row.cases == HELD_OUT else run.dsc) or 0))
        for which, case in chosen:
            pictures.append(_find(row.group, which, case, means[case], order))
    return pictures


def _find(group: str, which: str, case: str, score: float, runs: Sequence[RunRecord]) -> Picture:
    problem = ""
    for run in runs:
        folder = Path(run.run_dir) / PREDICTIONS
        for path in sorted(folder.glob(f"{case}_z*.png"))[:1] if folder.is_dir() else []:
            try:
                data = runfiles.read_regular(path, MAX_PNG_BYTES)
            except RunFileError as exc:
                problem = str(exc)
                continue
            if data and data.startswith(PNG):
                return Picture(group, which, case, score, run.id, data)
            problem = f"{path} is not a PNG picture"
    return Picture(group, which, case, score, runs[0].id, None, problem)


def _case_scores(cases: Any) -> dict[str, float]:
    """Case -> mean of its finite organ DSCs in [0, 1], for case ids fit to name a file."""
    found = {}
    for case, organs in (cases.items() if isinstance(cases, Mapping) else ()):
        values = [v for v in (organs.values() if isinstance(organs, Mapping) else ()) if _number(v) is not None]
        if isinstance(case, str) and SAFE_CASE.fullmatch(case) and values:
            found[case] = sum(values) / len(values)
    return found


def _number(value: Any) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and 0 <= value <= 1
    return float(value) if ok else None


def render(pictures: Sequence[Picture]) -> str:
    """Figures for the pictures found, and the commands that draw the missing ones."""
    figures, missing = [], []
    for p in pictures:
        title = f"{p.group}: {p.which} case {p.case} (mean DSC {p.score:.3f})"
        if p.png is None:
            missing.append(f"<li><b>{_e(title)}</b>: <code>ioussl predict {_e(p.run_id)} {_e(p.case)}</code>"
                           + (f" ({_e(p.problem)})" if p.problem else "") + "</li>")
            continue
        figures.append(f"<figure class='wide'><img alt='{_e(title)}' src='data:image/png;base64,"
                       f"{base64.b64encode(p.png).decode('ascii')}'><figcaption><b>{_e(title)}.</b> Run "
                       f"{_e(p.run_id)}: CT, ground truth and prediction on the stored grid.</figcaption></figure>")
    notes = ("<p class='muted'>Pictures not drawn yet (each command writes into the run's predictions/ folder; "
             "then write the report again):</p><ul class='notes'>" + "".join(missing) + "</ul>") if missing else ""
    return "<div class='pictures'>" + "".join(figures) + "</div>" + notes


def _e(text: str) -> str:
    return html.escape(str(text), quote=True)


CSS = """
.pictures { display: grid; grid-template-columns: repeat(auto-fit, minmax(360px, 1fr)); gap: 14px 18px; }
.pictures figure img { image-rendering: pixelated; max-width: 760px; }
"""
