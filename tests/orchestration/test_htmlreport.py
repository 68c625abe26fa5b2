"""`ioussl report --html`: one self-contained file, checked as text and rendered in headless Chromium.

The registry is built through the real paths: the thesis-test-split study is planned, every run gets a
result.json v2 (test and FLARE sections, per-organ DSCs) and a metrics.jsonl, and `sync` ingests them; the
failed run's local job left an output file (with a traceback and terminal colour codes) where `ioussl logs`
finds it.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import io
import json
import re
import shutil
from pathlib import Path

import pytest
from browser import chromium, open_page
from registryfix import dump, services_required, valid_result
from sqlalchemy import select
from typer.testing import CliRunner

from ioussl.cli import app
from ioussl.plan.service import plan_grid
from ioussl.registry import open_registry, repo
from ioussl.registry.models import Run
from ioussl.report import html as htmlreport
from ioussl.report.service import report_study
from ioussl.report.tables import table
from ioussl.status import RunStatus
from ioussl.track.sync import sync

ORGANS = ("aorta", "gallbladder", "liver", "pancreas", "spleen")
HOSTILE = "<img src=x onerror=console.error('escaped?')> & \"quotes\""  # a reason that must stay text
STARTED = dt.datetime(2026, 1, 5, 9, 0, 0)
CASES = ("FLARETs_0001", "FLARETs_0002", "FLARETs_0003")  # held-out cases, worst to best in every run
TRACEBACK = ["Traceback (most recent call last):", '  File "engine.py", line 80, in train', "\x1b[31mRuntimeError: "
             "CUDA out of memory\x1b[0m", HOSTILE]


def _organs(seed: int, shift: float) -> dict[str, float]:
    return {organ: round(min(1.0, 0.55 + 0.08 * i + shift + 0.01 * seed), 4) for i, organ in enumerate(ORGANS)}


def _finetune_result(run: Run) -> dict:
    shift = 0.03 if run.group == "[0.3, 0.6]" else 0.0
    wobble = 0.004 * run.seed + 0.003 * (run.pretrain_seed or 0)
    flare_organs = {organ: {"dsc": value, "nsd": value - 0.05} for organ, value in _organs(run.seed, shift).items()}
    return valid_result(
        run, dsc=0.86 + shift + wobble, dsc_3d=0.8, per_organ=_organs(run.seed, shift + 0.02),
        test={"dsc": 0.82 + shift + wobble, "dsc_3d": 0.78, "per_organ": _organs(run.seed, shift), "slices": 40,
              "per_case": {case: {"liver": round(0.5 + 0.1 * i + wobble, 4), "spleen": 0.8}
                           for i, case in enumerate(CASES)} | {"../../escape": {"liver": 1.0}}},
        flare={"part": "test", "dsc": 0.75 + wobble, "nsd": 0.7 + wobble, "per_organ": flare_organs, "per_case": {}},
    )


def _metrics(run: Run) -> str:
    lines = []
    for epoch in range(6):
        if run.stage == "pretrain":
            line = {"epoch": epoch, "step": 10 * epoch, "loss": -0.5 - 0.07 * epoch - 0.01 * run.seed,
                    "collapse": 0.95 - 0.02 * epoch - 0.01 * (run.i_max or 0)}
        else:
            line = {"epoch": epoch, "step": 5 * epoch, "loss": 1.4 / (epoch + 1) + 0.01 * run.seed,
                    "val_dsc": 0.5 + 0.06 * epoch + 0.005 * run.seed}
        lines.append(json.dumps(line))
    return "\n".join(lines) + "\n"


@pytest.fixture
def full_db(repo_root, db, tmp_path) -> str:
    """thesis-test-split with every run completed through ingest, but one fine-tune FAILED with HOSTILE."""
    shutil.copytree(repo_root / "jobs", tmp_path / "jobs")  # run directories land under tmp_path/runs
    plan_grid(tmp_path / "jobs" / "thesis-test-split.toml", db, check_data=False)
    registry = open_registry(db)
    with registry.session() as session:
        runs = sorted(session.scalars(select(Run)), key=lambda r: r.id)
        failed = next(r for r in runs if r.stage == "finetune" and r.group == "[0, 0]" and r.seed == 2)
        runs.remove(failed)
        runs.insert(0, failed)  # the first job: it ran 1 min 05 s
        for number, run in enumerate(runs):
            repo.set_status(session, run, RunStatus.SUBMITTING)
            repo.add_attempt(session, run_id=run.id, executor="local", job_id=str(900000 + number),
                             job_name=f"ioussl-{run.id}", status=RunStatus.PENDING,
                             started_at=STARTED, ended_at=STARTED + dt.timedelta(minutes=number + 1, seconds=5))
            repo.set_status(session, run, RunStatus.PENDING)
            if run is failed:
                repo.set_status(session, run, RunStatus.FAILED, HOSTILE)
                job = Path(run.study.runs_dir) / "_submitit" / "local" / f"ioussl-{run.id}" / str(900000 + number)
                job.mkdir(parents=True)
                (job / f"{900000 + number}_0_log.out").write_text(
                    "".join(f"epoch {e} loss 0.5\n" for e in range(30)) + "\n".join(TRACEBACK) + "\n")
                continue
            run_dir = Path(run.run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            payload = _finetune_result(run) if run.stage == "finetune" else valid_result(run)
            (run_dir / "result.json").write_text(json.dumps(payload))
            (run_dir / "metrics.jsonl").write_text(_metrics(run))
    with registry.session() as session:
        outcome = sync(session)
    assert len(outcome.transitions) == 33
    registry.dispose()
    return db


@pytest.fixture
def pairs_json(tmp_path) -> Path:
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps([{"i_min": 0, "i_max": 0, "fraction": 0.21}, {"i_min": 0.3, "i_max": 0.6,
                                                                              "fraction": 0.83}]))
    return path


def _report(db: str, *args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, ["report", "--db", db, *args])


def test_the_html_file_is_self_contained_and_holds_every_part(full_db, pairs_json, tmp_path):
    out = tmp_path / "report.html"
    result = _report(full_db, "--no-table", "--html", str(out), "--pairs", str(pairs_json))
    assert result.exit_code == 0, result.output
    assert result.stdout == "" and f"wrote {out}" in result.stderr.splitlines()
    text = out.read_text()
    assert "<link" not in text and "url(" not in text  # nothing to fetch
    # One inline script, the run table's, and a policy that lets only it run and nothing load from elsewhere.
    assert re.findall(r"<script[^>]*>", text) == ["<script>"]
    assert text.count(htmlreport.runtable.SCRIPT) == 1
    digest = base64.b64encode(hashlib.sha256(htmlreport.runtable.SCRIPT.encode()).digest()).decode()
    assert f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{digest}'" in text
    sources = [s for s in re.findall(r"""(?:src|href)=['"]([^'"]*)""", text) if not s.startswith("#run-")]
    assert len(sources) == 7 and all(s.startswith("data:image/png;base64,") for s in sources)
    for source in sources:
        assert base64.b64decode(source.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    for part in ("Table 4.2: DSC per group", "DSC per organ", "Representation collapse", "Pretraining loss",
                 "Fine-tuning loss", "Pair semantics", "Runs (34)", "Provenance", "fingerprint"):
        assert part in text, part
    assert HOSTILE not in text and "&lt;img src=x onerror=console.error(&#x27;escaped?&#x27;)&gt; &amp; " in text


def test_a_file_as_folder_or_a_folder_as_html_path_is_one_line_and_writes_nothing(full_db, tmp_path):
    before = dump(full_db)
    (tmp_path / "afile").write_text("x")
    for target, fragment in ((tmp_path / "afile" / "r.html", "afile is a file, not a folder"),
                             (tmp_path, "it is a folder")):
        result = _report(full_db, "--html", str(target))
        assert result.exit_code == 1 and result.stdout == ""
        assert result.stderr.startswith("error: cannot write the HTML report") and fragment in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert dump(full_db) == before


def test_a_missing_folder_for_the_html_report_is_created_as_for_plots(full_db, tmp_path):
    result = _report(full_db, "--no-table", "--html", str(tmp_path / "new" / "deeper" / "r.html"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "new" / "deeper" / "r.html").read_text().startswith("<!DOCTYPE html>")


def test_pairs_go_into_the_html_report_without_plot(full_db, pairs_json, tmp_path):
    result = _report(full_db, "--no-table", "--html", str(tmp_path / "r.html"), "--pairs", str(pairs_json))
    assert result.exit_code == 0 and "Pair semantics" in (tmp_path / "r.html").read_text()
    result = _report(full_db, "--pairs", str(pairs_json))
    assert result.exit_code == 1 and "--pairs is plotted into the --plot folder or the --html report" in result.stderr


def test_an_imported_registry_says_which_figures_it_lacks(repo_root, tmp_path):
    copy = tmp_path / "example.db"
    copy.write_bytes((repo_root / "registry.db.example").read_bytes())
    result = _report(str(copy), "--html", str(tmp_path / "r.html"), "--no-table")
    assert result.exit_code == 0, result.output
    assert ("HTML report: figure 'DSC per organ' left out: no fine-tune result records a per-organ DSC yet "
            "(imported results never do)") in result.stderr.splitlines()
    text = (tmp_path / "r.html").read_text()
    assert text.count("<img ") == 1 and "no pretrain run recorded a per-epoch &#x27;collapse&#x27; series" in text


def test_without_matplotlib_the_tables_stay_and_the_figures_are_named(full_db, tmp_path, monkeypatch):
    real = htmlreport.importlib.util.find_spec
    monkeypatch.setattr(htmlreport.importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else real(name, *a))
    result = _report(full_db, "--html", str(tmp_path / "r.html"), "--no-table")
    assert result.exit_code == 0 and "figures left out: they need matplotlib" in result.stderr
    text = (tmp_path / "r.html").read_text()
    assert "<img " not in text and "class='report'" in text and "Runs (34)" in text and "id='runs-table'" in text


def test_organ_means_follow_the_groups_cases_and_skip_bad_values(full_db):
    report = report_study(full_db, None).report
    row = next(row for row in report.rows if row.group == "[0.3, 0.6]")
    per_organ = {run_id: {"test": {"liver": 0.5, "spleen": True, "aorta": 1.5, "pancreas": float("nan")},
                          "val": {"liver": 0.9}} for run_id in row.run_ids}
    per_organ[row.run_ids[0]]["test"]["liver"] = 0.7
    means = htmlreport.organ_means(report, per_organ)
    assert means == {"[0.3, 0.6]": {"liver": pytest.approx((0.7 + 0.5 * 3) / 4)}}  # held-out cases, numbers only


# ---- in a real browser ----

@pytest.fixture
def browser_ready() -> None:
    if chromium() is None:
        reason = "chromium is not installed (scripts/install-test-packages.sh installs it)"
        if services_required():
            pytest.fail(f"headless Chromium is required (IOUSSL_REQUIRE_SERVICES=1): {reason}")
        pytest.skip(reason)


def test_chromium_renders_the_report_with_every_image_and_no_console_error(browser_ready, full_db, pairs_json,
                                                                            tmp_path):
    from PIL import Image

    out = tmp_path / "report.html"
    assert _report(full_db, "--no-table", "--html", str(out), "--pairs", str(pairs_json)).exit_code == 0
    page = open_page(out, width=1280, height=1600, screenshot=True)
    assert page.errors == [] and page.external == []
    assert page.title == "ioussl report: thesis-test-split"
    assert len(page.images) == 7 and all(image["width"] > 0 and image["height"] > 0 for image in page.images)
    scores, against = (t["rows"] for t in page.tables if t["cls"] == "report")
    (runs_table,) = (t["rows"] for t in page.tables if t["cls"] == "runs")
    head, cells = table(report_study(full_db, None).report)
    # The browser shows the very cells of the text formats, split in two tables that share the group column.
    keys = scores[0] + against[0][1:]
    shown = [dict(zip(keys, s + a[1:], strict=True)) for s, a in zip(scores[1:], against[1:], strict=True)]
    assert shown == [dict(zip(head, line, strict=True)) for line in cells]
    assert against[0] == ["group", "Δ baseline", "Δ 95% CI", "test", "p", "p Holm"]
    assert "held-out test" in scores[1] and "FLARE NSD" in scores[0]
    assert len(runs_table) == 1 + 34
    failed = next(row for row in runs_table if any(cell.startswith("FAILED") for cell in row))
    assert any(HOSTILE in cell for cell in failed)  # shown as text, never run as markup
    shot = Image.open(io.BytesIO(page.screenshot or b""))
    assert shot.size == (1280, 1600)


def test_the_browser_check_catches_what_it_is_there_to_catch(browser_ready, tmp_path):
    broken = tmp_path / "broken.html"
    broken.write_text("<!DOCTYPE html><title>t</title><img alt='bad' src='data:image/png;base64,AAAA'>"
                      "<img alt='gone' src='missing.png'><script>console.error('boom')</script>")
    page = open_page(broken)
    assert [image["width"] for image in page.images] == [0, 0]
    assert "console: boom" in page.errors and any("missing.png" in e for e in page.errors)
    assert page.external == ["missing.png"]


def test_status_json_carries_each_runs_held_out_and_flare_scores(full_db):
    result = CliRunner().invoke(app, ["status", "--db", full_db, "--json", "--no-sync"])
    assert result.exit_code == 0, result.output
    rows = {row["id"]: row for row in json.loads(result.stdout)}
    finetunes = [row for row in rows.values() if row["stage"] == "finetune" and row["status"] == "COMPLETED"]
    assert len(finetunes) == 23
    for row in finetunes:
        assert 0.8 < row["test_dsc"] < row["dsc"] and row["flare_part"] == "test"
        assert row["flare_nsd"] == pytest.approx(row["flare_dsc"] - 0.05)
    pretrain = next(row for row in rows.values() if row["stage"] == "pretrain")
    assert (pretrain["test_dsc"], pretrain["flare_dsc"], pretrain["flare_part"]) == (None, None, None)


# ---- the run table in a real browser: sorting, filtering, details, 800 px ----

ROWS_SHOWN = ("JSON.stringify([...document.querySelectorAll('#runs-table tbody tr')].filter(r => !r.hidden)"
              ".map(r => [...r.cells].map(c => c.innerText.trim())))")


def _click_header(name: str) -> str:
    return (f"[...document.querySelectorAll('#runs-table th button')].find(b => b.textContent === '{name}')"
            ".click(); document.querySelector('#runs-table th[aria-sort]').getAttribute('aria-sort')")


def _type_filter(text: str) -> str:
    return (f"(() => {{ const box = document.getElementById('run-filter'); box.value = '{text}';"
            " box.dispatchEvent(new Event('input')); return document.getElementById('run-count').textContent; })()")


def _choose_state(state: str) -> str:
    return (f"(() => {{ const box = document.getElementById('run-state'); box.value = '{state}';"
            " box.dispatchEvent(new Event('change')); return document.getElementById('run-count').textContent; })()")


def _numbers(rows: list[list[str]], column: int) -> list[float | None]:
    return [None if row[column] == "-" else float(row[column]) for row in rows]


def test_chromium_sorts_and_filters_the_run_table_and_opens_a_runs_details(browser_ready, full_db, tmp_path):
    out = tmp_path / "report.html"
    assert _report(full_db, "--no-table", "--html", str(out)).exit_code == 0
    with open_registry(full_db).session() as session:
        failed = select(Run.id, Run.parent_id).where(Run.status == RunStatus.FAILED)
        failed_id, parent_id = session.execute(failed).one()
    page = open_page(out, width=1280, height=900, actions=[
        _click_header("val DSC"), ROWS_SHOWN, _click_header("val DSC"), ROWS_SHOWN,
        _click_header("elapsed"), ROWS_SHOWN,
        _type_filter("finetune [0.3, 0.6]"), ROWS_SHOWN, _type_filter(""), _choose_state("FAILED"), ROWS_SHOWN,
        _choose_state(""), f"location.hash = '#run-{failed_id}'",
        f"document.getElementById('run-{failed_id}').open",
        f"document.getElementById('run-{failed_id}').innerText",
        "(() => { const d = [...document.querySelectorAll('details.run')].find(d => d.innerText.includes("
        "'finetune · [0.3, 0.6]')); d.open = true; return d.innerText; })()",
        "(() => { const d = [...document.querySelectorAll('details.shared')]; d.forEach(x => x.open = true);"
        " return d.map(x => x.innerText); })()",
    ])
    assert page.errors == []
    (head,) = [t["rows"][0] for t in page.tables if t["cls"] == "runs"]
    dsc, elapsed = head.index("val DSC"), head.index("elapsed")
    (up, ascending, down, descending, by_time, timed, counted, filtered, _, failed_count, only_failed, _, _,
     opened, details, completed, shared) = page.results
    ascending, descending, timed, filtered, only_failed = (json.loads(x) for x in (ascending, descending, timed,
                                                                                    filtered, only_failed))
    assert (up, down, by_time) == ("ascending", "descending", "ascending")
    scored = [v for v in _numbers(ascending, dsc) if v is not None]
    assert len(ascending) == 34 and len(scored) == 23 and scored == sorted(scored)
    assert _numbers(ascending, dsc)[23:] == [None] * 11  # pretrains and the failed run: last either way
    assert [v for v in _numbers(descending, dsc) if v is not None] == sorted(scored, reverse=True)
    assert _numbers(descending, dsc)[23:] == [None] * 11
    # Elapsed sorts by seconds, not by its text ("10 min 05 s" after "9 min 05 s").
    minutes = [int(row[elapsed].split(" min")[0]) for row in timed]
    assert minutes == sorted(minutes) and minutes[0] == 1 and minutes[-1] == 34
    assert counted == "4 of 34 runs" and len(filtered) == 4  # every word must match (2 pretrains x 2 seeds)
    assert all(row[1] == "finetune" and row[2] == "[0.3, 0.6]" for row in filtered)
    assert failed_count == "1 of 34 runs" and len(only_failed) == 1 and failed_id in only_failed[0][0]
    assert opened is True
    for part in ("configuration: settings of its own (1)\nseed\t2", "elapsed\n1 min 05 s", f"parent\n{parent_id}\n",
                 "RuntimeError: CUDA out of memory", HOSTILE, "last lines of its output", "organ scores"):
        assert part in details, part
    # A completed fine-tune: its organ scores, by kind (validation, test, FLARE), as recorded.
    organs = completed.split("organ scores")[1]
    assert organs.split("\n")[1].split("\t") == ["organ", "val DSC", "test DSC", "FLARE DSC", "FLARE NSD"]
    assert re.search(r"\nliver\t0\.\d{3}\t0\.\d{3}\t0\.\d{3}\t0\.\d{3}\n", organs)
    # What every run of a stage shares is listed once per stage.
    assert [part.split("\n")[0] for part in shared] == ["settings every finetune run shares (39)",
                                                         "settings every pretrain run shares (36)"]
    assert "finetune.base_lr\t" in shared[0] and "pretrain.base_lr\t" in shared[1] and "data.crop\t96" in shared[1]
    assert "\x1b" not in details and "[31m" not in details  # the terminal's colour codes are dropped
    assert "epoch 14 loss" not in details and "epoch 29 loss" in details  # the last 15 lines only


def test_the_run_table_fits_an_800_pixel_window(browser_ready, full_db, tmp_path):
    out = tmp_path / "report.html"
    assert _report(full_db, "--no-table", "--html", str(out)).exit_code == 0
    page = open_page(out, width=800, height=900, screenshot=True, actions=[
        "(() => { const t = document.getElementById('runs-table');"
        " return [t.scrollWidth, t.parentElement.clientWidth, document.documentElement.scrollWidth]; })()",
        "[...document.querySelectorAll('#runs-table th')].filter(th => th.offsetWidth > 0).map(th => th.innerText)",
    ])
    assert page.errors == []
    (table_width, room, page_width), shown = page.results
    assert table_width <= room and page_width <= 800, (table_width, room, page_width)
    assert {"run", "stage", "group", "seed", "status", "elapsed", "val DSC", "test DSC", "FLARE DSC",
            "FLARE NSD"} <= set(shown)


def test_each_groups_best_and_worst_case_is_shown_where_predict_drew_it(browser_ready, full_db, tmp_path):
    import numpy as np

    from ioussl.science.evaluate.overlays import overlay_png

    report = report_study(full_db, None).report
    row = next(row for row in report.rows if row.group == "[0.3, 0.6]")
    with open_registry(full_db).session() as session:
        runs = {run.id: run for run in session.scalars(select(Run).where(Run.id.in_(row.run_ids)))}
        best_run = max(runs.values(), key=lambda run: run.result.test_dsc)
        folder = Path(best_run.run_dir) / "predictions"
    folder.mkdir()
    ct, labels = np.linspace(0, 1, 32 * 32).reshape(32, 32), np.zeros((32, 32), dtype=np.uint8)
    labels[8:20, 8:20] = 1
    (folder / "FLARETs_0003_z005.png").write_bytes(overlay_png(ct, labels, labels, "best"))
    (folder / "FLARETs_0001_z002.png").write_text("not a picture")  # read from disk: checked
    out = tmp_path / "report.html"
    assert _report(full_db, "--no-table", "--html", str(out)).exit_code == 0
    text = out.read_text()
    section = text.split("<section id='pictures'>")[1].split("</section>")[0]
    assert "[0.3, 0.6]: best case FLARETs_0003 (mean DSC 0.7" in section and section.count("<img ") == 1
    assert f"<code>ioussl predict {best_run.id} FLARETs_0001</code> ({folder / 'FLARETs_0001_z002.png'} is not a " \
           "PNG picture)" in section
    assert "no pretraining: worst case FLARETs_0001" in section and "escape" not in section  # no unsafe case ids
    page = open_page(out, width=1280, height=900)
    assert page.errors == [] and all(image["width"] > 0 for image in page.images)
    assert any(image["alt"].startswith("[0.3, 0.6]: best case FLARETs_0003") for image in page.images)
