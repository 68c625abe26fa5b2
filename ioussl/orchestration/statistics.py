"""The report's statistics: t confidence intervals, tests against the baseline, Holm's correction (pure).

scipy.stats supplies the distributions and the tests; it is imported inside the functions that need it, so
``ioussl --help`` and ``status`` do not pay for it. Every function takes plain numbers and returns ``None``
where the statistic is undefined (too few values, no spread), which the report shows as "-".

Which test reproduces which number, on the thesis' Table 4.2 (``jobs/thesis-table-4.2.csv``):
:func:`paired_t_pvalue` over fine-tunes matched by seed gives [0.3, 0.6] p = 0.022 and random crop p = 0.048;
:func:`welch_t_pvalue` (unpaired, unequal variances, against all four baseline runs) gives [0.3, 0.6]
p = 0.022 and every other setting p >= 0.058 (tests/orchestration/test_statistics.py).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence


def t_quantile(df: int, level: float = 0.95) -> float:
    """The two-sided ``level`` quantile of Student's t with ``df`` degrees of freedom (df >= 1)."""
    from scipy import stats

    if df < 1:
        raise ValueError(f"a t quantile needs df >= 1, got {df}")
    return float(stats.t.ppf(0.5 + level / 2, df))


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float] | None:
    """The t confidence interval of the mean (sample std, n - 1 degrees of freedom); None below 2 values."""
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    sample_std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(n - 1, level) * sample_std / math.sqrt(n)
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
    from scipy import stats  # here, not at the top: only a report with results pays for the import

    return float(stats.ttest_rel(values, matched).pvalue)


def welch_t_pvalue(values: Sequence[float], baseline: Sequence[float]) -> float | None:
    """Two-sided Welch t-test (unpaired, unequal variances); None below 2 values a side or without spread."""
    if len(values) < 2 or len(baseline) < 2 or (_no_spread(values) and _no_spread(baseline)):
        return None
    from scipy import stats

    with warnings.catch_warnings():  # one side without spread is a valid input, not a loss of precision
        warnings.filterwarnings("ignore", "Precision loss", RuntimeWarning)
        return float(stats.ttest_ind(values, baseline, equal_var=False).pvalue)


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
