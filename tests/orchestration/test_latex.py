"""The report's LaTeX table compiles with a real LaTeX engine (pdflatex, Debian's texlive-latex-base).

Without pdflatex the test is skipped with the reason, unless IOUSSL_REQUIRE_SERVICES=1 (set by .ci/run,
which installs it through scripts/install-test-packages.sh): then a missing engine is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from ioussl.plan.importing import import_results
from ioussl.report.service import report_study
from ioussl.report.tables import latex_cell, to_latex


def _pdflatex() -> str:
    path = shutil.which("pdflatex")
    if path is None:
        reason = "pdflatex not found: run scripts/install-test-packages.sh (apt texlive-latex-base)"
        if os.environ.get("IOUSSL_REQUIRE_SERVICES") == "1":
            pytest.fail(f"IOUSSL_REQUIRE_SERVICES=1 but {reason}")
        pytest.skip(reason)
    return path


def test_cells_escape_specials_and_brace_a_leading_bracket():
    assert latex_cell("[0, 0]") == "{[0, 0]}"  # not read as \\[<length>] after the previous row
    assert latex_cell("0.853 ± 0.002") == r"0.853 $\pm$ 0.002"
    assert latex_cell("paired Δ (n)") == r"paired $\Delta$ (n)"
    assert latex_cell("95% CI") == r"95\% CI"
    assert latex_cell(r"a_b & c$ #{x}") == r"a\_b \& c\$ \#\{x\}"


def test_thesis_table_compiles_with_pdflatex(repo_root, db, tmp_path):
    pdflatex = _pdflatex()
    import_results(repo_root / "jobs" / "thesis.toml", repo_root / "jobs" / "thesis-table-4.2.csv", db,
                   source="thesis Table 4.2")
    table = to_latex(report_study(db, "thesis").report)
    assert "±" not in table and "Δ" not in table  # both as math, in the header too
    assert "\\\\\n{[0, 0]}" in table  # the row that broke it: "[0, 0]" right after a row end
    document = tmp_path / "table.tex"
    document.write_text("\\documentclass{article}\n"
                        "\\begin{document}\n" + table + "\\end{document}\n")
    done = subprocess.run([pdflatex, "-interaction=nonstopmode", "-halt-on-error", document.name],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    log = (tmp_path / "table.log").read_text(errors="replace") if (tmp_path / "table.log").exists() else ""
    assert done.returncode == 0, done.stdout[-3000:]
    assert (tmp_path / "table.pdf").stat().st_size > 1000
    assert "Missing character" not in log and "Illegal unit" not in log


def test_a_held_out_table_with_flare_columns_and_tiny_p_compiles(repo_root, db, tmp_path):
    from ioussl.plan.service import plan_grid
    from ioussl.report.tables import build_report
    from ioussl.track.listing import status_rows

    pdflatex = _pdflatex()
    plan_grid(repo_root / "jobs" / "thesis-test-split.toml", db, check_data=False)

    def scored(r):  # type: ignore[no-untyped-def]
        test = 0.8 + (0.05 if r.group == "[0.3, 0.6]" else 0.0) + 0.001 * r.seed + 0.002 * (r.pretrain_seed or 0)
        return r._replace(dsc=0.9, test_dsc=test, flare_dsc=0.7, flare_nsd=0.6, flare_part="test")

    records = [scored(r) if r.stage == "finetune" else r for r in status_rows(db)]
    table = to_latex(build_report(records, "thesis-test-split"))
    assert "$<$0.001" in table and "held-out test" in table and "0.700 (test, n=4)" in table
    (tmp_path / "table.tex").write_text("\\documentclass{article}\n\\begin{document}\n" + table + "\\end{document}\n")
    done = subprocess.run([pdflatex, "-interaction=nonstopmode", "-halt-on-error", "table.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "Missing character" not in (tmp_path / "table.log").read_text(errors="replace")
