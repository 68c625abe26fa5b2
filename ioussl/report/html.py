"""`ioussl report --html FILE`: the whole report as one self-contained HTML file (pure rendering).

Nothing is fetched when the file is opened: the CSS and the run table's script are inline and every figure
is a PNG in a ``data:`` URI, so the file can be mailed, archived or opened on a machine without network. Its
Content-Security-Policy says so to the browser too: nothing may load from elsewhere, and the one script that
may run is the run table's (by its hash), so no text from the registry could ever run as a script. Every
string that comes from the registry (study and group names, reasons, paths, provenance) goes through
:func:`html.escape`.
Figures come from :mod:`ioussl.report.plots` (matplotlib, imported only when drawing); without
matplotlib the report still has its tables and says which figures it left out.
"""

from __future__ import annotations

import base64
import html
import importlib.util
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ioussl.registry.repo import RunRecord
from ioussl.report import pictures, runtable, tables
from ioussl.report.tables import HELD_OUT, Report
from ioussl.runfiles import atomic_write_text

Curves = Mapping[str, Sequence[Sequence[tuple[int, float]]]]  # group -> one (epoch, value) series per run


@dataclass(frozen=True)
class HtmlInputs:
    """What the HTML report shows; the service reads it from the registry."""

    report: Report
    runs: Sequence[RunRecord]  # every run of the study (both stages), in group order
    curves: Mapping[str, Curves] = field(default_factory=dict)  # series name (see CURVES) -> curves
    organs: Mapping[str, Mapping[str, float | None]] = field(default_factory=dict)  # group -> organ -> mean
    pairs: Sequence[Mapping[str, Any]] | None = None  # `ioussl analyze pairs --json` rows
    written: str = ""  # when and by what, for the footer
    details: Mapping[str, runtable.RunDetails] = field(default_factory=dict)  # run id -> configuration, logs
    segmentations: Sequence[pictures.Picture] = ()  # each group's best and worst case, drawn by `ioussl predict`


@dataclass(frozen=True)
class CurveSpec:
    """A per-epoch metric series drawn as curves: ``metric`` as named in metrics.jsonl, of ``stage`` runs."""

    key: str
    stage: str
    metric: str
    ylabel: str
    title: str
    unit_range: bool  # the values are scores in [0, 1]
    only_some: bool = False  # recorded by some methods only (DINO): left out without a note where absent


ORGAN_TITLE = "DSC per organ"  # the one figure that spans the page (a column per organ)
CURVES = (
    CurveSpec("collapse", "pretrain", "collapse", "collapse coefficient  (0: spread out, 1: collapsed)",
              "Representation collapse during pretraining", True),
    CurveSpec("pretrain loss", "pretrain", "loss", "SimSiam loss (negative cosine similarity)",
              "Pretraining loss", False),
    CurveSpec("finetune loss", "finetune", "loss", "training loss (Dice + cross-entropy)", "Fine-tuning loss",
              False),
    CurveSpec("val_dsc", "finetune", "val_dsc", "per-slice DSC, validation cases",
              "Validation DSC during fine-tuning", True),
    CurveSpec("teacher_entropy", "pretrain", "teacher_entropy", "teacher entropy (nats; log out_dim: flat targets)",
              "DINO: teacher output entropy", False, only_some=True),
    CurveSpec("teacher_kl_uniform", "pretrain", "teacher_kl_uniform", "KL(mean teacher distribution || uniform)",
              "DINO: the teacher's mean distribution against uniform", False, only_some=True),
)


def write_html(inputs: HtmlInputs, path: Path) -> list[str]:
    """Render and write atomically; returns one line per figure left out, and why."""
    text, skipped = render_html(inputs)
    atomic_write_text(path, text)
    return skipped


def render_html(inputs: HtmlInputs) -> tuple[str, list[str]]:
    """The HTML document and the figures left out (one line each, with the reason)."""
    figures, skipped = _figures(inputs)
    report = inputs.report
    body = [
        f"<header><h1>{_e(report.study)}</h1><p class='lead'>{_e(_summary(report))}</p></header>",
        _section("Table 4.2: DSC per group", _report_tables(report) + _legend(report), "table"),
        _section("Figures", "".join(figures) + _notes(skipped), "figures") if figures or skipped else "",
        _section("Segmentations: best and worst case per group", pictures.render(inputs.segmentations), "pictures")
        if inputs.segmentations else "",
        _section(f"Runs ({len(inputs.runs)})", runtable.render(inputs.runs, inputs.details), "runs"),
        _footer(report, inputs.written),
    ]
    title = f"ioussl report: {report.study}"
    document = (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
                f"<meta name='viewport' content='width=device-width, initial-scale=1'>{_csp()}"
                f"<title>{_e(title)}</title><style>{CSS}{runtable.CSS}{pictures.CSS}</style></head>\n<body><main>\n"
                + "\n".join(part for part in body if part)
                + f"\n</main><script>{runtable.SCRIPT}</script></body></html>\n")
    return document, skipped


def _csp() -> str:
    policy = f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src {runtable.script_hash()}"
    return f"<meta http-equiv='Content-Security-Policy' content=\"{policy}\">"


def organ_means(report: Report, per_organ: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Group -> organ -> mean DSC over the group's scored runs, on the cases the group's number comes from.

    ``per_organ``: run id -> {"val": {organ: DSC}, "test": {organ: DSC}} as recorded; values that are not
    finite numbers in [0, 1] are skipped (data read back from the registry is input too).
    """
    means: dict[str, dict[str, float | None]] = {}
    for row in report.rows:
        collected: dict[str, list[float]] = {}
        for run_id in row.run_ids:
            scores = (per_organ.get(run_id) or {}).get(row.cases)
            for organ, value in (scores.items() if isinstance(scores, Mapping) else ()):
                if isinstance(organ, str) and _is_score(value):
                    collected.setdefault(organ, []).append(float(value))
        if collected:
            means[row.group] = {organ: sum(v) / len(v) for organ, v in collected.items()}
    return means


def _is_score(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) \
        and 0.0 <= value <= 1.0


# ---- figures ----

def _figures(inputs: HtmlInputs) -> tuple[list[str], list[str]]:
    """<figure> elements with embedded PNGs, and the figures left out with the reason."""
    if importlib.util.find_spec("matplotlib") is None:
        return [], ["figures left out: they need matplotlib (pip install 'ioussl[science]')"]
    from ioussl.report import plots

    wanted: list[tuple[str, str, Callable[[], Any] | None, str]] = [
        ("DSC per group", "Each fine-tune's score (dots), the group mean with its 95% CI (nested bootstrap; the "
         "std, in grey, where the group has too few pretrainings for one), the baseline's mean (dashed).",
         (lambda: plots.dsc_figure(inputs.report)) if any(r.values for r in inputs.report.rows) else None,
         "no fine-tune has a DSC yet"),
        (ORGAN_TITLE, _organ_caption(inputs.report),
         (lambda: plots.organ_figure(inputs.organs, "DSC per organ (mean over runs)")) if inputs.organs else None,
         "no fine-tune result records a per-organ DSC yet (imported results never do)"),
    ]
    for spec in CURVES:
        curves = inputs.curves.get(spec.key) or {}
        if spec.only_some and not curves:
            continue
        wanted.append((spec.title, "Thin lines: runs; thick lines: the group mean.",
                       _curve_builder(plots, curves, spec) if curves else None,
                       f"no {spec.stage} run recorded a per-epoch {spec.metric!r} series"))
    if inputs.pairs is not None:
        wanted.append(("Pair semantics", "Share of sampled positive pairs that have an organ in common (Fig. 3.2).",
                       lambda: plots.pairs_figure(inputs.pairs or []), ""))
    figures, skipped = [], []
    for title, caption, build, why in wanted:
        if build is None:
            skipped.append(f"figure {title!r} left out: {why}")
            continue
        png = plots.png_bytes(build())
        wide = " class='wide'" if title == ORGAN_TITLE else ""
        figures.append(f"<figure{wide}><img alt='{_e(title)}' src='data:image/png;base64,"
                       f"{base64.b64encode(png).decode('ascii')}'><figcaption><b>{_e(title)}.</b> "
                       f"{_e(caption)}</figcaption></figure>")
    return figures, skipped


def _curve_builder(plots: Any, curves: Curves, spec: CurveSpec) -> Callable[[], Any]:
    legend = "IoU interval" if spec.stage == "pretrain" else "group"
    return lambda: plots.curves_figure(curves, ylabel=spec.ylabel, title=spec.title, unit_range=spec.unit_range,
                                       legend_title=legend)


def _organ_caption(report: Report) -> str:
    held_out = any(row.cases == HELD_OUT for row in report.rows)
    cases = "held-out test cases where the group is scored on them, else the selection cases" if held_out \
        else "the selection (validation) cases"
    return f"3D DSC per organ on the preprocessed grid, mean over each group's runs, on {cases}."


# ---- tables ----

# The report's columns that compare a group with the baseline: a table of their own, like the terminal's.
AGAINST_BASELINE = ("Δ baseline", "Δ 95% CI", "test", "p", "p Holm")


def _report_tables(report: Report) -> str:
    """Two tables with the cells of the text formats: the scores per group, then the comparison with the baseline."""
    head, cells = tables.table(report)
    scores = [i for i, name in enumerate(head) if name not in AGAINST_BASELINE]
    against = [0] + [head.index(name) for name in AGAINST_BASELINE]
    return "".join(_html_table(report, head, cells, columns, title)
                   for columns, title in ((scores, "scores"), (against, "against the baseline")))


def _html_table(report: Report, head: list[str], cells: list[list[str]], columns: list[int], title: str) -> str:
    rows = []
    for row, line in zip(report.rows, cells, strict=True):
        tds = [f"<td{' class=significant' if head[i] == 'p Holm' and _significant(row) else ''}>{_e(line[i])}</td>"
               for i in columns]
        rows.append(f"<tr class='{'baseline' if row.baseline else ''}'>" + "".join(tds) + "</tr>")
    header = "".join(f"<th>{_e(head[i])}</th>" for i in columns)
    return (f"<div class='scroll'><table class='report' data-part='{_e(title)}'><caption>{_e(title)}</caption>"
            f"<thead><tr>{header}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>")


def _significant(row: tables.GroupRow) -> bool:
    return row.p_holm is not None and row.p_holm < 0.05


def _legend(report: Report) -> str:
    lines = tables.legend_lines(report)
    return "<ul class='legend'>" + "".join(f"<li>{_e(line)}</li>" for line in lines) + "</ul>"


def _footer(report: Report, written: str) -> str:
    lines = list(report.footer) + [line for line in tables.footer_lines(report) if line not in report.footer
                                   and line not in tables.legend_lines(report)]
    if written:
        lines.append(written)
    return "<footer><h2>Provenance</h2>" + "".join(f"<p>{_e(line)}</p>" for line in lines) + "</footer>"


def _summary(report: Report) -> str:
    scored = sum(row.n for row in report.rows)
    planned = sum(row.planned for row in report.rows)
    held_out = [row.group for row in report.rows if row.cases == HELD_OUT]
    metric = {"dsc": "per-slice DSC"}.get(report.metric, tables.METRICS[report.metric])
    cases = (f"{metric} on held-out test cases" if len(held_out) == len(report.rows)
             else f"{metric} on the selection cases (they also chose the checkpoint)" if not held_out
             else f"{metric}; see the cases column")
    return (f"{len(report.rows)} group(s), {scored} of {planned} fine-tune(s) scored; the main number is the "
            f"{cases}; std with ddof={report.ddof}.")


def _notes(lines: Sequence[str]) -> str:
    return "<ul class='notes'>" + "".join(f"<li>{_e(line)}</li>" for line in lines) + "</ul>" if lines else ""


def _section(title: str, content: str, anchor: str) -> str:
    return f"<section id='{anchor}'><h2>{_e(title)}</h2>{content}</section>"


def _e(text: str) -> str:
    return html.escape(text, quote=True)


CSS = """
:root { --ink: #1d2330; --muted: #5b6475; --line: #dfe3ea; --band: #f6f8fb; --accent: #2f5fb3; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif;
       color: var(--ink); background: #fff; }
main { max-width: 1180px; margin: 0 auto; padding: 28px 28px 40px; }
header h1 { margin: 0 0 4px; font-size: 24px; }
header h1::before { content: "ioussl report · "; color: var(--muted); font-weight: 400; }
.lead { margin: 0 0 18px; color: var(--muted); }
h2 { font-size: 17px; margin: 26px 0 10px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; width: 100%; }
th, td { padding: 5px 9px; border-bottom: 1px solid var(--line); text-align: right; white-space: nowrap; }
th { background: var(--band); font-weight: 600; position: sticky; top: 0; }
th:first-child, td:first-child { text-align: left; }
table.report td:first-child { font-weight: 600; }
table.report { margin-bottom: 14px; width: auto; min-width: 62%; }
caption { caption-side: top; text-align: left; font-size: 12.5px; color: var(--muted); padding: 0 0 4px; }
table.report tr.baseline td { background: #fff8e6; }
td.significant { font-weight: 700; color: #0b7a3b; }
tbody tr:hover td { background: #eef3fb; }
ul.legend { margin: 8px 0 0; padding-left: 18px; color: var(--muted); font-size: 12.5px; }
#figures { display: grid; grid-template-columns: repeat(auto-fit, minmax(520px, 1fr)); gap: 14px 18px;
           grid-auto-flow: dense; }
#figures h2, #figures ul.notes { grid-column: 1 / -1; }
figure { margin: 0; padding: 10px; border: 1px solid var(--line); border-radius: 8px; background: #fff; }
figure img { width: 100%; height: auto; display: block; }
figure.wide { grid-column: 1 / -1; }
figcaption { margin-top: 6px; font-size: 12.5px; color: var(--muted); }
ul.notes { margin: 0; padding-left: 18px; font-size: 12.5px; color: var(--muted); }
table.runs { font-size: 12.5px; }
table.runs th, table.runs td { padding: 4px 6px; }
table.runs th { white-space: normal; }
.reason { font-size: 11.5px; color: var(--muted); }
.reason.bad { color: #9b1c1c; }
.status { padding: 1px 7px; border-radius: 9px; font-size: 11.5px; font-weight: 600; }
.status.ok { background: #e3f4e8; color: #17663a; }
.status.active { background: #e6eefc; color: #234e9b; }
.status.bad { background: #fde8e8; color: #9b1c1c; }
.status.idle { background: #eef0f3; color: #555; }
sup { color: var(--muted); }
summary { cursor: pointer; color: var(--accent); margin-bottom: 6px; }
footer { margin-top: 30px; color: var(--muted); font-size: 12.5px; }
footer p { margin: 2px 0; overflow-wrap: anywhere; }
"""
