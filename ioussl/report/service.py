"""`ioussl report`: Table 4.2 (or any grouping), optionally with figures and the HTML report; one unit of work."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ioussl.errors import ConfigError, DataError
from ioussl.plan.order import in_group_order, study_group_order
from ioussl.registry import opened, repo
from ioussl.report import grouping, pictures, runtable
from ioussl.report.cases import OrganRow
from ioussl.report.grouping import StudyOrder
from ioussl.report.tables import Report


@dataclass
class ReportOutcome:
    report: Report
    plots: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # one line per figure not drawn, and why
    pretrain_losses: Curves = field(default_factory=dict)  # with figures: the SimSiam loss per epoch, by row
    organs: list[OrganRow] = field(default_factory=list)  # with --organs: per group and organ, DSC and NSD


def report_study(db: str | None, study: str | Sequence[str] | None, ddof: int = 0, plot_dir: Path | None = None,
                 pairs_json: Path | None = None, html_path: Path | None = None,
                 by: str | Sequence[str] | None = None, *, metric: str | None = None, test: str | None = None,
                 organs: bool = False, log_tail: LogTail | None = None) -> ReportOutcome:
    """Table 4.2 for one study (the only one, if the registry holds just one), optionally with figures
    (PNG files into ``plot_dir``) and a self-contained HTML report (``html_path``).

    ``study`` may name several studies: their rows side by side. ``by`` groups by any of their axes
    (``grouping.resolve_by``; default: each swept setting, then the interval, which for a study without a
    sweep is the thesis table). ``metric`` and ``test`` default to the study file's ``[report]`` (else the
    per-slice DSC and Welch's test on pretraining means); ``organs`` adds the per-organ table. ``log_tail``
    gives the HTML report each run's last output lines (the CLI passes tracking's reader; without it the report
    says none were read).
    """
    from ioussl.report import cases as case_scores
    from ioussl.report.tables import build_report

    names = [study] if isinstance(study, str) else list(dict.fromkeys(study or []))
    if html_path is not None:
        check_html_path(html_path)
    if plot_dir is not None:
        check_plot_dir(plot_dir)
    with opened(db) as registry, registry.session(write=False) as session:
        studies = [repo.find_study(session, name) for name in names] or [repo.only_study(session, "report")]
        axes = grouping.resolve_by(by, {row.name: list(row.axes or []) for row in studies})
        orders = {row.name: StudyOrder.of(row.spec, study_group_order(row.spec)) for row in studies}
        records = [record for row in studies for record in repo.list_runs(session, study=row.name)]
        footer = provenance_footer(session, records, registry.location) + tuple(
            f"study {row.name} planned with -s {', '.join(map(str, row.spec['overrides']))}" for row in studies
            if isinstance(row.spec, dict) and isinstance(row.spec.get("overrides"), list) and row.spec["overrides"])
        curves = {metric: _metric_curves(session, records, (axes, orders), "pretrain", metric)
                  for metric in ("collapse", "loss", *DINO_SERIES)} if plot_dir else {}
        html_series = _html_series(session, records, (axes, orders)) if html_path else {}
        per_organ = repo.result_per_organ(session, [row.name for row in studies]) \
            if html_path else {}
        metric, test = report_choices(studies, metric, test)
        finetunes = [r.id for r in records if r.stage == "finetune"]
        # FLARE's per-case scores: read only when the metric or the test uses them (a payload per run).
        wanted = metric != "dsc" or test != "welch" or organs
        sections = case_scores.flare_sections(session, finetunes) if wanted else {}
        imported = [r.id for r in records if r.imported and r.stage == "finetune"]
        known = case_scores.pairing_known(session, imported) if imported else set()
        details = run_details(session, records, log_tail) if html_path else {}
    report = build_report(records, ", ".join(orders), ddof=ddof, by=axes, orders=orders, metric=metric, test=test,
                          case_scores=case_scores.case_table(sections) if metric != "dsc" else None,
                          pairing_known=known)
    report = dataclasses.replace(report, footer=footer + dsc_metric_note(studies))
    outcome = ReportOutcome(report, pretrain_losses=curves.get("loss", {}))
    if organs:
        units = {r.id: r.parent_id or r.id for r in records}
        groups = [(row.group, [(run_id, units[run_id]) for run_id in row.run_ids]) for row in report.rows]
        outcome.organs = case_scores.organ_rows(groups, sections)
        if not outcome.organs:
            outcome.skipped.append("per-organ table skipped: no run of the report recorded FLARE's per-organ scores")
    if plot_dir:
        with _written(f"the figures into {plot_dir}"):
            _write_plots(outcome, curves, records, plot_dir, pairs_json)
    if html_path:
        runs = in_group_order(records, {name: order.groups for name, order in orders.items()})
        shown = pictures.extremes(outcome.report, runs, {run_id: d.per_case for run_id, d in details.items()})
        with _written(f"the HTML report {html_path}"):
            _write_html(outcome, runs, html_series, per_organ, html_path, pairs_json, details, shown)
    return outcome


def report_choices(studies: Sequence[object], metric: str | None, test: str | None) -> tuple[str, str]:
    """The metric and test asked for, else the first study's ``[report]`` choice, else the defaults; one-line
    errors for anything else."""
    from ioussl.report.comparison import TESTS
    from ioussl.report.tables import METRICS

    chosen = {}
    for name, given, valid, default in (("metric", metric, METRICS, "dsc"), ("test", test, TESTS, "welch")):
        filed = [((row.spec or {}).get("report") or {}).get(name) for row in studies]  # type: ignore[attr-defined]
        value = given or next((v for v in filed if v), None) or default
        if value not in valid:
            raise ConfigError(f"unknown report {name} {value!r}; valid: {', '.join(valid)}")
        chosen[name] = value
    return chosen["metric"], chosen["test"]
@contextlib.contextmanager
def _written(what: str) -> Iterator[None]:
    """An unwritable folder, a full disk or a file-size limit while writing ``what``: one line, not a traceback."""
    try:
        yield
    except OSError as exc:
        raise ConfigError(f"cannot write {what}: {exc.strerror or exc}") from None


def check_html_path(path: Path) -> None:
    """Refuse, before any work, an HTML path that names a folder, or whose folder is a file or cannot be
    created (a missing folder is created, as ``--plot`` does)."""
    if path.parent.exists() and not path.parent.is_dir():
        raise ConfigError(f"cannot write the HTML report {path}: {path.parent} is a file, not a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot write the HTML report {path}: cannot create folder {path.parent} "
                          f"({exc.strerror or exc})") from None
    if path.is_dir():
        raise ConfigError(f"cannot write the HTML report {path}: it is a folder; give a file name")


def check_plot_dir(path: Path) -> None:
    """Refuse, before any work, a --plot path that is a file (it names the folder the figures go into)."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--plot {path} is a file: give a folder for the figures (created if missing)")


def dsc_metric_note(studies: Sequence[Any]) -> tuple[str, ...]:
    """Which DSC the table holds when a study trains on volumes: 3D runs have no per-slice DSC (a 2D metric),
    they select and report the 3D DSC per case on the preprocessed grid (issue 20)."""
    cubes = [row.name for row in studies if 3 in _spatial_dims(row.spec or {})]
    if not cubes:
        return ()
    return (f"DSC of the 3D runs (model.spatial_dims = 3) in {', '.join(cubes)}: the 3D DSC per case on the "
            "preprocessed grid (dsc_3d); 2D runs: the thesis' per-slice DSC",)  # fmt: skip


def _spatial_dims(spec: dict) -> set[int]:
    spec = spec.get("raw") or spec  # the registry keeps the study file as written under "raw"
    sweep = spec.get("sweep") or {}
    values = list(sweep.get("model.spatial_dims") or [])
    for group in sweep.get("zip") or []:
        values += list(group.get("model.spatial_dims") or [])
    return {(spec.get("model") or {}).get("spatial_dims", 2), *values}


def provenance_footer(session, records: list[repo.RunRecord], location: str) -> tuple[str, ...]:
    """Which code produced the numbers, and a fingerprint of the registry rows they come from."""
    fingerprint = hashlib.sha256(
        "\n".join(_fingerprinted(r) for r in sorted(records, key=lambda r: r.id)).encode()
    ).hexdigest()[:16]
    commits = repo.result_commits(session, {r.study for r in records})  # the records are whole studies
    code = ", ".join(f"{commit} ({n} run(s))" for commit, n in sorted(commits.items())) or "none recorded"
    imported = sum(r.imported and r.stage == "finetune" for r in records)
    lines = [f"registry {location}, fingerprint {fingerprint} over {len(records)} run(s)",
             f"code of the recorded results: {code}"]
    if imported:
        lines.append(f"{imported} fine-tune result(s) imported from outside ioussl (see ioussl status --json)")
    from ioussl.report.cases import numerics

    kinds = numerics(session, [r.id for r in records if r.stage == "finetune" and not r.imported])
    if kinds:
        lines.append("numerics of the recorded fine-tunes: " +
                     "; ".join(f"{kind} ({n} run(s))" for kind, n in sorted(kinds.items())))
    return tuple(lines)


def _fingerprinted(record: repo.RunRecord) -> str:
    """A run's line of the fingerprint; held-out and FLARE scores join it only where recorded (so a registry
    without them keeps the fingerprint it always had)."""
    line = f"{record.id}:{record.status.value}:{record.dsc!r}:{record.dsc_3d!r}"
    later = (record.test_dsc, record.flare_dsc, record.flare_nsd, record.flare_part)
    return line if all(value is None for value in later) else line + ":" + ":".join(map(repr, later))


Curves = dict[str, list[list[tuple[int, float]]]]  # group -> one (epoch, value) series per pretrain


Grouping = tuple[Sequence[str], Mapping[str, StudyOrder]]  # the report's --by axes and its studies' orders


def _metric_curves(session, records: list[repo.RunRecord], grouping_: Grouping, stage: str,
                   metric: str) -> Curves:
    """Row label -> one per-epoch series of ``metric`` per run of ``stage`` that recorded it, in row order.

    A run's label is the report row it belongs to (``grouping.key_of`` over the --by axes; a pretrain has no
    fine-tuning setting, so its curve is labelled by its pretraining settings and interval only).
    """
    by, orders = grouping_
    runs = [r for r in records if r.stage == stage]
    series = repo.metric_series(session, {r.study for r in records}, stage, metric)  # whole studies
    keyed: dict[grouping.GroupKey, list[list[tuple[int, float]]]] = {}
    for record in runs:
        if record.id in series:
            keyed.setdefault(grouping.key_of(record, by), []).append(series[record.id])
    several = len(orders) > 1
    return {key.label(several): keyed[key] for key in grouping.sort_keys(keyed, orders)}


def _html_series(session, records: list[repo.RunRecord], grouping_: Grouping) -> dict[str, Curves]:
    from ioussl.report.html import CURVES

    return {spec.key: _metric_curves(session, records, grouping_, spec.stage, spec.metric) for spec in CURVES}


def _write_html(outcome: ReportOutcome, records: list[repo.RunRecord], series: dict[str, Curves],
                per_organ: dict, path: Path, pairs_json: Path | None, details: Mapping | None = None,
                shown: Sequence[pictures.Picture] = ()) -> None:
    import datetime as dt

    from ioussl import __version__
    from ioussl.report import html as htmlreport
    from ioussl.report import plots

    written = f"written {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC by ioussl {__version__}"
    inputs = htmlreport.HtmlInputs(
        report=outcome.report, runs=records, curves=series,
        organs=htmlreport.organ_means(outcome.report, per_organ),
        pairs=plots.read_pairs(pairs_json) if pairs_json is not None else None, written=written,
        details=details or {}, segmentations=shown,
    )
    outcome.skipped += [f"HTML report: {line}" for line in htmlreport.write_html(inputs, path)]
    outcome.plots.append(path)


# DINO's collapse statistics (docs/training.md says how to read them): metric -> (y label, title)
DINO_SERIES = {
    "teacher_entropy": ("teacher entropy (nats; log out_dim: flat targets)", "DINO: teacher output entropy"),
    "teacher_kl_uniform": ("KL(mean teacher distribution || uniform) (nats)",
                           "DINO: the teacher's mean distribution against uniform"),
}


def _write_plots(outcome: ReportOutcome, curves: dict[str, Curves], records: list[repo.RunRecord], plot_dir: Path,
                 pairs_json: Path | None) -> None:
    """The DSC per group, the collapse and the pretraining loss per epoch, the pair analysis if given."""
    from ioussl.report import plots

    if any(row.values for row in outcome.report.rows):
        outcome.plots.append(plots.plot_dsc(outcome.report, plot_dir / "dsc_per_group.png"))
    if curves["collapse"]:
        outcome.plots.append(plots.plot_collapse(curves["collapse"], plot_dir / "collapse_per_epoch.png"))
    else:
        outcome.skipped.append(f"collapse plot skipped: {_no_collapse_reason(records)}")
    if curves["loss"]:
        outcome.plots.append(plots.plot_pretrain_loss(curves["loss"], plot_dir / "pretrain_loss_per_epoch.png"))
    for metric, (ylabel, title) in DINO_SERIES.items():  # DINO runs only: no figure (and no note) without them
        if curves.get(metric):
            outcome.plots.append(plots.plot_curves(curves[metric], plot_dir / f"{metric}_per_epoch.png", ylabel, title))
    if pairs_json is not None:
        outcome.plots.append(plots.plot_pairs(plots.read_pairs(pairs_json), plot_dir / "pair_semantics.png"))
    if not outcome.plots:
        raise DataError("nothing to plot yet: no DSC, no collapse series and no pair analysis")


def _no_collapse_reason(records: list[repo.RunRecord]) -> str:
    pretrains = [r for r in records if r.stage == "pretrain"]
    imported = sum(r.imported for r in pretrains)
    if not pretrains:
        return "the study has no pretraining runs"
    if imported == len(pretrains):
        return (f"its {imported} pretrain(s) are imported results (ioussl import results), which carry no "
                "per-epoch collapse series")
    return f"none of its {len(pretrains)} pretrain(s) has recorded a collapse value yet"


LogTail = Callable[[repo.RunRecord], tuple[list[str], str]]  # run -> its last output lines, and a note


def run_details(session, records: Sequence[repo.RunRecord],
                log_tail: LogTail | None) -> dict[str, runtable.RunDetails]:
    """Each run's configuration, organ scores and last output lines, for the HTML report's run details."""
    from ioussl.report.external import config_settings

    studies = {record.study for record in records}
    configs = repo.run_configs(session, studies)
    results = repo.result_details(session, studies)
    details = {}
    for record in records:
        settings = {key: _setting_text(value) for key, value in config_settings(configs.get(record.id)).items()}
        lines, note = log_tail(record) if log_tail else ([], "output not read")
        organs = (results.get(record.id) or {}).get("organs") or {}
        details[record.id] = runtable.RunDetails(settings=settings, organs=organs, log=lines, log_note=note,
                                                 per_case=(results.get(record.id) or {}).get("per_case") or {})
    return details


def _setting_text(value: object) -> str:
    import json

    return value if isinstance(value, str) else json.dumps(value)
