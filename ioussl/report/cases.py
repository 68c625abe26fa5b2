"""Case- and organ-level scores from the recorded results: FLARE's per-case, per-organ DSC and NSD (pure; the
registry reads the results).

A fine-tune's ``result.json`` keeps, under ``flare``, each case's and organ's DSC and NSD (checked when it
was ingested: numbers in [0, 1] or null). They feed the report's case resampling and case tests, the
``--organs`` table, ``ioussl export cases`` and ``ioussl.api.cases``. Read back from the registry they are
input again: anything that is not a score in [0, 1] is left out, never trusted.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ioussl.registry import repo
from ioussl.report import bootstrap, comparison
from ioussl.report.bootstrap import CaseScores

MEASURES = {"flare_dsc": "dsc", "flare_nsd": "nsd"}  # report metric -> FLARE's key


@dataclass(frozen=True)
class CaseRow:
    """One organ of one case of one run (``ioussl export cases``)."""

    run_id: str
    part: str  # "val" or "test"
    case: str
    organ: str
    dsc: float | None
    nsd: float | None


def flare_sections(session: Any, run_ids: Iterable[str]) -> dict[str, Mapping[str, Any]]:
    """Run id -> its result's ``flare`` section, for the runs that recorded one."""
    found: dict[str, Mapping[str, Any]] = {}
    for run_id, payload in repo.result_payloads(session, list(run_ids)):
        flare = payload.get("flare") if isinstance(payload, Mapping) else None
        if isinstance(flare, Mapping):
            found[run_id] = flare
    return found


def pairing_known(session: Any, run_ids: Sequence[str]) -> set[str]:
    """The imported runs whose import said their pretraining is known (``pairing = known`` in the CSV)."""
    return repo.pairing_known(session, run_ids)


def numerics(session: Any, run_ids: Sequence[str]) -> dict[str, int]:
    """"autocast torch.bfloat16, TF32 on, compiled" -> runs, from each result's provenance (issue 21.8);
    results recorded before the numerics were (no ``tf32`` key) say "not recorded"."""
    counts: dict[str, int] = {}
    for device in repo.result_devices(session, run_ids):
        key = _numerics_text(device)
        counts[key] = counts.get(key, 0) + 1
    return counts


def _numerics_text(device: Any) -> str:
    if not isinstance(device, Mapping) or not isinstance(device.get("tf32"), bool):
        return "precision, TF32 and compile not recorded"
    autocast = device.get("autocast")
    precision = {"torch.float16": "fp16 autocast", "torch.bfloat16": "bf16 autocast"}.get(str(autocast), "fp32")
    return (f"{precision}, TF32 {'on' if device['tf32'] else 'off'}, "
            f"{'compiled' if device.get('compile') is True else 'eager'} on {str(device.get('device_name'))[:64]}")


def case_rows(run_id: str, flare: Mapping[str, Any]) -> list[CaseRow]:
    """The run's per-case, per-organ scores, in case then organ order (invalid entries left out)."""
    part = flare.get("part") if flare.get("part") in ("val", "test") else "?"
    per_case = flare.get("per_case")
    rows = []
    for case, organs in sorted(per_case.items()) if isinstance(per_case, Mapping) else ():
        for organ, pair in sorted(organs.items()) if isinstance(organs, Mapping) else ():
            if isinstance(pair, Mapping):
                rows.append(CaseRow(run_id, str(part), str(case), str(organ), _score(pair.get("dsc")),
                                    _score(pair.get("nsd"))))
    return rows


def case_table(sections: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, CaseScores]]:
    """Run id -> report metric -> its CaseScores (what build_report's ``case_scores`` takes)."""
    table: dict[str, dict[str, CaseScores]] = {}
    for run_id, flare in sections.items():
        per_case: dict[str, dict[str, dict[str, float | None]]] = {}
        for row in case_rows(run_id, flare):
            per_case.setdefault(row.case, {})[row.organ] = {"dsc": row.dsc, "nsd": row.nsd}
        scores = {metric: comparison.case_scores_of(per_case, key) for metric, key in MEASURES.items()}
        table[run_id] = {metric: value for metric, value in scores.items() if value is not None}
    return table


def _score(value: Any) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and 0 <= value <= 1
    return float(value) if ok else None


# ---- the --organs table ----

@dataclass(frozen=True)
class OrganRow:
    group: str
    organ: str
    measure: str  # "DSC" or "NSD"
    mean: float | None
    ci: tuple[float, float] | None  # nested bootstrap over the group's pretrainings and fine-tunes
    n: int  # runs that scored the organ


def organ_rows(groups: Sequence[tuple[str, Sequence[tuple[str, str]]]],
               sections: Mapping[str, Mapping[str, Any]]) -> list[OrganRow]:
    """Per group (label, [(run id, unit)]), per organ, per measure: the mean over the group's runs of the
    run's organ score (FLARE's per-organ mean over cases) and its nested-bootstrap interval."""
    out = []
    for label, runs in groups:
        organs: dict[tuple[str, str], list[tuple[str, str, float]]] = {}
        for run_id, unit in runs:
            per_organ = (sections.get(run_id) or {}).get("per_organ")
            for organ, pair in sorted(per_organ.items()) if isinstance(per_organ, Mapping) else ():
                for key, measure in (("dsc", "DSC"), ("nsd", "NSD")):
                    value = _score(pair.get(key)) if isinstance(pair, Mapping) else None
                    if value is not None:
                        organs.setdefault((str(organ), measure), []).append((run_id, unit, value))
        for (organ, measure), scored in sorted(organs.items()):
            members = [comparison.Member(run_id, value, unit) for run_id, unit, value in scored]
            design = comparison.design_of(members, comparison.NESTED)
            enough = len({m.unit for m in members}) >= bootstrap.MIN_UNITS
            ci = bootstrap.mean_interval(design, seed=bootstrap.seed_for(label, organ, measure)) if enough else None
            out.append(OrganRow(label, organ, measure, design.mean, ci, len(members)))
    return out


def organ_table(rows: Sequence[OrganRow]) -> tuple[list[str], list[list[str]]]:
    """Header and cells: one line per group and organ, DSC and NSD side by side, each "mean [low, high]"."""
    cells: dict[tuple[str, str], dict[str, str]] = {}
    for row in rows:
        interval = f"[{row.ci[0]:.3f}, {row.ci[1]:.3f}]" if row.ci else "n too small"
        text = "-" if row.mean is None else f"{row.mean:.3f} {interval}"
        cells.setdefault((row.group, row.organ), {"n": str(row.n)})[row.measure] = text
    head = ["group", "organ", "DSC (95% CI)", "NSD (95% CI)", "n"]
    return head, [[group, organ, got.get("DSC", "-"), got.get("NSD", "-"), got["n"]]
                  for (group, organ), got in cells.items()]
