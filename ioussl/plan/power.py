"""The smallest difference a planned study can detect, before it spends GPU-hours (pure; scipy lazily).

The report tests each setting against the baseline with Welch's t-test on pretraining means against
baseline runs (ioussl/report/comparison.py). With ``n`` pretrainings per setting of standard deviation
``sd`` (of a pretraining's mean DSC) and ``m`` baseline runs of standard deviation ``baseline_sd``, the
test's statistic is noncentral t with noncentrality Δ / SE, SE = sqrt(sd²/n + baseline_sd²/m), on the
Welch-Satterthwaite degrees of freedom; the detectable Δ is the one at which the two-sided test at ``alpha``
rejects with probability ``power`` (scipy.stats.nct; solved with scipy.optimize.brentq).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ioussl.plan.expand import BASELINE_GROUP

if TYPE_CHECKING:
    from ioussl.registry.repo import RunRecord

POWER = 0.8
ALPHA = 0.05


@dataclass(frozen=True)
class Detectable:
    delta: float | None  # None: fewer than 2 units a side, no test can run
    delta_holm: float | None  # at alpha / settings: what Holm asks of the smallest p of the study
    units: int
    baseline_units: int
    sd: float
    baseline_sd: float
    settings: int
    source: str  # where the spreads come from

    def line(self) -> str:
        head = (f"detectable Δ at {POWER:.0%} power: {self.units} pretraining(s) per setting vs "
                f"{self.baseline_units} baseline run(s), SD {self.sd:.4f} / {self.baseline_sd:.4f} ({self.source})")
        if self.delta is None:
            return f"{head}: none (Welch's test needs 2 units a side)"
        holm = "" if self.settings <= 1 or self.delta_holm is None else \
            f"; {self.delta_holm:.4f} at alpha {ALPHA:g}/{self.settings} (Holm's bar for the smallest p)"
        return f"{head}: {self.delta:.4f} at alpha {ALPHA:g}{holm}"


def welch_power(delta: float, sd: float, n: int, baseline_sd: float, m: int, alpha: float = ALPHA) -> float:
    """Power of the two-sided Welch t-test at true difference ``delta``."""
    from scipy import stats

    var_a, var_b = sd**2 / n, baseline_sd**2 / m
    se = math.sqrt(var_a + var_b)
    df = (var_a + var_b) ** 2 / (var_a**2 / (n - 1) + var_b**2 / (m - 1))
    critical = stats.t.ppf(1 - alpha / 2, df)
    shift = delta / se
    upper = float(stats.nct.sf(critical, df, shift))
    if math.isnan(upper):  # scipy's noncentral t loses the far tail at few degrees of freedom
        upper = 1.0 - float(stats.nct.cdf(critical, df, shift))
    lower = float(stats.nct.cdf(-critical, df, shift))  # rejecting on the wrong side: negligible beyond tiny Δ
    return upper + (0.0 if math.isnan(lower) else lower)


def detectable_delta(sd: float, n: int, baseline_sd: float, m: int, *, alpha: float = ALPHA,
                     power: float = POWER) -> float | None:
    """The Δ > 0 at which :func:`welch_power` equals ``power``; None below 2 units a side or without spread."""
    if n < 2 or m < 2 or not (sd > 0 or baseline_sd > 0):
        return None
    from scipy import optimize

    se = math.sqrt(sd**2 / n + baseline_sd**2 / m)
    high = se
    while welch_power(high, sd, n, baseline_sd, m, alpha) < power:
        high *= 2
    return float(optimize.brentq(lambda d: welch_power(d, sd, n, baseline_sd, m, alpha) - power, 0.0, high,
                                 xtol=1e-12 * max(1.0, high)))


def detectable(sd: float, baseline_sd: float, units: int, baseline_units: int, settings: int,
               source: str) -> Detectable:
    return Detectable(detectable_delta(sd, units, baseline_sd, baseline_units),
                      detectable_delta(sd, units, baseline_sd, baseline_units, alpha=ALPHA / max(1, settings)),
                      units, baseline_units, sd, baseline_sd, settings, source)


def spreads_from(records: Sequence[RunRecord]) -> tuple[float, float, int, int] | None:
    """An earlier study's spreads: the pooled SD of pretraining means within each setting, and of baseline
    runs (per-slice DSC as reported: ``test_dsc`` where recorded, else ``dsc``), with the units each rests
    on; None where either has fewer than 2 units in some group."""
    settings: dict[tuple[str, str], dict[str, list[float]]] = {}
    for record in records:
        value = record.test_dsc if record.test_dsc is not None else record.dsc
        if record.stage != "finetune" or value is None:
            continue
        where = (record.group, json.dumps(dict(record.point), sort_keys=True, default=str))
        unit = record.parent_id or record.id
        settings.setdefault(where, {}).setdefault(unit, []).append(float(value))
    pretrained = [[sum(v) / len(v) for v in units.values()] for (group, _), units in settings.items()
                  if group != BASELINE_GROUP]
    baseline = [[v for values in units.values() for v in values] for (group, _), units in settings.items()
                if group == BASELINE_GROUP]
    pooled = [_pooled_sd(samples) for samples in (pretrained, baseline)]
    if pooled[0] is None or pooled[1] is None:
        return None
    return pooled[0][0], pooled[1][0], pooled[0][1], pooled[1][1]


def _pooled_sd(samples: Sequence[Sequence[float]]) -> tuple[float, int] | None:
    """sqrt(sum (n_i - 1) s_i^2 / sum (n_i - 1)) over samples of 2 or more, and how many values it used."""
    used = [s for s in samples if len(s) >= 2]
    dof = sum(len(s) - 1 for s in used)
    if not dof:
        return None
    squares = sum(sum((v - sum(s) / len(s)) ** 2 for v in s) for s in used)
    return math.sqrt(squares / dof), sum(len(s) for s in used)
