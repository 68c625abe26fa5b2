"""How often the report's 95% interval of Δ covers the true Δ, on simulated nested studies (issue 21).

Each simulated study has a pretrained setting of P pretrainings x F fine-tunes and a baseline of B runs, DSCs
around 0.85 with a known Δ = 0.01: a pretraining's effect ~ N(0, 0.006), a fine-tune's ~ N(0, 0.008), a
baseline run's ~ N(0, 0.008) (the thesis' spreads, Table 4.2). With cases, each run scores 20 test cases: a
case's difficulty ~ N(0, 0.05) shared by every run, a case x pretraining interaction ~ N(0, 0.01) and noise
~ N(0, 0.02) per run and case; the true Δ is then the expected difference over new cases, still 0.01.
The interval is ``ioussl.report.bootstrap.delta_interval`` as the report computes it (4,000 resamples).
Target: 93-97% coverage over 1,000 studies (seeded: the same numbers every run).

    python benchmarks/bench_coverage.py [--studies 1000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from ioussl.report import bootstrap
from ioussl.report.bootstrap import CaseScores, Design

DELTA = 0.01
DESIGNS = [  # (pretrainings, fine-tunes each, baseline runs, test cases)
    (10, 2, 20, 0), (8, 2, 8, 0), (5, 2, 10, 0), (5, 2, 10, 20), (3, 2, 6, 0), (2, 2, 4, 0),
]


def simulate(rng: np.random.Generator, pretrainings: int, finetunes: int, baseline: int,
             cases: int) -> tuple[Design, Design]:
    """One study's setting and baseline, nested as the report nests them."""
    if not cases:
        effects = rng.normal(0, 0.006, pretrainings)
        units = tuple(tuple(0.85 + DELTA + a + rng.normal(0, 0.008, finetunes)) for a in effects)
        return Design(units), Design(tuple((v,) for v in 0.85 + rng.normal(0, 0.008, baseline)))
    names = tuple(f"case{k}" for k in range(cases))
    difficulty = rng.normal(0, 0.05, cases)

    def run(level: float, interaction: np.ndarray) -> CaseScores:
        return CaseScores(names, (level + difficulty + interaction + rng.normal(0, 0.02, cases))[:, None])

    setting = []
    for effect in rng.normal(0, 0.006, pretrainings):
        interaction = rng.normal(0, 0.01, cases)
        setting.append(tuple(run(0.85 + DELTA + effect + e, interaction) for e in rng.normal(0, 0.008, finetunes)))
    base = [(run(0.85 + e, np.zeros(cases)),) for e in rng.normal(0, 0.008, baseline)]

    def design(units: list[tuple[CaseScores, ...]]) -> Design:
        return Design(tuple(tuple(bootstrap.run_score(r) for r in unit) for unit in units), tuple(units))

    return design(setting), design(base)


def coverage(design: tuple[int, int, int, int], studies: int, seed: int = 2026) -> tuple[float, int]:
    """Share of ``studies`` whose interval covers DELTA, and how many had an interval at all."""
    rng = np.random.default_rng(seed)
    covered = given = 0
    for study in range(studies):
        setting, base = simulate(rng, *design)
        interval = bootstrap.delta_interval(setting, base, seed=study)
        if interval is None:
            continue
        given += 1
        covered += interval.low <= DELTA <= interval.high
    return (covered / given if given else float("nan")), given


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=1000)
    args = parser.parse_args()
    for design in DESIGNS:
        start = time.perf_counter()
        share, given = coverage(design, args.studies)
        pretrainings, finetunes, baseline, cases = design
        what = f"{pretrainings} pretrainings x {finetunes} fine-tunes vs {baseline} baseline runs" + \
            (f", {cases} test cases" if cases else "")
        shown = f"{share:.1%} of {given}" if given else f"no interval (n too small: < {bootstrap.MIN_UNITS} units)"
        print(f"{what}: covered {shown} ({time.perf_counter() - start:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
