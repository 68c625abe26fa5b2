"""The report's statistics: t confidence intervals, tests against the baseline, Holm's correction (pure).

scipy supplies Student's t distribution (``scipy.special.stdtr`` and ``stdtrit``, its CDF and inverse); the
statistics are the textbook ones that ``scipy.stats.ttest_rel``, ``ttest_ind(equal_var=False)`` and
``t.interval`` compute, and ``tests/orchestration/test_statistics.py`` checks them against those functions.
scipy.stats itself is not used here: its import costs three times scipy.special's, and each of its tests about
a millisecond a call, which a sweep's report of thousands of rows cannot pay (docs/architecture.md).
scipy is imported inside the functions that need it, so ``ioussl --help`` and ``status`` do not pay for it.
Every function takes plain numbers and returns ``None`` where the statistic is undefined (too few values, no
spread), which the report shows as "-".

Which test reproduces which number, on the thesis' Table 4.2 (``jobs/thesis-table-4.2.csv``):
:func:`paired_t_pvalue` over fine-tunes matched by seed gives [0.3, 0.6] p = 0.022 and random crop p = 0.048;
:func:`welch_t_pvalue` (unpaired, unequal variances, against all four baseline runs) gives [0.3, 0.6]
p = 0.022 and every other setting p >= 0.058 (tests/orchestration/test_statistics.py).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence


@functools.lru_cache(maxsize=512)  # a sweep's report asks for few distinct df, thousands of times
def t_quantile(df: int, level: float = 0.95) -> float:
    """The two-sided ``level`` quantile of Student's t with ``df`` degrees of freedom (df >= 1)."""
    if df < 1:
        raise ValueError(f"a t quantile needs df >= 1, got {df}")
    from scipy import special  # here, not at the top: only a report with results pays for the import

    return float(special.stdtrit(df, 0.5 + level / 2))


def _two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` (possibly fractional: Welch) degrees of freedom."""
    from scipy import special

    return float(min(1.0, 2.0 * special.stdtr(df, -abs(t))))


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float] | None:
    """The t confidence interval of the mean (sample std, n - 1 degrees of freedom); None below 2 values."""
    n = len(values)
    if n < 2:
        return None
    mean, variance = _mean_var(values)
    half = t_quantile(n - 1, level) * math.sqrt(variance / n)
    return mean - half, mean + half


def paired_t_pvalue(values: Sequence[float], matched: Sequence[float]) -> float | None:
    """Two-sided paired t-test of ``values`` against ``matched`` (same length, pair i = same fine-tune seed).

    None with fewer than 2 pairs or when every difference is the same (t is undefined without spread).
    """
    if len(values) != len(matched):
        raise ValueError(f"paired test: {len(values)} values against {len(matched)} matched ones")
    differences = [a - b for a, b in zip(values, matched, strict=True)]
    if len(differences) < 2 or _no_spread(differences):
        return None
    n = len(differences)
    mean, variance = _mean_var(differences)
    return _two_sided_p(mean / math.sqrt(variance / n), n - 1)


def welch_t_pvalue(values: Sequence[float], baseline: Sequence[float]) -> float | None:
    """Two-sided Welch t-test (unpaired, unequal variances); None below 2 values a side or without spread."""
    if len(values) < 2 or len(baseline) < 2 or (_no_spread(values) and _no_spread(baseline)):
        return None
    (mean_a, var_a), (mean_b, var_b) = _mean_var(values), _mean_var(baseline)
    se_a, se_b = var_a / len(values), var_b / len(baseline)
    # Welch-Satterthwaite degrees of freedom
    df = (se_a + se_b) ** 2 / (se_a**2 / (len(values) - 1) + se_b**2 / (len(baseline) - 1))
    return _two_sided_p((mean_a - mean_b) / math.sqrt(se_a + se_b), df)


def _mean_var(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample variance (n - 1)."""
    mean = sum(values) / len(values)
    return mean, sum((v - mean) ** 2 for v in values) / (len(values) - 1)


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment over the p-values given (None: not tested, stays None, not counted).

    The k-th smallest of m p-values becomes max over j <= k of min(1, (m - j + 1) p_(j)); rejecting where the
    adjusted value is below alpha controls the family-wise error rate at alpha (Holm 1979).
    """
    tested = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    adjusted: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        adjusted[i] = running
    return adjusted


def _no_spread(values: Sequence[float]) -> bool:
    """All values equal up to float rounding (a t statistic would divide by zero)."""
    return max(values) - min(values) <= 1e-12 * max(1.0, max(abs(v) for v in values))


def wilcoxon_pvalue(values: Sequence[float], matched: Sequence[float]) -> float | None:
    """Two-sided Wilcoxon signed-rank test of ``values`` against ``matched`` (pairs: the same case), as
    scipy.stats.wilcoxon computes it (zero differences dropped, exact distribution for small samples);
    None below 2 pairs or where every difference is zero."""
    if len(values) != len(matched):
        raise ValueError(f"signed-rank test: {len(values)} values against {len(matched)} matched ones")
    differences = [a - b for a, b in zip(values, matched, strict=True)]
    if len(differences) < 2 or all(abs(d) <= 1e-12 for d in differences):
        return None
    from scipy import stats  # only a report asking for this test pays scipy.stats' import

    return float(stats.wilcoxon(values, matched).pvalue)
