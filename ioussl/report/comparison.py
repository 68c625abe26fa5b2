"""A setting against its baseline as the design allows: Δ, its bootstrap interval, and one named test (pure).

Fine-tunes of one pretraining share its encoder: they are not independent, and a fine-tune's seed number
says nothing about which baseline run it resembles. So the units of a pretrained group are its pretrainings
(the mean of each one's fine-tunes), and each baseline fine-tune is a unit of its own. The tests:

- ``welch`` (the default): Welch's t-test of the pretraining means against the baseline runs
  (scipy.stats.ttest_ind(equal_var=False) on those means);
- ``cases``: where both groups scored the same test cases, a paired t-test over the cases of the groups'
  per-case means (scipy.stats.ttest_rel);
- ``wilcoxon``: the same pairs, Wilcoxon's signed-rank test (scipy.stats.wilcoxon, two-sided).

Imported results whose nesting is unknown (the thesis' Table 4.2 never says which DSC belongs to which
pretraining) are compared unpaired, each fine-tune a unit, and the row says that the pairing is unknown.
A row whose test cannot run (too few units, different cases) falls back to ``welch`` and says so.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ioussl.report import bootstrap, statistics
from ioussl.report.bootstrap import CaseScores, Design

TESTS = ("welch", "cases", "wilcoxon")
NESTED, UNKNOWN = "nested", "unknown"  # how a row's fine-tunes are known to sit in pretrainings


@dataclass(frozen=True)
class Member:
    """What the comparison needs of one scored fine-tune."""

    run_id: str
    value: float
    unit: str  # its pretraining's run id (a baseline run: its own id)
    imported: bool = False  # imported without a known pretraining (its nesting unknown): compared unpaired
    cases: CaseScores | None = None


def design_of(members: Sequence[Member], pairing: str) -> Design:
    """Members nested in their units, or each a unit of its own where the pairing is unknown."""
    units: dict[str, list[Member]] = {}
    for member in members:
        units.setdefault(member.unit if pairing == NESTED else member.run_id, []).append(member)
    have_cases = all(m.cases is not None for m in members)
    return Design(tuple(tuple(m.value for m in unit) for unit in units.values()),
                  tuple(tuple(m.cases for m in unit) for unit in units.values()) if have_cases else None)  # type: ignore[misc]


def pairing_of(members: Sequence[Member]) -> str:
    """UNKNOWN where any run was imported (its nesting in pretrainings is not recorded), else NESTED."""
    return UNKNOWN if any(m.imported for m in members) else NESTED


def compare(members: Sequence[Member], baseline: Sequence[Member], *, test: str = "welch",
            resamples: int = bootstrap.RESAMPLES, nested_unit: str = "pretraining") -> dict[str, Any]:
    """The comparison fields of a report row (GroupRow's ``delta``, ``delta_ci``, ``ci_note``, ``test``,
    ``p``, ``pairing``, ``units``)."""
    if test not in TESTS:
        raise ValueError(f"unknown test {test!r}; valid: {', '.join(TESTS)}")
    pairing = UNKNOWN if UNKNOWN in (pairing_of(members), pairing_of(baseline)) else NESTED
    group, base = design_of(members, pairing), design_of(baseline, pairing)
    delta = group.mean - base.mean
    seed = bootstrap.seed_for(*sorted(m.run_id for m in members), "|", *sorted(m.run_id for m in baseline))
    # Independent units: pretrainings, whether or not it is known which fine-tune belongs to which.
    units = len({m.unit for m in members})
    base_units = len({m.unit for m in baseline})
    enough = min(units, base_units) >= bootstrap.MIN_UNITS
    interval = bootstrap.delta_interval(group, base, resamples=resamples, seed=seed) if enough else None
    nested = any(m.unit != m.run_id for m in members)
    # A pretraining with one fine-tune: its mean is that run's score, and the test is over runs.
    unit_word = nested_unit if pairing == NESTED and any(len(unit) > 1 for unit in group.units) else "run"
    note = "" if interval is not None else (
        f"n too small ({units} {nested_unit if nested else 'run'}(s) vs {base_units} baseline run(s); "
        f"an interval needs {bootstrap.MIN_UNITS} a side)")
    name, p = _test(group, base, test, unit_word, pairing)
    return {"delta": delta, "delta_ci": None if interval is None else (interval.low, interval.high),
            "ci_note": note, "resamples": interval.resamples if interval else 0,
            "cases_resampled": interval.cases_resampled if interval else 0,
            "test": name, "p": p, "pairing": pairing, "units": units, "baseline_units": base_units}


def _test(group: Design, base: Design, test: str, unit_word: str, pairing: str) -> tuple[str, float | None]:
    """The row's test, named short enough for an 80-column terminal: "Welch (pretrainings)", "Welch (runs)",
    "Welch (runs, pairing unknown)", "paired t by case (20)", "Wilcoxon by case (20)"."""
    fallback = ""
    if test in ("cases", "wilcoxon"):
        cases = bootstrap.shared_cases(group, base)
        if len(cases) >= 2:
            pairs = [(x, y) for x, y in zip(case_means(group), case_means(base), strict=True)
                     if math.isfinite(x) and math.isfinite(y)]  # a case no organ of which was scored: left out
            a, b = [x for x, _ in pairs], [y for _, y in pairs]
            if test == "cases":
                return f"paired t by case ({len(a)})", statistics.paired_t_pvalue(a, b)
            return f"Wilcoxon by case ({len(a)})", statistics.wilcoxon_pvalue(a, b)
        fallback = ", no shared cases"
    what = "pretrainings" if unit_word != "run" else "runs"
    unknown = ", pairing unknown" if pairing == UNKNOWN else ""
    return f"Welch ({what}{unknown}{fallback})", statistics.welch_t_pvalue(group.unit_means(), base.unit_means())


def case_means(design: Design) -> list[float]:
    """Per case, the mean over the design's runs of the run's score on that case (mean over its organs)."""
    import numpy as np

    assert design.cases is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a case none of whose organs was scored: NaN
        per_run = [np.nanmean(run.values, axis=1) for unit in design.cases for run in unit]
        return [float(v) for v in np.nanmean(per_run, axis=0)]


def case_scores_of(per_case: Mapping[str, Mapping[str, Any]], measure: str) -> CaseScores | None:
    """FLARE's ``per_case`` section ({case: {organ: {"dsc": x, "nsd": y}}}) as CaseScores of one measure."""
    import numpy as np

    cases = tuple(sorted(per_case))
    organs = sorted({organ for scores in per_case.values() for organ in scores})
    if not cases or not organs:
        return None
    values = np.full((len(cases), len(organs)), np.nan)
    for i, case in enumerate(cases):
        for j, organ in enumerate(organs):
            value = (per_case[case].get(organ) or {}).get(measure)
            if value is not None:
                values[i, j] = float(value)
    if np.isnan(values).all():  # nothing scored: no case-level information
        return None
    return CaseScores(cases, values)
