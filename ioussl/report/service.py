"""`ioussl report`: Table 4.2 (or any grouping), optionally with figures and the HTML report; one unit of work."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ioussl.errors import ConfigError, DataError
from ioussl.plan.order import in_group_order, study_group_order
from ioussl.registry import opened, repo
from ioussl.report import grouping
from ioussl.report.grouping import StudyOrder
from ioussl.report.tables import Report


@dataclass
class ReportOutcome:
    report: Report
    plots: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # one line per figure not drawn, and why
    pretrain_losses: Curves = field(default_factory=dict)  # with figures: the SimSiam loss per epoch, by row


def report_study(db: str | None, study: str | Sequence[str] | None, ddof: int = 0, plot_dir: Path | None = None,
                 pairs_json: Path | None = None, html_path: Path | None = None,
                 by: str | Sequence[str] | None = None) -> ReportOutcome:
    """Table 4.2 for one study (the only one, if the registry holds just one), optionally with figures
    (PNG files into ``plot_dir``) and a self-contained HTML report (``html_path``).

    ``study`` may name several studies: their rows side by side. ``by`` groups by any of their axes
    (``grouping.resolve_by``; default: each swept setting, then the interval, which for a study without a
    sweep is the thesis table).
    """
    from ioussl.report.tables import build_report

    names = [study] if isinstance(study, str) else list(dict.fromkeys(study or []))
    if html_path is not None:
        check_html_path(html_path)
    with opened(db) as registry, registry.session(write=False) as session:
        studies = [repo.find_study(session, name) for name in names] or [repo.only_study(session, "report")]
        axes = grouping.resolve_by(by, {row.name: list(row.axes or []) for row in studies})
        orders = {row.name: StudyOrder.of(row.spec, study_group_order(row.spec)) for row in studies}
        records = [record for row in studies for record in repo.list_runs(session, study=row.name)]
        footer = provenance_footer(session, records, registry.location)
        curves = {metric: _metric_curves(session, records, (axes, orders), "pretrain", metric)
                  for metric in ("collapse", "loss")} if plot_dir else {}
        html_series = _html_series(session, records, (axes, orders)) if html_path else {}
        per_organ = repo.result_per_organ(session, [row.name for row in studies]) \
            if html_path else {}
    report = build_report(records, ", ".join(orders), ddof=ddof, by=axes, orders=orders)
    report = dataclasses.replace(report, footer=footer + dsc_metric_note(studies))
    outcome = ReportOutcome(report, pretrain_losses=curves.get("loss", {}))
    if plot_dir:
        _write_plots(outcome, curves, records, plot_dir, pairs_json)
    if html_path:
        runs = in_group_order(records, {name: order.groups for name, order in orders.items()})
        _write_html(outcome, runs, html_series, per_organ, html_path, pairs_json)
    return outcome


def check_html_path(path: Path) -> None:
    """Refuse, before any work, an HTML path whose folder does not exist or that names a folder."""
    if not path.parent.is_dir():
        raise ConfigError(f"cannot write the HTML report {path}: folder {path.parent} does not exist")
    if path.is_dir():
        raise ConfigError(f"cannot write the HTML report {path}: it is a folder; give a file name")


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


def provenance_footer(session, records: list[repo.RunRecord], location: str) -> tuple[str, ...]:  # type: ignore[no-untyped-def]
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
    return tuple(lines)


def _fingerprinted(record: repo.RunRecord) -> str:
    """A run's line of the fingerprint; held-out and FLARE scores join it only where recorded (so a registry
    without them keeps the fingerprint it always had)."""
    line = f"{record.id}:{record.status.value}:{record.dsc!r}:{record.dsc_3d!r}"
    later = (record.test_dsc, record.flare_dsc, record.flare_nsd, record.flare_part)
    return line if all(value is None for value in later) else line + ":" + ":".join(map(repr, later))


Curves = dict[str, list[list[tuple[int, float]]]]  # group -> one (epoch, value) series per pretrain


Grouping = tuple[Sequence[str], Mapping[str, StudyOrder]]  # the report's --by axes and its studies' orders


def _metric_curves(session, records: list[repo.RunRecord], grouping_: Grouping, stage: str,  # type: ignore[no-untyped-def]
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


def _html_series(session, records: list[repo.RunRecord], grouping_: Grouping) -> dict[str, Curves]:  # type: ignore[no-untyped-def]
    from ioussl.report.html import CURVES

    return {spec.key: _metric_curves(session, records, grouping_, spec.stage, spec.metric) for spec in CURVES}


def _write_html(outcome: ReportOutcome, records: list[repo.RunRecord], series: dict[str, Curves],
                per_organ: dict, path: Path, pairs_json: Path | None) -> None:
    import datetime as dt

    from ioussl import __version__
    from ioussl.report import html as htmlreport
    from ioussl.report import plots

    written = f"written {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC by ioussl {__version__}"
    inputs = htmlreport.HtmlInputs(
        report=outcome.report, runs=records, curves=series,
        organs=htmlreport.organ_means(outcome.report, per_organ),
        pairs=plots.read_pairs(pairs_json) if pairs_json is not None else None, written=written,
    )
    outcome.skipped += [f"HTML report: {line}" for line in htmlreport.write_html(inputs, path)]
    outcome.plots.append(path)


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
