"""The 95% interval of a difference of group means, by a bootstrap that follows the study's design (numpy).

A pretrained group is a few pretrainings, each fine-tuned a few times; fine-tunes of one pretraining share
its encoder and are not independent. The no-pretraining baseline is fine-tunes of their own. A resample
draws, with replacement, as many pretrainings as the group has, then within each drawn pretraining as many
of its fine-tunes as it has; baseline runs are drawn the same way (each its own unit). Where every run of
both groups scored the same test cases (per-case scores recorded), the cases are resampled as well, the
same draw for both groups (they are paired by case), and each run's score is recomputed from its cases with
the estimator the run reports. Δ* is the resampled group mean minus the resampled baseline mean; the
interval is the 2.5th and 97.5th percentile of Δ* (Davison & Hinkley 1997, §3.8, for nested resampling).

scipy.stats.bootstrap resamples independent observations of one level; a nested design needs the draws
above, so they are written here with a seeded numpy Generator: the same inputs give the same interval.
benchmarks/bench_coverage.py measures how often the interval covers a known Δ in simulated studies.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

RESAMPLES = 4000  # Δ's percentile interval from 4,000 resamples: its ends move by < 0.1 SE between seeds
MIN_UNITS = 3  # fewer independent units (pretrainings, or baseline runs) in a group: "n too small"
BANK_FROM = 8  # units with more fine-tunes than this draw from a bank of within-unit resampled means
BANK = 512
NOMINAL_UNITS = 8  # from this many units a side the interval covers 94-95% (benchmarks/bench_coverage.py)


@dataclass(frozen=True)
class CaseScores:
    """One run's per-case scores: ``values[case, organ]`` (NaN: not scored), the run's score being the mean
    over organs of each organ's mean over cases (FLARE's summary), or ``values[case, 0]`` averaged over cases."""

    cases: tuple[str, ...]
    values: np.ndarray  # (cases, organs)


@dataclass(frozen=True)
class Design:
    """One group's scores as the design nests them: ``units[u]`` lists the scores of unit u's runs (a
    pretraining's fine-tunes, or one baseline run). ``cases[u][r]``: that run's per-case scores, or None."""

    units: tuple[tuple[float, ...], ...]
    cases: tuple[tuple[CaseScores, ...], ...] | None = None

    @property
    def runs(self) -> int:
        return sum(len(unit) for unit in self.units)

    @property
    def mean(self) -> float:
        return sum(sum(unit) for unit in self.units) / self.runs

    def unit_means(self) -> list[float]:
        return [sum(unit) / len(unit) for unit in self.units]


@dataclass(frozen=True)
class DeltaInterval:
    low: float
    high: float
    resamples: int
    cases_resampled: int  # 0: run-level resampling only


def seed_for(*names: str) -> int:
    """A seed from the identities of what is compared: the same rows give the same interval in every report."""
    digest = hashlib.sha256("\n".join(names).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def delta_interval(group: Design, baseline: Design, *, resamples: int = RESAMPLES, level: float = 0.95,
                   seed: int = 0) -> DeltaInterval | None:
    """The percentile interval of mean(group) - mean(baseline); None when either has fewer than
    :data:`MIN_UNITS` units (a percentile interval of two pretrainings covers far less than it says)."""
    if min(len(group.units), len(baseline.units)) < MIN_UNITS or resamples < 1:
        return None
    import numpy as np

    rng = np.random.default_rng(seed)
    cases = shared_cases(group, baseline)
    weights = None
    if cases:
        # The same case draw for both groups: Δ is paired by case.
        draws = rng.integers(0, len(cases), size=(resamples, len(cases)))
        weights = np.zeros((resamples, len(cases)))
        np.add.at(weights, (np.arange(resamples)[:, None], draws), 1.0)
    deltas = _resampled_means(group, rng, resamples, weights) - _resampled_means(baseline, rng, resamples, weights)
    deltas = deltas[np.isfinite(deltas)]  # a case draw in which a run scored no organ at all: left out
    if len(deltas) < resamples // 2:
        return None
    tail = (1 - level) / 2
    low, high = np.quantile(deltas, [tail, 1 - tail])
    return DeltaInterval(float(low), float(high), resamples, len(cases))


def mean_interval(design: Design, *, resamples: int = RESAMPLES, level: float = 0.95,
                  seed: int = 0) -> tuple[float, float] | None:
    """The percentile interval of the design's mean (units, then runs within them; no case resampling)."""
    if len(design.units) < 2 or resamples < 1:
        return None
    import numpy as np

    means = _resampled_means(Design(design.units), np.random.default_rng(seed), resamples, None)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def shared_cases(group: Design, baseline: Design) -> tuple[str, ...]:
    """The cases every run of both groups scored, in the same order; () where any run lacks them or differs."""
    every = [scores for design in (group, baseline) for unit in (design.cases or [None]) for scores in
             (unit if unit is not None else [None])]
    present = [scores for scores in every if scores is not None]
    if not every or len(present) < len(every):
        return ()
    first = present[0].cases
    return first if all(scores.cases == first for scores in present) else ()


def _resampled_means(design: Design, rng: np.random.Generator, resamples: int,
                     weights: np.ndarray | None) -> np.ndarray:
    """The design's mean over its runs in each resample: units drawn, runs drawn within them."""
    import numpy as np

    sizes = np.array([len(unit) for unit in design.units])
    offsets = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    if weights is None and int(sizes.max()) > BANK_FROM:
        return _banked_means(design, sizes, rng, resamples)
    if weights is None:
        scores = np.broadcast_to(np.array([v for unit in design.units for v in unit], dtype=float),
                                 (resamples, int(sizes.sum())))
    else:
        assert design.cases is not None
        scores = np.stack([case_weighted(run, weights) for unit in design.cases for run in unit], axis=1)
    units = rng.integers(0, len(sizes), size=(resamples, len(sizes)))
    widest = int(sizes.max())
    rows = np.arange(resamples)[:, None]
    if (sizes == widest).all() and resamples * len(sizes) * widest <= 4_000_000:
        # Every unit the same size (the usual grid): one draw of all runs of all resamples, no loop.
        picks = rng.integers(0, widest, size=(resamples, len(sizes) * widest)) + \
            np.repeat(offsets[units], widest, axis=1)
        return scores[rows, picks].mean(axis=1)
    total = np.zeros(resamples)
    count = np.zeros(resamples)
    for slot in range(len(sizes)):
        drawn = units[:, slot]
        size = sizes[drawn][:, None]
        picks = np.floor(rng.random((resamples, widest)) * size).astype(int) + offsets[drawn][:, None]
        inside = np.arange(widest)[None, :] < size
        total += np.where(inside, scores[rows, np.where(inside, picks, 0)], 0.0).sum(axis=1)
        count += sizes[drawn]
    return total / count


def _banked_means(design: Design, sizes: np.ndarray, rng: np.random.Generator, resamples: int) -> np.ndarray:
    """The same resampling for units of many fine-tunes (a sweep's rows pooled by ``--by``): each unit's
    within-unit resampled means are drawn once, BANK of them, and each resample picks one per drawn unit.
    Drawing every fine-tune of every resample would cost resamples x runs (4 million draws for a row of
    1,000 fine-tunes); the bank costs units x BANK x fine-tunes, for the same distribution up to Monte Carlo
    error of the within-unit part."""
    import numpy as np

    bank = np.stack([np.asarray(unit, dtype=float)[rng.integers(0, len(unit), size=(BANK, len(unit)))].mean(axis=1)
                     for unit in design.units])  # (units, BANK)
    units = rng.integers(0, len(sizes), size=(resamples, len(sizes)))
    means = bank[units, rng.integers(0, BANK, size=units.shape)]
    weights = sizes[units]  # each drawn unit weighs as many fine-tunes as it has
    return (means * weights).sum(axis=1) / weights.sum(axis=1)


def case_weighted(run: CaseScores, weights: np.ndarray) -> np.ndarray:
    """The run's score under each resample's case weights (resamples, cases): per organ the weighted mean
    over the cases that scored it, then the mean over organs (organs no drawn case scored are left out)."""
    import numpy as np

    present = ~np.isnan(run.values)
    sums = weights @ np.where(present, run.values, 0.0)
    counts = weights @ present.astype(float)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # no organ scored in a draw: NaN, left out by the caller
        organ_means = sums / counts
        return np.nanmean(organ_means, axis=1)


def run_score(run: CaseScores) -> float:
    """The run's score from its cases (weights all 1): what the run itself reports."""
    import numpy as np

    return float(case_weighted(run, np.ones((1, len(run.cases))))[0])
