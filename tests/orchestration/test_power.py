"""The dry run's detectable Δ at 80% power (issue 21.5): the power function against a simulation of the very
test the report runs, the solved Δ against the power function, and the plan command's line."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from typer.testing import CliRunner

from ioussl.cli import app
from ioussl.plan import power


def test_welch_power_is_the_rejection_rate_of_welchs_test():
    rng = np.random.default_rng(4)
    sd, n, baseline_sd, m, delta = 0.01, 5, 0.006, 8, 0.012
    a = rng.normal(delta, sd, (20_000, n))
    b = rng.normal(0.0, baseline_sd, (20_000, m))
    rejected = stats.ttest_ind(a, b, axis=1, equal_var=False).pvalue < 0.05
    assert power.welch_power(delta, sd, n, baseline_sd, m) == pytest.approx(rejected.mean(), abs=0.01)


def test_the_detectable_delta_has_80_percent_power_and_shrinks_with_more_seeds():
    few = power.detectable_delta(0.0116, 2, 0.0053, 4)
    more = power.detectable_delta(0.0116, 5, 0.0053, 10)
    assert power.welch_power(few, 0.0116, 2, 0.0053, 4) == pytest.approx(0.8, abs=1e-9)
    assert power.welch_power(more, 0.0116, 5, 0.0053, 10) == pytest.approx(0.8, abs=1e-9)
    assert more < few
    # large samples: the normal approximation (z_0.975 + z_0.8) x SE
    se = np.sqrt(0.01**2 / 200 + 0.01**2 / 200)
    assert power.detectable_delta(0.01, 200, 0.01, 200) == pytest.approx(2.8016 * se, rel=0.01)
    assert power.detectable_delta(0.01, 1, 0.01, 4) is None  # one pretraining: no test


def test_plan_dry_run_states_the_detectable_delta(repo_root, tmp_path):
    db = str(tmp_path / "none.db")
    result = CliRunner().invoke(app, ["plan", "grid", str(repo_root / "jobs" / "thesis.toml"), "--dry-run",
                                      "--no-check-data", "--db", db])
    assert result.exit_code == 0, result.output
    expected = power.detectable_delta(0.0116, 2, 0.0053, 4)
    assert "detectable Δ at 80% power: 2 pretraining(s) per setting vs 4 baseline run(s)" in result.stdout
    assert f"{expected:.4f} at alpha 0.05" in result.stdout and "alpha 0.05/5" in result.stdout
    given = CliRunner().invoke(app, ["plan", "grid", str(repo_root / "jobs" / "thesis.toml"), "--dry-run",
                                     "--no-check-data", "--db", db, "--sd", "0.02,0.01"])
    assert f"{power.detectable_delta(0.02, 2, 0.01, 4):.4f} at alpha 0.05" in given.stdout
    for bad in (["--sd", "x"], ["--sd", "2"]):
        refused = CliRunner().invoke(app, ["plan", "grid", str(repo_root / "jobs" / "thesis.toml"), "--dry-run",
                                           "--no-check-data", "--db", db, *bad])
        assert refused.exit_code != 0 and "--sd" in refused.output and "Traceback" not in refused.output
    assert not (tmp_path / "none.db").exists()


def test_spreads_from_an_earlier_study(repo_root, db):
    from ioussl.plan.importing import import_results
    from ioussl.registry import opened, repo

    import_results(repo_root / "jobs" / "thesis.toml", repo_root / "jobs" / "thesis-table-4.2.csv", db,
                   source="thesis Table 4.2")
    with opened(db) as registry, registry.session(write=False) as session:
        sd, baseline_sd, units, baseline_units = power.spreads_from(repo.list_runs(session, study="thesis"))
    assert baseline_sd == pytest.approx(np.std([0.842, 0.848, 0.846, 0.836], ddof=1), rel=1e-12)
    assert (units, baseline_units) == (10, 4)  # 5 settings x 2 pretrainings (their imported means)
    result = CliRunner().invoke(app, ["plan", "grid", str(repo_root / "jobs" / "thesis.toml"), "--dry-run",
                                      "--no-check-data", "--db", db, "--sd-from", "thesis"])
    assert result.exit_code == 0 and "(study thesis: 10 pretrainings, 4 baseline runs)" in result.stdout
